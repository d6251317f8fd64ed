"""Benchmark: a whole job on a reference commit and on this tree, side by side, in one run on one machine.

The speed claims of the performance work ("a quick job in a third of the time, metrics within the seed
spread") are only worth something measured this way: the same experiment, the same seeds, the same
machine, one job after another, never two at once. For each variant and seed this runs the CLI job in a
subprocess, then reads back what the job itself wrote (metrics.jsonl, clustering.json): wall time, the
per-round split into training / evaluation / Phase 1 / orchestration, the final metrics, and the clusters.

Variants: ``ref`` = the reference commit as it was (checked out as a detached worktree in OUT/worktree),
``new`` = this tree on its defaults, ``new_fp32`` = this tree with ``model.dtype=float32`` (full precision,
sdpa attention), which gives the fp32 seed spread the bf16 default is judged against.

    .venv/bin/python benchmarks/bench_speedup.py --ref 61033fe --experiment quick \\
        --jobs ref:0 new:0 new:1 new:2 new_fp32:0 new_fp32:1 new_fp32:2 --out /work/speedup

Every job names its ablation (``--ablation``, both trees alike): by default fedavg_cluster, what the
recorded speedup_quick*.json ran (quick's default until atlas became every experiment's default).

A finished job (its directory holds ``done``) is not run again, so an interrupted measurement resumes where
it stopped; the report is rewritten after every job to benchmarks/results/speedup_<experiment>.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _report import write_report
from compare_outputs import REPO, job_env, worktree

VARIANT_OVERRIDES = {
    "ref": [],
    "new": [],
    "new_fp32": ["model.dtype=float32", "model.attn_implementation=auto"],
}


def run_job(python: str, tree: Path, job_dir: Path, overrides: list[str], log: Path) -> float | None:
    """Run one CLI job (unless it already finished); its wall seconds, or None if it was done before."""
    if (job_dir / "done").exists():
        return None
    command = [python, "-m", "atlas_pl", *overrides, "logger=csv", f"hydra.run.dir={job_dir}"]
    start = time.perf_counter()
    with log.open("w") as handle:
        rc = subprocess.run(
            command, cwd=tree, env=job_env(tree / "src"), stdout=handle, stderr=subprocess.STDOUT
        ).returncode
    if rc:
        raise SystemExit(f"job failed (rc={rc}): {' '.join(command)}; see {log}")
    return time.perf_counter() - start


def job_summary(job_dir: Path) -> dict[str, Any]:
    """What a finished job recorded: per-round time split, final metrics, clusters."""
    rounds = [json.loads(line) for line in (job_dir / "metrics.jsonl").read_text().splitlines() if line]
    per_round = []
    for r in rounds:
        train = sum(c.get("train_seconds") or 0.0 for c in r["clients"].values())
        per_round.append(
            {
                "round": r["round"],
                "round_seconds": r["round_seconds"],
                "training_seconds": train,
                "evaluation_seconds": r.get("evaluation_seconds"),
                "fingerprint_seconds": r.get("fingerprint_seconds"),
                "orchestration_seconds": r.get("orchestration_seconds"),
            }
        )
    last = rounds[-1]
    out: dict[str, Any] = {
        "rounds": per_round,
        "final_mean_primary": last["mean_primary"],
        "final_worst_primary": min(t["worst_primary"] for t in last["per_task"].values()),
        "final_per_task": {k: v["primary"] for k, v in last["per_task"].items()},
    }
    clustering = job_dir / "clustering.json"
    if clustering.exists():
        c = json.loads(clustering.read_text())
        out["clusters"] = {key: c.get(key) for key in ("k", "purity", "labels", "seconds")}
    return out


def spread(values: list[float]) -> dict[str, float]:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def summarise(jobs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per variant: mean ± std over seeds of the final metric and of the wall time."""
    by_variant: dict[str, list[dict[str, Any]]] = {}
    for job in jobs.values():
        by_variant.setdefault(job["variant"], []).append(job)
    table = {}
    for variant, runs in by_variant.items():
        table[variant] = {
            "seeds": [r["seed"] for r in runs],
            "final_mean_primary": spread([r["final_mean_primary"] for r in runs]),
            "final_worst_primary": spread([r["final_worst_primary"] for r in runs]),
            "wall_seconds": spread([r["wall_seconds"] for r in runs if r.get("wall_seconds")]),
        }
    return table


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ref", required=True, help="git commit of the reference ('today's') code")
    parser.add_argument("--experiment", default="quick")
    parser.add_argument("--jobs", nargs="+", required=True, help="VARIANT:SEED, run in this order")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--ablation", default="fedavg_cluster", help="for every job (see above)")
    parser.add_argument("--overrides", nargs="*", default=[], help="Hydra overrides for every job")
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--results", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    out = args.out.resolve()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    trees = {"ref": worktree(args.ref, out / "worktree"), "new": REPO, "new_fp32": REPO}
    report_path = Path(args.results) / f"speedup_{args.experiment}.json"
    jobs: dict[str, dict[str, Any]] = {}
    if report_path.exists():
        jobs = json.loads(report_path.read_text()).get("jobs", {})
    for spec in args.jobs:
        variant, seed = spec.split(":")
        if variant not in VARIANT_OVERRIDES:
            raise SystemExit(f"unknown variant {variant!r}; valid: {', '.join(VARIANT_OVERRIDES)}")
        name = f"{variant}_seed{seed}"
        job_dir = out / name
        overrides = [
            f"+experiment={args.experiment}",
            f"ablation={args.ablation}",
            f"seed={seed}",
            *VARIANT_OVERRIDES[variant],
            *args.overrides,
        ]
        wall = run_job(args.python, trees[variant], job_dir, overrides, out / "logs" / f"{name}.log")
        previous = jobs.get(name, {})
        jobs[name] = {
            "variant": variant,
            "seed": int(seed),
            "commit": args.ref if variant == "ref" else "working tree",
            "wall_seconds": wall if wall is not None else previous.get("wall_seconds"),
            **job_summary(job_dir),
        }
        print(f"{name}: wall {jobs[name]['wall_seconds']}, final {jobs[name]['final_mean_primary']:.4f}")
        report = {
            "experiment": args.experiment,
            "ref": args.ref,
            "ablation": args.ablation,
            "overrides": args.overrides,
            "jobs": jobs,
            "table": summarise(jobs),
        }
        write_report(args.results, f"speedup_{args.experiment}", report, echo=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
