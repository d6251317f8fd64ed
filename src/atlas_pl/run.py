"""One Hydra job: build the federation, run the rounds, write the job's result files (DESIGN.md §7).

A job directory ends in one of three states: `done` (+ summary.json) when it finished, `failed.json`
when it raised, or neither while it runs or after it was killed. `resume=true` skips a done job
(returning its metric, so a sweep re-run skips it) and continues any other from its last checkpoint.
Without `resume`, a directory that already holds a job is refused, so nothing written is overwritten.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

from omegaconf import DictConfig

from atlas_pl.engines.setup import build_federation
from atlas_pl.settings import Settings, build_settings
from atlas_pl.tracking.checkpoint import Checkpoint, CheckpointError, complete_rounds, latest_checkpoint
from atlas_pl.tracking.results import peak_memory, versions, write_json
from atlas_pl.tracking.resume import RoundCheckpointer, check_resumable, check_settings, checkpoint_root
from atlas_pl.tracking.tracker import Tracker

log = logging.getLogger(__name__)


DONE = "done"
FAILED = "failed.json"
JOB_FILES = ("job_config.json", "metrics.jsonl", "summary.json", DONE, FAILED, "checkpoints")


class JobDirectoryError(RuntimeError):
    """The output directory already holds a job and resume is off: refusing to overwrite it."""


def _lock(out_dir: Path) -> int:
    """Hold `out_dir/.lock` for the job's lifetime: a second process (a sweep re-run started while the
    first still runs) is refused instead of writing the same checkpoints and metrics concurrently."""
    fd = os.open(out_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as err:
        os.close(fd)
        raise JobDirectoryError(f"{out_dir} is in use by another running atlas_pl process") from err
    return fd


def _prepare(settings: Settings, out_dir: Path) -> tuple[float | None, Checkpoint | None]:
    """(metric of an already finished job, checkpoint to resume from), decided before any real work."""
    if not settings.resume:
        present = [name for name in JOB_FILES if (out_dir / name).exists()]
        if present:
            raise JobDirectoryError(
                f"{out_dir} already holds a job ({', '.join(present)}); resume=true continues it (or skips "
                "it if it is done); to start over choose another hydra.run.dir / hydra.sweep.dir"
            )
        return None, None
    done = out_dir / DONE
    if done.is_file():
        marker = json.loads(done.read_text())
        if "config" in marker:
            check_settings(settings.config, marker["config"], done)
        rounds, finished_round = settings.fed.rounds, int(marker["round"])
        if rounds == finished_round:
            metric = float(marker["final_mean_primary"])
            log.info("resume=true: %s is done (final mean primary %.4f); skipped", out_dir, metric)
            return metric, None
        if rounds < finished_round:
            raise CheckpointError(
                f"resume=true: {out_dir} is done after {finished_round} rounds, fed.rounds={rounds} asks "
                f"for fewer; valid: fed.rounds >= {finished_round} (more rounds extend the job)"
            )
        checkpoint = latest_checkpoint(checkpoint_root(out_dir))
        if checkpoint is None or checkpoint.round != finished_round:
            raise CheckpointError(
                f"resume=true: cannot extend {out_dir} to {rounds} rounds: no checkpoint of its last round "
                f"{finished_round} (checkpoint.enabled was false?)"
            )
        check_resumable(settings, checkpoint)
        log.info("resume=true: extending %s from %d to %d rounds", out_dir, finished_round, rounds)
        done.unlink()
        return None, checkpoint
    checkpoint = latest_checkpoint(checkpoint_root(out_dir))
    if checkpoint is None:
        log.info("resume=true: no checkpoint in %s; starting from round 1", out_dir)
        return None, None
    check_resumable(settings, checkpoint)
    return None, checkpoint


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


def run_job(cfg: DictConfig | Settings) -> float:
    """Run one job; returns the final mean primary metric over clients (what sweepers optimise).

    A DictConfig is validated and typed here (the CLI passes Settings it already built)."""
    started = time.perf_counter()
    settings = cfg if isinstance(cfg, Settings) else build_settings(cfg)
    out_dir = settings.output_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        lock = _lock(out_dir)
        finished, checkpoint = _prepare(settings, out_dir)
    except (CheckpointError, JobDirectoryError) as err:
        print(f"atlas_pl: {err}", file=sys.stderr)
        sys.exit(2)
    try:
        if finished is not None:
            return finished
        return _run(settings, out_dir, checkpoint, started)
    finally:
        os.close(lock)  # releases the flock


def _run(settings: Settings, out_dir: Path, checkpoint: Checkpoint | None, started: float) -> float:
    from atlas_pl.engines.centralized import run_centralized
    from atlas_pl.engines.inprocess import run_inprocess

    if (out_dir / FAILED).exists():  # an earlier attempt's failure: kept, but no longer the job's state
        os.replace(out_dir / FAILED, out_dir / "failed.previous.json")
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
        fed = build_federation(settings)
        ablation = settings.ablation.name
        build_seconds = time.perf_counter() - started
        engine = run_centralized if settings.ablation.centralized else run_inprocess
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
            "clustering": result.clustering_summaries,
            "peak_memory": peak_memory(),
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
