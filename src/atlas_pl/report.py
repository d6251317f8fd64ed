"""`python -m atlas_pl.report DIR [--out OUT] [--eval {both,global,personal}]`: turn a run or multirun
directory into a report.

Writes OUT/report.md (tables, excluded jobs, figures), OUT/report.csv (one row per group and task) and
OUT/figures/*.png; OUT defaults to DIR. Exit code 2 when DIR has no job directory, so a wrong path fails
in a script instead of producing an empty report.

Evaluation sets: the report above is on the global set, the task's validation set, the same for every
client. When a completed job has personal test sets (data.personal_share > 0: each client's own held-out
rows, with the same label mix as its training data), the same report on those sets goes to OUT/personal/
(report.md, report.csv, figures/), and OUT/report.md links to it. `--eval global` writes only the first,
`--eval personal` only OUT/personal/.

A group is an ablation (with its eta for atlas) and any other config settings that differ between the jobs
(not the seed or paths): a sweep over fed.local_epochs or model makes groups like
`fedavg (fed.local_epochs=2)`, never a mean over different settings.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from atlas_pl.errors import user_errors
from atlas_pl.reporting import figures as figs
from atlas_pl.reporting.reader import COMPLETED, Job, ReportError, load_jobs
from atlas_pl.reporting.split import Split, find_split
from atlas_pl.reporting.tables import Group, aggregate, markdown, write_csv
from atlas_pl.reporting.views import DESCRIPTIONS, GLOBAL, PERSONAL, has_personal, with_eval_set

BOTH = "both"
EVAL_CHOICES = (BOTH, GLOBAL, PERSONAL)
PERSONAL_DIR = "personal"  # OUT/personal/: the report on the personal test sets


@dataclass
class Report:
    """What one report run read and wrote."""

    jobs: list[Job]
    groups: list[Group]
    markdown: Path
    csv: Path
    figures: list[Path]
    split: Split  # the settings besides ablation and eta that split the groups (usually none)
    eval_set: str = GLOBAL  # the evaluation set its numbers are on (reporting.views)
    personal: Report | None = None  # the same report on the personal test sets, written beside this one


def build_report(run_dir: Path | str, out_dir: Path | str | None = None, *, eval_set: str = BOTH) -> Report:
    """Read every job under `run_dir` and write report.md, report.csv and figures/ into `out_dir`.

    `eval_set`: `both` writes the global report into `out_dir` and, when a completed job has personal test
    sets, the personal-set report into `out_dir`/personal/ (the returned report's `personal`); `global`
    writes only the first; `personal` only the second, and returns it (ReportError when no job has
    personal test sets)."""
    if eval_set not in EVAL_CHOICES:
        raise ValueError(f"eval_set must be one of {', '.join(EVAL_CHOICES)}, not {eval_set!r}")
    run_dir = Path(run_dir)
    out = Path(out_dir) if out_dir is not None else run_dir
    jobs = load_jobs(run_dir)
    if eval_set == PERSONAL:
        if not any(has_personal(j.records) for j in jobs):
            raise ReportError(
                f"no job under {run_dir} has personal test sets (run with data.personal_share > 0, e.g. 0.2)"
            )
        return _personal_report(jobs, run_dir, out / PERSONAL_DIR, beside_global=False)
    both = eval_set == BOTH and any(j.status == COMPLETED and has_personal(j.records) for j in jobs)
    intro = [GLOBAL_INTRO] if both else []
    report = _write(jobs, run_dir, out, GLOBAL, intro=intro)
    if both:
        report.personal = _personal_report(jobs, run_dir, out / PERSONAL_DIR, beside_global=True)
    elif eval_set == BOTH:
        _remove_stale_personal(out / PERSONAL_DIR)
    return report


def _remove_stale_personal(folder: Path) -> None:
    """An earlier report's personal/ beside a report that has no personal view any more (its jobs were
    rerun or removed) would describe jobs that are gone: remove it, but only when it is a report's (it has
    report.md) and holds nothing else than what a report writes there (report.csv, the figures' PNGs);
    otherwise say why it stays."""
    if not (folder / "report.md").is_file():
        return  # not a report's folder (or nothing left of one): not ours to touch
    entries = {e.name for e in folder.iterdir()}
    figures, drawn = folder / "figures", {f"{name}.png" for name in figs.CAPTIONS}
    ours = entries <= {"report.md", "report.csv", "figures"} and (
        not figures.exists() or (figures.is_dir() and {f.name for f in figures.iterdir()} <= drawn)
    )
    if ours:
        shutil.rmtree(folder)
    else:
        print(
            f"note: {folder} is from an earlier report (these jobs have no personal test sets) and holds "
            "files a report does not write, so it was left as it is",
            file=sys.stderr,
        )


GLOBAL_INTRO = (
    f"Evaluation set: **global**, {DESCRIPTIONS[GLOBAL]}. The same report on the **personal** test sets, "
    f"{DESCRIPTIONS[PERSONAL]}, is in [{PERSONAL_DIR}/report.md]({PERSONAL_DIR}/report.md)."
)


def personal_intro(beside_global: bool) -> str:
    """The first paragraph of the personal-set report: which set it is on, and where the global one is."""
    where = (
        "is [../report.md](../report.md)"
        if beside_global
        else "is written by `python -m atlas_pl.report DIR --eval global` (or `--eval both`)"
    )
    return (
        "This is the **personal-set view**: every metric is on the personal test sets, "
        f"{DESCRIPTIONS[PERSONAL]}. The global report, on {DESCRIPTIONS[GLOBAL]}, {where}."
    )


def _personal_report(jobs: list[Job], run_dir: Path, out: Path, *, beside_global: bool) -> Report:
    viewed = with_eval_set(jobs, PERSONAL)
    intro = [personal_intro(beside_global)]
    left_out = sum(j.status == COMPLETED and not j.in_statistics for j in viewed)
    if left_out:
        intro.append(
            f"{left_out} completed job(s) have no personal test sets (data.personal_share = 0) and are left "
            "out of these statistics; they are listed under *Jobs excluded from the statistics*."
        )
    return _write(viewed, run_dir, out, PERSONAL, intro=intro, title_suffix=" (personal test sets)")


def _write(
    jobs: list[Job], run_dir: Path, out: Path, eval_set: str, *, intro: Sequence[str], title_suffix: str = ""
) -> Report:
    groups = aggregate(jobs)
    out.mkdir(parents=True, exist_ok=True)
    drawn = figs.draw_all(groups)
    if eval_set == PERSONAL:
        figs.mark_eval_set(drawn, "on the personal test sets (each client's own held-out rows)")
    pngs = figs.save_all(drawn, out / "figures")
    captions = {name: figs.CAPTIONS.get(name, "") for name in drawn}
    md = out / "report.md"
    md.write_text(markdown(jobs, groups, run_dir, captions, title_suffix=title_suffix, intro=intro))
    csv_path = write_csv(groups, out / "report.csv")
    return Report(
        jobs=jobs,
        groups=groups,
        markdown=md,
        csv=csv_path,
        figures=pngs,
        split=find_split(jobs),
        eval_set=eval_set,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m atlas_pl.report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("run_dir", type=Path, help="a Hydra run or multirun directory (or a tree of them)")
    parser.add_argument("--out", type=Path, default=None, help="where to write the report (default: RUN_DIR)")
    parser.add_argument(
        "--eval",
        choices=EVAL_CHOICES,
        default=BOTH,
        help="evaluation set: global (the task's validation set) into OUT, personal (each client's own "
        "held-out rows) into OUT/personal/, or both (default; personal only where a completed job has "
        "personal test sets)",
    )
    args = parser.parse_args(argv)
    with user_errors("atlas_pl.report"):
        report = build_report(args.run_dir, args.out, eval_set=args.eval)
    done = sum(j.status == COMPLETED for j in report.jobs)
    print(f"{len(report.jobs)} job(s), {done} completed, {len(report.groups)} group(s); {_wrote(report)}")
    if report.personal is not None:
        print(_wrote(report.personal))
    if report.split:
        print(f"groups also split by settings that differ between the jobs: {report.split.describe()}")
    if done < len(report.jobs):
        print(f"{len(report.jobs) - done} job(s) not completed: listed in {report.markdown}", file=sys.stderr)
    return 0


def _wrote(report: Report) -> str:
    view = "personal-set view: " if report.eval_set == PERSONAL else ""
    return (
        f"{view}wrote {report.markdown}, {report.csv} and {len(report.figures)} figure(s) under "
        f"{report.markdown.parent / 'figures'}"
    )


if __name__ == "__main__":
    sys.exit(main())
