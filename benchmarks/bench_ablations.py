"""Benchmark: the ablations side by side, from the job directories of a Hydra multirun.

Run the jobs first (sequentially with the basic launcher; each job is one process's worth of work):

    .venv/bin/python -m atlas_pl -m +experiment=quick logger=csv \\
        ablation=local_only,fedavg,fedavg_cluster,hsplitlora,splitlora,centralized seed=0,1,2 \\
        hydra.sweep.dir=multirun/ablations
    .venv/bin/python -m atlas_pl -m +experiment=quick logger=csv ablation=atlas \\
        fed.eta=0.01,0.1,0.5,1.0 seed=0,1,2 hydra.sweep.dir=multirun/ablations_atlas
    .venv/bin/python benchmarks/bench_ablations.py multirun/ablations multirun/ablations_atlas

For every (ablation, eta) it reads each seed's summary.json and metrics.jsonl (through atlas_pl.reporting,
the reader `python -m atlas_pl.report` uses) and reports, per task, the mean over seeds (± population std)
of the mean and of the worst client's primary metric in the last round, plus total bytes and seconds.
Prints a markdown table and writes JSON to benchmarks/results/ablations.json. For figures and a
report.md/report.csv of the same runs: `python -m atlas_pl.report multirun`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from _report import write_report

from atlas_pl.reporting import Group, ReportError, aggregate, load_jobs
from atlas_pl.reporting.tables import incomplete_rows


def _row(group: Group) -> dict[str, Any]:
    return {
        "seeds": group.seeds,
        "rounds": group.rounds,
        "mean_primary": group.mean_primary.as_dict(),
        "per_task": {
            t: {"mean": ts.mean.as_dict(), "worst": ts.worst.as_dict()}
            for t, ts in sorted(group.per_task.items())
        },
        "bytes": group.bytes.as_dict(),
        "seconds": group.seconds.as_dict(),
    }


def collect(roots: list[Path]) -> dict[str, Any]:
    """{label: row} over the completed jobs under `roots` (the atlas_pl.reporting reader and statistics);
    jobs that did not complete are printed to stderr, not counted."""
    jobs = load_jobs(*roots)
    for row in incomplete_rows(jobs):
        print(
            f"not counted: {row['job']} ({row['status']}, round {row['last_round']}) {row['detail']}",
            file=sys.stderr,
        )
    return {group.label: _row(group) for group in aggregate(jobs)}


def markdown(table: dict[str, Any]) -> str:
    if not table:
        return "(no completed jobs found)"
    tasks = sorted(next(iter(table.values()))["per_task"])
    head = ["ablation", "seeds", *[f"{t} mean / worst" for t in tasks], "GB moved", "seconds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, row in table.items():
        cells = [label, ",".join(map(str, row["seeds"]))]
        for t in tasks:
            m, w = row["per_task"][t]["mean"], row["per_task"][t]["worst"]
            cells.append(f"{m['mean']:.3f} ± {m['std']:.3f} / {w['mean']:.3f} ± {w['std']:.3f}")
        cells.append(f"{row['bytes']['mean'] / 1e9:.2f}")
        cells.append(f"{row['seconds']['mean']:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("roots", nargs="+", type=Path, help="multirun (or single job) directories")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--name", default="ablations")
    args = parser.parse_args()
    try:
        table = collect(args.roots)
    except ReportError as exc:
        sys.exit(f"bench_ablations: {exc}")
    print(markdown(table))
    write_report(args.out, args.name, {"roots": [str(r) for r in args.roots], "table": table}, echo=False)


if __name__ == "__main__":
    main()
