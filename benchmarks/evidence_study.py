"""The evidence study (issue 21, DESIGN.md §13): which method wins, when, at what cost.

Every job is one Hydra run of the project's own CLI (a one-job multirun, one seed of one stage) with
`resume=true`, so the study can be stopped at any point (kill, end of a session) and started again: a killed
job continues from its last round checkpoint. A finished job's records (metrics.jsonl, summary.json,
job_config.json, clustering.json, allocation.json; no checkpoints) are copied at once to
benchmarks/results/evidence_jobs/<setting>/<method>/seed_<n>/, which git keeps: a session's machine and its
multirun directory do not outlive the session, and the next session's --run skips what is kept there.
Stages run in the order the issue asks for, setting (b) first:

  (b) Dirichlet label skew (alpha=0.3) within each task, every client scored on its own personal test set
      (data.personal_share=0.2, same label skew as its training data) and on the task's global set;
  (a) iid partitions, scored on the task's global validation set (the setting of the earlier study);
  (p2p) setting (b) with the servers' halves on peer devices (topology=p2p) and one client in five absent
      in each round (faults.drop=0.2), on devices at twice quick's memory (p2p's hosts keep a reserve);
  (p2p_ref) the same devices and allocation with the server hosting and no faults, to compare against.
  (b_by_task) setting (b) with the clients' known tasks as Phase 1's clusters (clustering.by_task, an
      oracle), for atlas and fedavg_cluster: how much of their result Phase 1's mistakes cost.
  (b_lr, a_lr) the two centralized bounds of (b) and (a) at fed.lr=1e-3: at quick's 3e-3 their
      training loss on CoLA climbs back to chance, so the bounds at 3e-3 understate what pooling reaches.
      Run after (a)'s first six stages, where that was found.

All on the quick experiment (MiniLM, SST-2 / MRPC / CoLA, 3 clients per task, 400 training rows each) with
20 rounds, scored every second round (fed.eval_every=2; round 20 is always scored).

Two stages finished before records were kept (b:fedavg_cluster and b:atlas_0.5, seeds 0-2, stop 32) and
were run again to keep them; the rows as first collected stay in benchmarks/results/evidence_legacy.json as
a record of that comparison (README), which nothing here reads.

    .venv/bin/python benchmarks/evidence_study.py --run            # run (or continue) every stage in order
    .venv/bin/python benchmarks/evidence_study.py --run --worker 0 --workers 2 &   # two runners on
    .venv/bin/python benchmarks/evidence_study.py --run --worker 1 --workers 2 &   # two cores
    .venv/bin/python benchmarks/evidence_study.py --run --stages b:fedavg_cluster b:atlas_0.5
    .venv/bin/python benchmarks/evidence_study.py --status         # which stages are complete
    .venv/bin/python benchmarks/evidence_study.py --collect        # results JSON + report of what is done
    .venv/bin/python benchmarks/evidence_study.py --collect --readme README.md   # and README's tables

`--collect` keeps any finished job not kept yet, then writes benchmarks/results/evidence_quick.json from the
kept records (per setting, per evaluation set, per group: the last round's mean and worst client per task,
mean ± std over seeds, bytes, simulated seconds, rounds and simulated seconds to target) and runs
`python -m atlas_pl.report` on each setting (report.md, report.csv, figures/, and personal/ for setting (b))
into the multirun directory, which stays out of git; the figures are copied to
benchmarks/results/evidence_figures/.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DIR = ROOT / "multirun" / "evidence"
# each finished job's records (no checkpoints), kept in git: a session's machine does not outlive it, so a
# study that spans sessions keeps what it finished here and the next session's --run skips those jobs
ARCHIVE = ROOT / "benchmarks" / "results" / "evidence_jobs"
KEPT_FILES = (
    "metrics.jsonl",
    "summary.json",
    "job_config.json",
    "clustering.json",
    "allocation.json",
    "done",
)
SEEDS = (0, 1, 2)
SIGNAL_EXITS = (130, 143)  # a job's exit status after SIGINT / SIGTERM (128 + the signal)
# one thread per job: two jobs side by side on the two cores get through the study faster than one job on
# both (small matmuls scale poorly across threads); every job of the study runs the same way
COMMON = ("+experiment=quick", "fed.rounds=20", "fed.eval_every=2", "logger=csv", "trainer.num_threads=1")
# setting (b)'s data: label skew within each task, and every client's own test set
SKEWED = ("data.partition=dirichlet", "data.dirichlet_alpha=0.3", "data.personal_share=0.2")
IID = ("data.partition=iid",)
BOUND_LR = "fed.lr=1e-3"
SETTINGS = {
    "b": SKEWED,
    "a": IID,
    # p2p's host reserve needs devices at twice quick's budgets (benchmarks/bench_p2p_faults.py); the
    # server reference runs the allocation p2p implies, so the two differ only in who hosts and the drops
    "p2p": (
        *SKEWED,
        "devices.scale=0.07142857142857142",
        "topology=p2p",
        "faults.drop=0.2",
    ),
    "p2p_ref": (
        *SKEWED,
        "devices.scale=0.07142857142857142",
        "topology=server",
        "allocation.host_reserve=0.5",
        "allocation.max_split=4",
    ),
    # setting (b) with the known tasks as Phase 1's clusters (an oracle): what discovery's mistakes cost
    "b_by_task": (*SKEWED, "clustering.by_task=true"),
    # the centralized bounds at a third of quick's adapter lr: at 3e-3 their CoLA training loss climbs
    # back to chance within 20 epochs of the pooled data; at 1e-3 it falls to 0.02 (README)
    "b_lr": (*SKEWED, BOUND_LR),
    "a_lr": (*IID, BOUND_LR),
}
# the order: what the study most needs first
METHODS_B = (
    ("fedavg_cluster", ("ablation=fedavg_cluster",)),
    ("atlas_0.5", ("ablation=atlas", "fed.eta=0.5")),
    ("local_only", ("ablation=local_only",)),
    ("centralized_per_task", ("ablation=centralized_per_task",)),
    ("fedavg", ("ablation=fedavg",)),
    ("centralized", ("ablation=centralized",)),  # the order leaves the multi-task bound unplaced
    ("atlas_0.1", ("ablation=atlas", "fed.eta=0.1")),
    ("atlas_1.0", ("ablation=atlas", "fed.eta=1.0")),
    ("atlas_0.01", ("ablation=atlas", "fed.eta=0.01")),
    ("hsplitlora", ("ablation=hsplitlora",)),
    ("splitlora", ("ablation=splitlora",)),
    ("hetlora", ("ablation=hetlora",)),
)
# the two clustering methods: under p2p (and its reference) and with the known tasks as clusters
METHODS_CLUSTERED = (
    ("atlas_0.5", ("ablation=atlas", "fed.eta=0.5")),
    ("fedavg_cluster", ("ablation=fedavg_cluster",)),
)
METHODS_BOUNDS = (
    ("centralized_per_task", ("ablation=centralized_per_task",)),
    ("centralized", ("ablation=centralized",)),
)
# the last of setting (a)'s stages that had run when the bounds' lr stages were added (stop 35); those come
# next, so whether the bounds bound is settled before the rest of (a)
A_BEFORE_BOUND_LR = "centralized"


@dataclass(frozen=True)
class Stage:
    setting: str
    method: str
    overrides: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"{self.setting}:{self.method}"

    def directory(self, root: Path) -> Path:
        return root / self.setting / self.method

    def command(self, root: Path, seed: int) -> list[str]:
        """One seed per multirun: the driver keeps each job as soon as it finishes (`archive_job`)."""
        return [
            sys.executable,
            "-m",
            "atlas_pl",
            "-m",
            *COMMON,
            *SETTINGS[self.setting],
            *self.overrides,
            f"seed={seed}",
            f"hydra.sweep.dir={self.directory(root)}",
            "resume=true",
        ]


def stages() -> list[Stage]:
    order = [Stage("b", m, o) for m, o in METHODS_B]
    setting_a = [Stage("a", m, o) for m, o in METHODS_B]
    split = [m for m, _ in METHODS_B].index(A_BEFORE_BOUND_LR) + 1
    order += setting_a[:split]
    order += [Stage(setting, m, o) for setting in ("b_lr", "a_lr") for m, o in METHODS_BOUNDS]
    order += setting_a[split:]
    order += [Stage("p2p", m, o) for m, o in METHODS_CLUSTERED]
    order += [Stage("p2p_ref", m, o) for m, o in METHODS_CLUSTERED]
    order += [Stage("b_by_task", m, o) for m, o in METHODS_CLUSTERED]  # beyond the list: last
    return order


def _finished_jobs(directory: Path) -> dict[int, Path]:
    """{seed: job directory} of the jobs under `directory` that finished (a `done` marker)."""
    found = {}
    for marker in sorted(directory.glob("*/done")):
        config = marker.parent / "job_config.json"
        if config.is_file():
            found[int(json.loads(config.read_text())["seed"])] = marker.parent
    return found


def done_seeds(stage: Stage, root: Path, archive: Path = ARCHIVE) -> list[int]:
    """Seeds whose job finished, in the multirun directory or kept in the archive."""
    return sorted(set(_finished_jobs(stage.directory(root))) | set(_finished_jobs(stage.directory(archive))))


def archive_job(job: Path, stage: Stage, seed: int, archive: Path = ARCHIVE) -> Path:
    """Copy a finished job's records (KEPT_FILES, a few hundred kB) to archive/<setting>/<method>/seed_<n>;
    the report reads that directory as it reads the job's own."""
    import shutil

    into = stage.directory(archive) / f"seed_{seed}"
    # copied beside the archive's settings first: a copy cut short is never taken for a kept job
    staging = archive / ".partial" / stage.setting / stage.method / into.name
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name in KEPT_FILES:
        if (job / name).is_file():
            shutil.copyfile(job / name, staging / name)
    shutil.rmtree(into, ignore_errors=True)
    into.parent.mkdir(parents=True, exist_ok=True)
    staging.rename(into)
    return into


def archive_finished(root: Path, archive: Path = ARCHIVE) -> list[Path]:
    """Every finished job under `root` not yet in the archive, copied there."""
    kept = []
    for stage in stages():
        already = _finished_jobs(stage.directory(archive))
        for seed, job in _finished_jobs(stage.directory(root)).items():
            if seed not in already:
                kept.append(archive_job(job, stage, seed, archive))
    return kept


def status(root: Path, seeds: Sequence[int]) -> list[dict[str, Any]]:
    rows = []
    for stage in stages():
        finished = done_seeds(stage, root)
        rows.append({"stage": stage.name, "done_seeds": finished, "complete": set(seeds) <= set(finished)})
    return rows


def run(
    root: Path,
    seeds: Sequence[int],
    only: Sequence[str],
    worker: int = 0,
    workers: int = 1,
    archive: Path = ARCHIVE,
) -> list[str]:
    """Run the jobs not done yet, stage by stage in order, one seed at a time; worker `worker` of `workers`
    takes every `workers`-th job, and each finished job goes to the archive at once. A job that fails is
    reported and skipped, so one bad stage does not hold up the ones after it (the runner is left alone
    for hours); the next --run tries it again. A job killed by a signal stops the runner too (someone is
    stopping the study). Returns the jobs that did not finish."""
    for kept in archive_finished(root, archive):  # a job that finished after its runner was stopped
        print(f"kept {kept}", flush=True)
    units = [(s, seed) for s in stages() if not only or s.name in only for seed in seeds]
    failed = []
    for index, (stage, seed) in enumerate(units):
        if index % workers != worker:
            continue
        if seed in done_seeds(stage, root, archive):
            print(f"{stage.name} seed {seed}: done", flush=True)
            continue
        print(f"{stage.name} seed {seed}: running", flush=True)
        code = subprocess.run(stage.command(root, seed), cwd=ROOT, check=False).returncode
        job = _finished_jobs(stage.directory(root)).get(seed)
        if job is None:  # failed, or stopped by a signal (which can exit 0): not kept, not counted done
            failed.append(f"{stage.name} seed {seed}")
            if code < 0 or code in SIGNAL_EXITS:
                raise SystemExit(f"{stage.name} seed {seed} was stopped (exit {code}); --run continues it")
            where = stage.directory(root)
            print(
                f"{stage.name} seed {seed}: failed (exit {code}; its log is under {where}); skipped",
                flush=True,
            )
            continue
        print(f"{stage.name} seed {seed}: kept in {archive_job(job, stage, seed, archive)}", flush=True)
    return failed


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", action="store_true", help="run the stages that are not done, in order")
    parser.add_argument("--status", action="store_true", help="print which stages are complete")
    parser.add_argument("--collect", action="store_true", help="results JSON and reports of what is done")
    parser.add_argument("--stages", nargs="*", default=[], help="only these stages (e.g. b:fedavg)")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--worker", type=int, default=0, help="this runner's index (0-based)")
    parser.add_argument("--workers", type=int, default=1, help="runners side by side, each every n-th job")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "evidence_quick.json")
    parser.add_argument(
        "--readme", type=Path, help="with --collect: refill this README's marked evidence tables (README.md)"
    )
    args = parser.parse_args()
    known = {s.name for s in stages()}
    unknown = [s for s in args.stages if s not in known]
    if unknown:
        parser.error(f"unknown stage(s) {unknown}; valid: {sorted(known)}")
    if args.readme is not None and not (args.collect and args.readme.is_file()):
        parser.error(f"--readme {args.readme}: valid with --collect and an existing README (e.g. README.md)")
    if not 0 <= args.worker < args.workers:
        parser.error(f"--worker {args.worker} of --workers {args.workers}: valid: 0 <= worker < workers")
    failed = run(args.dir, args.seeds, args.stages, args.worker, args.workers) if args.run else []
    if args.status or not (args.run or args.collect):
        for row in status(args.dir, args.seeds):
            print(f"{row['stage']:28s} {'complete' if row['complete'] else 'incomplete'} {row['done_seeds']}")
    if args.collect:
        from evidence_collect import collect

        for kept in archive_finished(args.dir):
            print(f"kept {kept}")
        result = collect(ARCHIVE, args.out, reports=args.dir)
        if args.readme:
            fill(args.readme, result)
    if failed:
        raise SystemExit(f"did not finish: {', '.join(failed)}; --run again to retry (see each job's log)")


def fill(readme: Path, result: dict[str, Any]) -> None:
    """README's tables between `<!-- evidence:... -->` markers, rewritten from `result`."""
    from evidence_collect import fill_readme, readme_tables

    text, missing, stale = fill_readme(readme.read_text(), readme_tables(result))
    readme.write_text(text)
    print(f"refilled {readme}'s evidence tables")
    if missing:
        print(f"  no markers for {missing} (add <!-- evidence:KEY --> ... <!-- /evidence:KEY --> lines)")
    if stale:
        print(f"  left as they were, no results for them: {stale}")


if __name__ == "__main__":
    main()
