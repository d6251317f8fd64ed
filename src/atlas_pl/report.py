"""`python -m atlas_pl.report DIR [--out OUT]`: turn a run or multirun directory into a report.

Writes OUT/report.md (tables, excluded jobs, figures), OUT/report.csv (one row per group and task) and
OUT/figures/*.png; OUT defaults to DIR. Exit code 2 when DIR has no job directory, so a wrong path fails
in a script instead of producing an empty report.

A group is an ablation (with its eta for atlas) and any other config settings that differ between the jobs
(not the seed or paths): a sweep over fed.local_epochs or model makes groups like
`fedavg (fed.local_epochs=2)`, never a mean over different settings.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from atlas_pl.errors import user_errors
from atlas_pl.reporting import figures as figs
from atlas_pl.reporting.reader import COMPLETED, Job, load_jobs
from atlas_pl.reporting.split import Split, find_split
from atlas_pl.reporting.tables import Group, aggregate, markdown, write_csv


@dataclass
class Report:
    """What one report run read and wrote."""

    jobs: list[Job]
    groups: list[Group]
    markdown: Path
    csv: Path
    figures: list[Path]
    split: Split  # the settings besides ablation and eta that split the groups (usually none)


def build_report(run_dir: Path | str, out_dir: Path | str | None = None) -> Report:
    """Read every job under `run_dir` and write report.md, report.csv and figures/ into `out_dir`."""
    run_dir = Path(run_dir)
    out = Path(out_dir) if out_dir is not None else run_dir
    jobs = load_jobs(run_dir)
    groups = aggregate(jobs)
    out.mkdir(parents=True, exist_ok=True)
    drawn = figs.draw_all(groups)
    pngs = figs.save_all(drawn, out / "figures")
    captions = {name: figs.CAPTIONS.get(name, "") for name in drawn}
    md = out / "report.md"
    md.write_text(markdown(jobs, groups, run_dir, captions))
    csv_path = write_csv(groups, out / "report.csv")
    return Report(jobs=jobs, groups=groups, markdown=md, csv=csv_path, figures=pngs, split=find_split(jobs))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m atlas_pl.report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("run_dir", type=Path, help="a Hydra run or multirun directory (or a tree of them)")
    parser.add_argument("--out", type=Path, default=None, help="where to write the report (default: RUN_DIR)")
    args = parser.parse_args(argv)
    with user_errors("atlas_pl.report"):
        report = build_report(args.run_dir, args.out)
    done = sum(j.status == COMPLETED for j in report.jobs)
    print(
        f"{len(report.jobs)} job(s), {done} completed, {len(report.groups)} group(s); "
        f"wrote {report.markdown}, {report.csv} and {len(report.figures)} figure(s) under "
        f"{report.markdown.parent / 'figures'}"
    )
    if report.split:
        print(f"groups also split by settings that differ between the jobs: {report.split.describe()}")
    if done < len(report.jobs):
        print(f"{len(report.jobs) - done} job(s) not completed: listed in {report.markdown}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
