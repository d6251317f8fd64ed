"""One Hydra job: build the federation, run the rounds, write the job's result files (DESIGN.md §7)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from atlas_pl.federation.loop import run_federation
from atlas_pl.federation.setup import build_federation
from atlas_pl.tracking.results import peak_memory, versions, write_json
from atlas_pl.tracking.tracker import Tracker

log = logging.getLogger(__name__)


def run_job(cfg: DictConfig) -> float:
    """Run one job; returns the final mean primary metric over clients (what sweepers optimise)."""
    started = time.perf_counter()
    out_dir = Path(str(cfg.paths.output_dir))
    out_dir.mkdir(parents=True, exist_ok=True)
    tracker = Tracker(cfg, out_dir)
    failed = True
    try:
        fed = build_federation(cfg)
        ablation = str(cfg.ablation.name)
        build_seconds = time.perf_counter() - started
        result = run_federation(cfg, fed, tracker)
        final = result.records[-1]
        summary = {
            "status": "completed",
            "ablation": ablation,
            "config": OmegaConf.to_container(cfg, resolve=True),
            "model": {
                "name": fed.spec.name,
                "family": fed.spec.family,
                "num_layers": fed.backbone.num_layers,
                "base_params": sum(p.numel() for p in fed.backbone.model.parameters()),
            },
            "final": {
                "round": final["round"],
                "mean_accuracy": final["mean_accuracy"],
                "worst_accuracy": final["worst_accuracy"],
                "std_accuracy": final["std_accuracy"],
                "mean_primary": final["mean_primary"],
                "per_task": final["per_task"],
            },
            "totals": {
                **result.comm.totals(),
                "seconds": time.perf_counter() - started,
                "build_seconds": build_seconds,
                "train_seconds": sum(
                    sum(c["train_seconds"] for c in r["clients"].values()) for r in result.records
                ),
                "round_seconds": [r["round_seconds"] for r in result.records],
            },
            "overhead": result.overhead,
            "allocation": [
                {
                    "client": a.client,
                    "device": a.device,
                    "split": a.split,
                    "dropped": a.dropped,
                    "ranks": [a.ranks[b] for b in sorted(a.ranks)],
                    "memory_bytes": a.memory.total,
                    "budget_bytes": a.budget_bytes,
                }
                for a in result.allocations
            ],
            "clustering": [
                {"round": d.round, "k": d.k, "labels": d.labels, **d.quality, "seconds": d.seconds}
                for d in result.discoveries
            ],
            "peak_memory": peak_memory(),
            "versions": versions(),
        }
        write_json(out_dir / "summary.json", summary)
        log.info("final mean primary %.4f; wrote %s", final["mean_primary"], out_dir)
        failed = False
        return float(final["mean_primary"])
    finally:
        tracker.close(failed=failed)
