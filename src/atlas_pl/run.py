"""One Hydra job: build the federation, run the rounds, write the job's result files (DESIGN.md §7).

A job directory ends in one of three states: `done` (+ summary.json) when it finished, `failed.json`
when it raised, or neither while it runs or after it was killed. `resume=true` skips a done job
(returning its metric, so a sweep re-run skips it) and continues any other from its last checkpoint.
Without `resume`, a directory that already holds a job is refused, so nothing written is overwritten.
"""

from __future__ import annotations

import logging
import os
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

from atlas_pl.errors import AtlasError, JobDirectoryError
from atlas_pl.jobdir import DONE, FAILED, JOB_FILES, check_writable, lock, prepare
from atlas_pl.settings import Settings, build_settings
from atlas_pl.tracking.results import write_json

if TYPE_CHECKING:
    from atlas_pl.tracking.checkpoint import Checkpoint

log = logging.getLogger(__name__)

__all__ = ["DONE", "FAILED", "JOB_FILES", "JobDirectoryError", "run_job"]


def defenses(settings: Settings) -> dict[str, Any]:
    """What protected what left the clients, for the privacy-utility comparison (README, Privacy)."""
    dp = settings.fingerprint.dp
    return {
        "activation_noise": settings.privacy.activation_noise,
        "sketch_dp": dp.as_json() if dp is not None and dp.enabled else None,
    }


def _write_failure(out_dir: Path, err: BaseException, result_round: int | None) -> None:
    write_json(
        out_dir / FAILED,
        {
            "error": f"{type(err).__name__}: {err}",
            "last_complete_round": result_round,
            "time": datetime.now(timezone.utc).isoformat(),
            "traceback": traceback.format_exc(),
        },
    )


def _keep_previous_failure(out_dir: Path) -> None:
    """An earlier attempt's failure is kept, but it is no longer the job's state."""
    if (out_dir / FAILED).exists():
        os.replace(out_dir / FAILED, out_dir / "failed.previous.json")


def _record_failure(out_dir: Path, err: BaseException, result_round: int | None) -> None:
    _keep_previous_failure(out_dir)
    _write_failure(out_dir, err, result_round)


def fault_totals(records: list[dict[str, Any]]) -> dict[str, Any]:
    """What faults did over the job (summary.json): absences, late clients, moves and lost steps."""
    faults = [r.get("faults") or {} for r in records]
    return {
        "absences": sum(len(f.get("absent_clients", [])) for f in faults),
        "late": sum(len(f.get("late_clients", [])) for f in faults),
        "sat_out": sum(len(f.get("sat_out", {})) for f in faults),
        "repairings": sum(f.get("repairings", 0) for f in faults),
        "fallbacks": sum(f.get("fallbacks", 0) for f in faults),
        "lost_steps": sum(sum(f.get("lost_steps", {}).values()) for f in faults),
    }


def run_job(cfg: DictConfig | Settings) -> float:
    """Run one job; returns the final mean primary metric over clients (what sweepers optimise).

    A DictConfig is validated and typed here (the CLI passes Settings it already built). The job
    directory is checked before torch, the model or the data are loaded: a refusal costs a second."""
    started = time.perf_counter()
    settings = cfg if isinstance(cfg, Settings) else build_settings(cfg)
    out_dir = settings.output_dir
    check_writable(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fd = lock(out_dir)
    try:
        start = prepare(settings, out_dir)
        if start.finished is not None:
            return start.finished
        return _run(settings, out_dir, start.checkpoint, started, extends_done=start.extends_done)
    finally:
        os.close(fd)  # releases the flock


def _run(
    settings: Settings, out_dir: Path, checkpoint: Checkpoint | None, started: float, *, extends_done: bool
) -> float:
    from atlas_pl.preflight import check_inputs

    fresh = not any((out_dir / name).exists() for name in JOB_FILES)
    try:
        # inputs first (accelerator, data files, then the model): a bad one changes nothing on disk
        check_inputs(settings)
        from atlas_pl.console import route_library_logs

        route_library_logs()  # the model loads next: transformers' warnings to the log file (the CLI)
        from atlas_pl.engines.centralized import run_centralized
        from atlas_pl.engines.inprocess import run_inprocess
        from atlas_pl.engines.setup import build_federation
        from atlas_pl.reporting.convergence import job_convergence
        from atlas_pl.reporting.job_end import traffic_by_task
        from atlas_pl.tracking.checkpoint import complete_rounds
        from atlas_pl.tracking.results import peak_memory, versions
        from atlas_pl.tracking.resume import RoundCheckpointer, checkpoint_root
        from atlas_pl.tracking.tracker import Tracker

        fed = build_federation(settings)
    except Exception as err:
        # bad input found before the job changed anything leaves an existing job's files as they were;
        # a fresh directory, or a bug, still gets its failed.json
        if fresh or not isinstance(err, AtlasError):
            _record_failure(out_dir, err, None)
        raise
    _keep_previous_failure(out_dir)
    if extends_done:
        (out_dir / DONE).unlink()  # the job runs again: done after its new last round
    resolved = settings.config
    if checkpoint is None:
        # the job's own settings: Hydra rewrites .hydra/ whenever anything is launched into this directory
        write_json(out_dir / "job_config.json", resolved)
    checkpointer = RoundCheckpointer(settings.checkpoint, resolved, out_dir, checkpoint, started)
    if checkpoint is None and (out_dir / "metrics.jsonl").exists():
        (out_dir / "metrics.jsonl").unlink()  # resume=true without a checkpoint: the partial history restarts
    tracker = Tracker(settings, out_dir, wandb_id=checkpoint.state.get("wandb_id") if checkpoint else None)
    checkpointer.extra["wandb_id"] = tracker.wandb_id
    failed = True
    try:
        ablation = settings.ablation.name
        build_seconds = time.perf_counter() - started
        engine = run_centralized if settings.ablation.centralized else run_inprocess
        if settings.engine.flower:
            from atlas_pl.engines.flower.simulation import run_flower

            engine = run_flower
        result = engine(settings, fed, tracker, checkpointer)
        final = result.records[-1]
        summary = {
            "status": "completed",
            "ablation": ablation,
            "config": resolved,
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
                **({"personal": final["personal"]} if "personal" in final else {}),
            },
            "totals": {
                **result.ledger.totals(),
                "seconds": result.elapsed_before + time.perf_counter() - started,
                "resumed_from_round": checkpoint.round if checkpoint else None,
                "build_seconds": build_seconds,
                "train_seconds": sum(
                    sum(c["train_seconds"] for c in r["clients"].values()) for r in result.records
                ),
                "round_seconds": [r["round_seconds"] for r in result.records],
                "sim_seconds": result.records[-1].get("cumulative_sim_seconds"),
            },
            "traffic_by_device": result.ledger.by_device(),
            "traffic_by_task": traffic_by_task(result.records),
            "tracking": tracker.links(),  # where the W&B run / CSV is (the final console table says so)
            "convergence": job_convergence(result.records, list(settings.tasks)),
            "faults": fault_totals(result.records) if settings.faults.enabled else None,
            "overhead": result.overhead,
            "defenses": defenses(settings),
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
            "clustering": result.clustering_summaries,
            "peak_memory": {**peak_memory(), **result.memory},
            "versions": versions(),
        }
        write_json(out_dir / "summary.json", summary)
        write_json(
            out_dir / DONE,
            {
                "final_mean_primary": final["mean_primary"],
                "round": final["round"],
                "time": datetime.now(timezone.utc).isoformat(),
                "config": resolved,  # a later resume=true checks it is asked for the same job
            },
        )
        (out_dir / FAILED).unlink(missing_ok=True)  # an earlier attempt's failure is history now
        log.info("final mean primary %.4f; wrote %s", final["mean_primary"], out_dir)
        failed = False
        return float(final["mean_primary"])
    except Exception as err:
        rounds = complete_rounds(checkpoint_root(out_dir))
        _write_failure(out_dir, err, rounds[-1] if rounds else None)
        raise
    finally:
        tracker.close(failed=failed)
