"""Benchmark: server vs peer-to-peer hosting, under absences and stragglers, on the quick setting.

Real MiniLM on real SST-2 / MRPC / CoLA (the quick experiment), ATLAS at eta 0.5, 6 rounds scored every
round, the device mix at twice quick's budgets (devices.scale=1/14: under p2p Phase 2 leaves half of each
device for hosting, and at 1/28 the phone cannot then hold one block). Every topology=server job uses the
allocation p2p implies (allocation.host_reserve=0.5, allocation.max_split=4), so the rows differ only in
who hosts the server halves and in the faults.

    .venv/bin/python benchmarks/bench_p2p_faults.py --run --seeds 0 1 2   # runs what is not done yet
    .venv/bin/python benchmarks/bench_p2p_faults.py                       # tables and JSON of what is

Jobs go to multirun/p2p_faults/<config>/seed<s> with resume=true, so an interrupted run continues where
it stopped. Writes benchmarks/results/p2p_faults_quick.json and prints the tables; the figures and the
report: `python -m atlas_pl.report multirun/p2p_faults`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from _report import write_report

from atlas_pl.reporting import aggregate, load_jobs
from atlas_pl.reporting.tables import fault_rows, incomplete_rows, speeds

ROOT = Path(__file__).resolve().parents[1]
BASE = [
    "+experiment=quick",
    "ablation=atlas",
    "fed.eta=0.5",
    "fed.rounds=6",
    "devices.scale=0.07142857142857142",
    "logger=csv",
    "resume=true",
]
SAME_ALLOCATION = ["allocation.host_reserve=0.5", "allocation.max_split=4"]
STRAGGLERS = ["faults.straggle=0.2", "faults.deadline=2x"]
CONFIGS: dict[str, list[str]] = {  # in the order they run: the no-fault pair, then the heaviest faults first
    "server": ["topology=server", *SAME_ALLOCATION],
    "p2p": ["topology=p2p"],
    "p2p_random": ["topology=p2p", "pairing=random"],
    "server_drop0_straggle": ["topology=server", *SAME_ALLOCATION, *STRAGGLERS],
    "p2p_drop0.3_straggle": ["topology=p2p", "faults.drop=0.3", *STRAGGLERS],
    "server_drop0.3_straggle": ["topology=server", *SAME_ALLOCATION, "faults.drop=0.3", *STRAGGLERS],
    "p2p_drop0.1_straggle": ["topology=p2p", "faults.drop=0.1", *STRAGGLERS],
    "p2p_drop0_straggle": ["topology=p2p", *STRAGGLERS],
    "server_drop0.1_straggle": ["topology=server", *SAME_ALLOCATION, "faults.drop=0.1", *STRAGGLERS],
    "p2p_random_drop0.1_straggle": ["topology=p2p", "pairing=random", "faults.drop=0.1", *STRAGGLERS],
}


def run(out: Path, seeds: list[int]) -> None:
    """Each (seed, config) job in turn, seed-major, skipping the ones already done."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    for seed in seeds:
        for name, overrides in CONFIGS.items():
            job = out / name / f"seed{seed}"
            if (job / "done").exists():
                continue
            print(f"running {name} seed {seed}", flush=True)
            cmd = [
                sys.executable,
                "-m",
                "atlas_pl",
                *BASE,
                *overrides,
                f"seed={seed}",
                f"hydra.run.dir={job}",
            ]
            done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
            if done.returncode != 0:
                print(f"  failed: {done.stderr[-1500:]}", file=sys.stderr, flush=True)


def _device_bytes(job: Any) -> dict[str, float]:
    """Mean and most bytes (sent + received) per device of one job."""
    per = [
        v["sent"] + v["received"]
        for k, v in (job.summary.get("traffic_by_device") or {}).items()
        if k.startswith("device/")
    ]
    return {"mean": sum(per) / len(per), "max": max(per)} if per else {}


def collect(root: Path) -> dict[str, Any]:
    jobs = load_jobs(root)
    for row in incomplete_rows(jobs):
        print(f"not counted: {row['job']} ({row['status']}) {row['detail']}", file=sys.stderr)
    groups = aggregate(jobs)
    speed = speeds(groups)
    faults = {row[0]: row[2:] for row in fault_rows(groups)}
    table: dict[str, Any] = {}
    for g in groups:
        name = g.jobs[0].path.parent.name
        device = [_device_bytes(j) for j in g.jobs]
        table[name] = {
            "group": g.label,
            "seeds": g.seeds,
            "per_task": {
                t: {
                    "mean": ts.mean.as_dict(),
                    "worst": ts.worst.as_dict(),
                    "target": speed[t][g.label].target,
                    "rounds_to_target": speed[t][g.label].fmt_rounds(),
                    "sim_seconds_to_target": speed[t][g.label].fmt_seconds(),
                }
                for t, ts in sorted(g.per_task.items())
            },
            "mean_primary": g.mean_primary.as_dict(),
            "client_bytes": g.bytes.as_dict(),
            "device_bytes_mean": sum(d.get("mean", 0) for d in device) / len(device),
            "device_bytes_max": sum(d.get("max", 0) for d in device) / len(device),
            "faults": dict(
                zip(
                    ["absent_per_round", "late", "repairings", "lost_steps", "moved_MB", "sim_seconds"],
                    faults.get(g.label, []),
                )
            ),
            "wall_seconds": g.seconds.as_dict(),
        }
    return table


def markdown(table: dict[str, Any]) -> str:
    if not table:
        return "(no completed jobs)"
    tasks = sorted(next(iter(table.values()))["per_task"])
    head = ["config", "seeds", *[f"{t} mean / worst" for t in tasks]]
    head += [f"{t} sim s to target" for t in tasks] + ["job sim s", "absent/round", "late", "moves"]
    head += ["MB per device (mean / max)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, row in table.items():
        cells = [name, ",".join(map(str, row["seeds"]))]
        for t in tasks:
            m, w = row["per_task"][t]["mean"], row["per_task"][t]["worst"]
            cells.append(f"{m['mean']:.3f} ± {m['std']:.3f} / {w['mean']:.3f} ± {w['std']:.3f}")
        cells += [row["per_task"][t]["sim_seconds_to_target"] for t in tasks]
        f = row["faults"]
        cells += [f.get("sim_seconds", "–"), f.get("absent_per_round", "–"), f.get("late", "–")]
        cells += [f.get("repairings", "–")]
        cells.append(f"{row['device_bytes_mean'] / 1e6:.0f} / {row['device_bytes_max'] / 1e6:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", action="store_true", help="run the jobs that are not done first")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--dir", type=Path, default=ROOT / "multirun" / "p2p_faults")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    if args.run:
        run(args.dir, args.seeds)
    table = collect(args.dir)
    write_report(args.out, "p2p_faults_quick", {"configs": CONFIGS, "base": BASE, "table": table}, echo=False)
    print(markdown(table))


if __name__ == "__main__":
    main()
