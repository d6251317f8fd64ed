"""Proof that a refactor changed no results: the same jobs, before and after, compared bit for bit.

A refactor of code that trains (federation/*, phases/*, ...) must leave every number a job writes exactly
as it was. This script runs the same Hydra jobs on a reference commit and on the current working tree,
then compares what they wrote, so "nothing changed" is checked rather than assumed.

Compare two existing output trees (each job directory is one holding a metrics.jsonl):

    .venv/bin/python benchmarks/compare_outputs.py compare BEFORE_DIR AFTER_DIR [--json summary.json]

Run the jobs on REF and on the working tree, then compare (an ablation may carry its own overrides
after colons, e.g. ``atlas:fed.eta=0.5``; ``--overrides`` apply to every job):

    .venv/bin/python benchmarks/compare_outputs.py run --before-ref HEAD --experiment smoke \\
        --ablations local_only,fedavg,atlas,atlas:fed.eta=0.5 --out /tmp/cmp [--overrides fed.rounds=2]

``run`` checks REF out as a detached worktree in OUT/worktree, runs each job with it (cwd=worktree,
PYTHONPATH=worktree/src) into OUT/before/<name> and with this tree (cwd=repo root, PYTHONPATH=src) into
OUT/after/<name>, logs to OUT/logs/, and compares OUT/before with OUT/after. A later run reuses the
worktree; drop it with ``git worktree remove OUT/worktree``. Environment (each kept if already set):
HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=offline TOKENIZERS_PARALLELISM=false,
ATLAS_GLUE_DIR=<repo>/../shared/data/glue, ATLAS_CACHE_DIR=<repo>/.cache (both made absolute).

Compared: metrics.jsonl record by record, clustering.json and allocation.json, recursively. Floats must be
bitwise equal (NaN equals NaN; 0.0 and -0.0 differ), and a value's JSON type must not change (1 vs 1.0
differs). Keys only in AFTER are reported as "added" (allowed); a missing key, a changed value, or a list
of another length fails. Ignored, as wall-clock: every key that ends in ``seconds`` (round_seconds,
train_seconds, clustering's seconds, ...) or ``_time``, and the keys ``time``, ``timestamp``,
``_timestamp``, ``_runtime``. Exit status: 0 identical, 1 different (or a job failed).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
FILES = ("metrics.jsonl", "clustering.json", "allocation.json")
IGNORED_KEYS = {"time", "timestamp", "_timestamp", "_runtime"}
IGNORED_SUFFIXES = ("seconds", "_time")


def ignored(key: str) -> bool:
    return key in IGNORED_KEYS or key.endswith(IGNORED_SUFFIXES)


def same_scalar(a: Any, b: Any) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        if math.isnan(a) and math.isnan(b):
            return True
        return struct.pack("<d", a) == struct.pack("<d", b)
    return a == b


def diff(before: Any, after: Any, path: str, out: dict[str, list[dict[str, Any]]]) -> None:
    """Append to out["failures"] / out["added"] every difference between two parsed JSON values."""
    if isinstance(before, dict) and isinstance(after, dict):
        for key, value in before.items():
            if ignored(key):
                continue
            if key not in after:
                out["failures"].append({"path": f"{path}.{key}", "before": value, "after": "<missing>"})
            else:
                diff(value, after[key], f"{path}.{key}", out)
        for key in after.keys() - before.keys():
            if not ignored(key):
                out["added"].append({"path": f"{path}.{key}", "after": after[key]})
    elif isinstance(before, list) and isinstance(after, list):
        if len(before) != len(after):
            out["failures"].append({"path": f"{path} (length)", "before": len(before), "after": len(after)})
        for i, (b, a) in enumerate(zip(before, after)):
            diff(b, a, f"{path}[{i}]", out)
    elif not same_scalar(before, after):
        out["failures"].append({"path": path, "before": before, "after": after})


def load(path: Path) -> Any:
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return json.loads(path.read_text())


def compare(before_dir: Path, after_dir: Path) -> dict[str, Any]:
    out: dict[str, Any] = {"jobs": [], "files": 0, "failures": [], "added": []}
    for metrics in sorted(before_dir.rglob("metrics.jsonl")):
        job = metrics.parent.relative_to(before_dir)
        out["jobs"].append(str(job))
        for name in FILES:
            b, a = before_dir / job / name, after_dir / job / name
            where = f"{job}/{name}"
            if not b.exists():
                if a.exists():
                    out["added"].append({"path": where, "after": "<file>"})
                continue
            if not a.exists():
                out["failures"].append({"path": where, "before": "<file>", "after": "<missing>"})
                continue
            out["files"] += 1
            diff(load(b), load(a), where, out)
    return out


def report(result: dict[str, Any], json_path: Path | None) -> int:
    for f in result["failures"]:
        print(f"DIFF  {f['path']}: before={f['before']!r} after={f['after']!r}")
    for a in result["added"]:
        print(f"ADDED {a['path']}: {a['after']!r}")
    ok = not result["failures"] and bool(result["jobs"])
    print(
        f"{'IDENTICAL' if ok else 'DIFFERENT'}: {len(result['jobs'])} jobs, {result['files']} files, "
        f"{len(result['failures'])} differences, {len(result['added'])} added"
    )
    if not result["jobs"]:
        print("no job directory (one holding metrics.jsonl) found under BEFORE_DIR")
    if json_path is not None:
        json_path.write_text(json.dumps({"identical": ok, **result}, indent=2, default=str) + "\n")
    return 0 if ok else 1


def job_env(src: Path) -> dict[str, str]:
    env = dict(os.environ)
    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        env.setdefault(key, "1")
    env.setdefault("WANDB_MODE", "offline")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["ATLAS_GLUE_DIR"] = str(Path(env.get("ATLAS_GLUE_DIR", REPO.parent / "shared/data/glue")).resolve())
    env["ATLAS_CACHE_DIR"] = str(Path(env.get("ATLAS_CACHE_DIR", REPO / ".cache")).resolve())
    env["PYTHONPATH"] = str(src)
    return env


def worktree(ref: str, path: Path) -> Path:
    if (path / ".git").exists():
        subprocess.run(["git", "-C", str(path), "checkout", "--quiet", "--detach", ref], check=True)
    else:
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(path), ref], check=True)
    return path


def run_jobs(args: argparse.Namespace) -> int:
    out = args.out.resolve()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    trees = {"before": worktree(args.before_ref, out / "worktree"), "after": REPO}
    failed = []
    for spec in args.ablations.split(","):
        ablation, *extra = spec.split(":")
        name = "_".join([ablation, *(re.sub(r"[^A-Za-z0-9.-]+", "-", e) for e in extra)])
        for side, tree in trees.items():
            job_dir = out / side / name
            shutil.rmtree(job_dir, ignore_errors=True)
            command = [
                args.python,
                "-m",
                "atlas_pl",
                f"+experiment={args.experiment}",
                f"ablation={ablation}",
                "logger=csv",
                *extra,
                *args.overrides,
                f"hydra.run.dir={job_dir}",
            ]
            log = out / "logs" / f"{side}_{name}.log"
            start = time.perf_counter()
            with log.open("w") as handle:
                rc = subprocess.run(
                    command, cwd=tree, env=job_env(tree / "src"), stdout=handle, stderr=subprocess.STDOUT
                ).returncode
            print(f"{side:6} {name}: rc={rc} in {time.perf_counter() - start:.1f}s (log {log})", flush=True)
            if rc:
                failed.append(f"{side}/{name}")
    status = report(compare(out / "before", out / "after"), args.json)
    if failed:
        print(f"FAILED jobs: {', '.join(failed)}")
    return 1 if failed else status


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="mode", required=True)
    cmp = sub.add_parser("compare", help="compare two output trees")
    cmp.add_argument("before", type=Path)
    cmp.add_argument("after", type=Path)
    cmp.add_argument("--json", type=Path, help="write a JSON summary here")
    run = sub.add_parser("run", help="run jobs on REF and on the working tree, then compare")
    run.add_argument("--before-ref", required=True, help="git commit/ref of the 'before' code")
    run.add_argument("--experiment", default="smoke")
    run.add_argument("--ablations", required=True, help="comma-separated; ABLATION[:override[:...]]")
    run.add_argument("--overrides", nargs="*", default=[], help="Hydra overrides for every job")
    run.add_argument("--out", type=Path, required=True)
    run.add_argument("--json", type=Path, help="write a JSON summary here")
    run.add_argument("--python", default=sys.executable, help="interpreter for the jobs (default: this one)")
    args = parser.parse_args()
    if args.mode == "compare":
        return report(compare(args.before, args.after), args.json)
    return run_jobs(args)


if __name__ == "__main__":
    sys.exit(main())
