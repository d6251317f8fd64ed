"""Benchmark: the ablations side by side, from the job directories of a Hydra multirun.

Run the jobs first (sequentially with the basic launcher; each job is one process's worth of work):

    .venv/bin/python -m atlas_pl -m +experiment=quick logger=csv \\
        ablation=local_only,fedavg,fedavg_cluster,hsplitlora,splitlora,centralized seed=0,1,2 \\
        hydra.sweep.dir=multirun/ablations
    .venv/bin/python -m atlas_pl -m +experiment=quick logger=csv ablation=atlas \\
        fed.eta=0.01,0.1,0.5,1.0 seed=0,1,2 hydra.sweep.dir=multirun/ablations_atlas
    .venv/bin/python benchmarks/bench_ablations.py multirun/ablations multirun/ablations_atlas

For every (ablation, eta) it reads each seed's summary.json and metrics.jsonl and reports, per task, the
mean over seeds (± std) of the mean and of the worst client's primary metric in the last round, plus total
bytes and seconds. Prints a markdown table and writes JSON to benchmarks/results/ablations.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from _report import write_report


def _jobs(roots: list[Path]) -> list[Path]:
    return sorted({p.parent for root in roots for p in root.rglob("summary.json")})


def _mean_std(values: list[float]) -> dict[str, float]:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.pstdev(values) if len(values) > 1 else 0.0,
        "n": len(values),
    }


def collect(roots: list[Path]) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for job in _jobs(roots):
        summary = json.loads((job / "summary.json").read_text())
        if summary.get("status") != "completed":
            continue
        cfg = summary["config"]
        ablation = summary["ablation"]
        label = f"{ablation} (eta={cfg['fed']['eta']})" if ablation == "atlas" else ablation
        last = json.loads((job / "metrics.jsonl").read_text().splitlines()[-1])
        runs[label].append(
            {
                "seed": cfg["seed"],
                "rounds": last["round"],
                "per_task": {t: (v["primary"], v["worst_primary"]) for t, v in last["per_task"].items()},
                "mean_primary": last["mean_primary"],
                "bytes": summary["totals"]["upload_bytes"] + summary["totals"]["download_bytes"],
                "seconds": summary["totals"]["seconds"],
            }
        )
    table: dict[str, Any] = {}
    for label, seeds in sorted(runs.items()):
        tasks = sorted(seeds[0]["per_task"])
        table[label] = {
            "seeds": sorted(s["seed"] for s in seeds),
            "rounds": seeds[0]["rounds"],
            "mean_primary": _mean_std([s["mean_primary"] for s in seeds]),
            "per_task": {
                t: {
                    "mean": _mean_std([s["per_task"][t][0] for s in seeds]),
                    "worst": _mean_std([s["per_task"][t][1] for s in seeds]),
                }
                for t in tasks
            },
            "bytes": _mean_std([s["bytes"] for s in seeds]),
            "seconds": _mean_std([s["seconds"] for s in seeds]),
        }
    return table


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
    table = collect(args.roots)
    print(markdown(table))
    write_report(args.out, args.name, {"roots": [str(r) for r in args.roots], "table": table}, echo=False)


if __name__ == "__main__":
    main()
