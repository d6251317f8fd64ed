"""Benchmark: how much of a client's text the activations it sends give away, and what noise costs.

Real MiniLM on real GLUE (DESIGN.md §11, README "Privacy"):

1. Defended training: the quick experiment on SST-2 alone (3 clients x 400 samples, 3 rounds; a third of
   quick's cost) with every client split at s = 2, at privacy.activation_noise = 0, 0.25, 0.5, 1, 2
   (x rms(h)): the utility MP of each defense; then 4 and 8, once 2 turned out not to stop VMI.
2. Inversion: 100 SST-2 validation sentences attacked at s = 1..5; the victim is client 0 (SST-2) of the
   undefended job, so the white-box attacker holds its trained adapters and the semi-white-box one only
   the pretrained weights. VMI, the learned inverter (10 epochs on 500 CoLA training sentences) and
   BiSR(f), with 30 optimisation steps instead of the anchors' 100 (on MiniLM VMI reaches 0.98 after 10
   at s = 3; a 2-core CPU budget). RMI's every step runs a softmax over the 30,522-token vocabulary at
   every position and a product with the embedding table; it runs on 16 sentences at s = 1 and 3 only.
3. Privacy-utility: each defended job's client 0 attacked white-box at its own split with its own noise;
   AP (max over attacks) against MP, and DCS.
4. The sketch attack: majority label from the Phase 1 sketch, 60 shadow and 30 victim clients of 64
   SST-2 samples with Dirichlet(0.5) label mixes, without and with the sketch's DP.

    .venv/bin/python benchmarks/bench_privacy.py --run   # what is not done yet (resumable)
    .venv/bin/python benchmarks/bench_privacy.py         # tables and JSON of what is

Writes benchmarks/results/privacy_minilm.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from _report import write_report

from atlas_pl.privacy.report import console_table

ROOT = Path(__file__).resolve().parents[1]
NOISES = ["0", "0.25", "0.5", "1", "2"]
HIGH_NOISES = ["0", "4", "8"]  # added once 0..2 turned out not to stop VMI
# fedavg_cluster: what privacy_minilm.json's jobs ran (quick's default then; quick now defaults to atlas)
TRAIN = [
    "+experiment=quick",
    "task=sst2",
    "ablation=fedavg_cluster",
    "allocation.split=2",
    "logger=csv",
    "resume=true",
]
FAST = [
    "attack.vmi.steps=30",
    "attack.bisr.steps=30",
    "attack.inverter.epochs=10",
    "auxiliary.samples=500",
]
SKETCH = ["sketch.samples_per_client=64", "fingerprint.batches=4", "fingerprint.sketch_dim=1024"]


def _job(out: Path, noise: str) -> Path:
    return out / "train" / f"noise{noise}"


def evaluations(out: Path) -> dict[str, list[str]]:
    jobs = ",".join(str(_job(out, n)) for n in NOISES)
    victim = f"target.job_dir={_job(out, '0')}"
    return {
        "inversion": [
            victim,
            "target.splits=all",
            "attack.names=[vmi,inverter,bisr]",
            *FAST,
            "sketch.enabled=false",
        ],
        "rmi": [
            victim,
            "target.splits=[1,3]",
            "target.samples=16",
            "attack.names=[rmi]",
            "attack.rmi.steps=100",
            "sketch.enabled=false",
        ],
        "tradeoff": [
            f"tradeoff.jobs=[{jobs}]",
            "target.splits=[]",
            "attack.names=[vmi,inverter,bisr]",
            *FAST,
            "sketch.enabled=false",
        ],
        "tradeoff_high": [
            f"tradeoff.jobs=[{','.join(str(_job(out, n)) for n in HIGH_NOISES)}]",
            "target.splits=[]",
            "attack.names=[vmi,inverter,bisr]",
            *FAST,
            "sketch.enabled=false",
        ],
        "sketch": ["target.splits=[]", "sketch.enabled=true", *SKETCH],
        "sketch_dp": ["target.splits=[]", "sketch.enabled=true", *SKETCH, "fingerprint.dp.enabled=true"],
    }


def _call(args: list[str], what: str) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    print(f"running {what}", flush=True)
    done = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        print(f"  failed: {done.stderr[-1500:]}", file=sys.stderr, flush=True)


def _train(out: Path, noise: str) -> None:
    job = _job(out, noise)
    if not (job / "done").exists():
        args = ["-m", "atlas_pl", *TRAIN, f"privacy.activation_noise={noise}", f"hydra.run.dir={job}"]
        _call(args, f"training with noise {noise}")


def _complete(path: Path) -> bool:
    return path.exists() and bool(json.loads(path.read_text()).get("complete", True))


def _evaluate(out: Path, name: str) -> None:
    if not _complete(out / name / "privacy.json"):
        _call(["-m", "atlas_pl.privacy", *evaluations(out)[name], f"hydra.run.dir={out / name}"], name)


def run(out: Path) -> None:
    """The undefended job and its inversion first (the headline numbers), then the defended jobs."""
    _train(out, "0")
    _evaluate(out, "inversion")
    for noise in NOISES[1:] + HIGH_NOISES[1:]:
        _train(out, noise)
    for name in ("tradeoff", "rmi", "sketch", "sketch_dp", "tradeoff_high"):
        _evaluate(out, name)


def collect(out: Path) -> dict[str, Any]:
    found = {}
    for name in evaluations(out):
        path = out / name / "privacy.json"
        if path.exists():
            result = json.loads(path.read_text())
            for row in result["attacks"] + [a for t in result["tradeoff"] for a in t["attacks"]]:
                row.pop("examples", None) if name != "inversion" else None
            found[name] = {k: v for k, v in result.items() if k != "config"}
    return found


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", action="store_true", help="run what is not done first")
    parser.add_argument("--dir", type=Path, default=ROOT / "multirun" / "privacy")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    if args.run:
        run(args.dir)
    found = collect(args.dir)
    write_report(
        args.out,
        "privacy_minilm",
        {"train": TRAIN, "noises": NOISES, "evaluations": evaluations(args.dir), "results": found},
        echo=False,
    )
    for name, result in found.items():
        print(f"## {name}\n{console_table(result)}\n")


if __name__ == "__main__":
    main()
