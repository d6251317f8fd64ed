"""Benchmark: the same job on the in-process engine and on Flower's Ray simulation, side by side.

For each experiment (smoke; the default job, `python -m atlas_pl`) it runs the CLI twice in fresh
processes, engine=inprocess then engine=flower, with the engines' defaults (in-process: torch's threads
on every core; Flower: one ClientApp per core, one thread each), and reports:

- wall time per round (round 1 apart: it holds Phases 1-2 and, under Flower, Ray's start and every
  worker's build of the base and the data), and Flower's share: the part of each exchange in which no
  ClientApp handler was running (messages, scheduling, the node state's serialization);
- the job's wall time and peak memory: the job's process, and under Flower the ClientApp processes too;
- how far the two engines' metrics are apart at these thread counts (bitwise equal at equal counts:
  tests/flower/test_flower_engine.py).

Prints and writes JSON to benchmarks/results/flower_<experiment>.json. A quiet machine is assumed.

    .venv/bin/python benchmarks/bench_flower.py --experiments smoke default
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _report import write_report

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = {"smoke": ["+experiment=smoke"], "default": []}


def run_job(job: Path, overrides: list[str]) -> float:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "atlas_pl", *overrides, "logger=none", f"hydra.run.dir={job}"],
        check=True,
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - started


def records(job: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (job / "metrics.jsonl").read_text().splitlines()]


def engine_report(job: Path, wall: float) -> dict[str, Any]:
    summary = json.loads((job / "summary.json").read_text())
    rounds = records(job)
    later = [r["round_seconds"] for r in rounds[1:]]
    flower_later = [r.get("flower_seconds", 0.0) for r in rounds[1:]]
    memory = summary["peak_memory"]
    return {
        "wall_seconds": wall,
        "build_seconds": summary["totals"]["build_seconds"],
        "round_1_seconds": rounds[0]["round_seconds"],
        "round_1_flower_seconds": rounds[0].get("flower_seconds", 0.0),
        "later_round_seconds_mean": statistics.fmean(later) if later else None,
        "later_round_flower_seconds_mean": statistics.fmean(flower_later) if flower_later else None,
        "flower_share_of_later_rounds": sum(flower_later) / sum(later) if later else None,
        "flower_share_of_all_rounds": summary["overhead"].get("flower_fraction", 0.0),
        "train_seconds": summary["totals"]["train_seconds"],
        "peak_rss_mib_job_process": memory["cpu_max_rss_mib"],
        "peak_rss_mib_client_processes_sum": memory.get("client_max_rss_mib_sum", 0.0),
        "client_processes": memory.get("client_processes", 0),
        "peak_rss_mib_total": memory["cpu_max_rss_mib"] + memory.get("client_max_rss_mib_sum", 0.0),
        "final_mean_primary": summary["final"]["mean_primary"],
    }


def metric_gap(a: Path, b: Path) -> dict[str, float]:
    """The largest difference between the engines' per-client scores and training losses."""
    gaps = {"primary": 0.0, "loss": 0.0, "train_loss": 0.0}
    for ra, rb in zip(records(a), records(b)):
        for cid, ca in ra["clients"].items():
            cb = rb["clients"][cid]
            for key in gaps:
                if ca.get(key) is not None and cb.get(key) is not None:
                    gaps[key] = max(gaps[key], abs(ca[key] - cb[key]))
    return gaps


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--experiments", nargs="+", default=["smoke", "default"], choices=list(EXPERIMENTS))
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    parser.add_argument("--jobs", default=str(REPO / "multirun" / "bench_flower"))
    args = parser.parse_args()
    for experiment in args.experiments:
        jobs = Path(args.jobs) / f"{experiment}_{time.strftime('%Y%m%d-%H%M%S')}"
        report: dict[str, Any] = {"experiment": experiment, "cpu_count": os.cpu_count(), "engines": {}}
        for engine in ("inprocess", "flower"):
            job = jobs / engine
            wall = run_job(job, [*EXPERIMENTS[experiment], f"engine={engine}"])
            report["engines"][engine] = engine_report(job, wall)
        inproc, flower = report["engines"]["inprocess"], report["engines"]["flower"]
        report["flower_over_inprocess"] = {
            "wall": flower["wall_seconds"] / inproc["wall_seconds"],
            "later_rounds": (flower["later_round_seconds_mean"] or 0)
            / (inproc["later_round_seconds_mean"] or 1),
            "peak_memory": flower["peak_rss_mib_total"] / inproc["peak_rss_mib_total"],
        }
        report["max_metric_gap"] = metric_gap(jobs / "inprocess", jobs / "flower")
        write_report(args.out, f"flower_{experiment}", report)


if __name__ == "__main__":
    main()
