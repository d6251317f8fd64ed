"""Round checkpoints of a running job: what is saved after a round, and how a resumed job gets it back.

`checkpoint.py` knows files; this module saves and restores the objects an engine names (modules,
optimizers, data generators, loss scalers) plus the engine's JSON state, and checks that a job is
resumed under the settings it was started with.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch

from atlas_pl.settings import CheckpointSettings, Settings
from atlas_pl.tracking.checkpoint import (
    Checkpoint,
    CheckpointError,
    generator_tensors,
    module_tensors,
    optimizer_tensors,
    restore_generators,
    restore_module,
    restore_optimizer,
    restore_rng,
    rng_state,
    save_checkpoint,
)
from atlas_pl.tracking.compatibility import check_settings

log = logging.getLogger(__name__)


class ScalerState(Protocol):
    """A loss scaler (torch GradScaler, Lightning precision plugin): its state is a few JSON numbers."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state_dict: dict[str, Any]) -> None: ...


def checkpoint_root(out_dir: Path) -> Path:
    return out_dir / "checkpoints"


def check_resumable(settings: Settings, checkpoint: Checkpoint) -> None:
    """Same settings, and not asked to stop before the round the checkpoint is already past."""
    check_settings(settings.config, checkpoint.state["config"], checkpoint.path)
    if settings.fed.rounds < checkpoint.round:
        raise CheckpointError(
            f"resume=true: {checkpoint.path} is after round {checkpoint.round} but fed.rounds="
            f"{settings.fed.rounds}; valid: fed.rounds >= {checkpoint.round}"
        )


class RoundCheckpointer:
    """Saves one checkpoint per completed round; on resume, puts a checkpoint's state back in place."""

    def __init__(
        self,
        settings: CheckpointSettings,
        config: Mapping[str, Any],
        out_dir: Path,
        resume: Checkpoint | None,
        started: float,
    ) -> None:
        """`config`: the job's resolved config, saved in every checkpoint for the resume checks."""
        self.enabled = settings.enabled
        self.keep = settings.keep
        self.root = checkpoint_root(out_dir)
        self.resume = resume
        self.started = started
        self.config = dict(config)
        self.extra: dict[str, Any] = {}  # job-level facts to carry along (the W&B run id)

    @property
    def start_round(self) -> int:
        return self.resume.round + 1 if self.resume else 1

    @property
    def elapsed_before(self) -> float:
        """Seconds the earlier processes of this job spent (so totals cover the whole job)."""
        return float(self.resume.state.get("elapsed_seconds", 0.0)) if self.resume else 0.0

    @property
    def state(self) -> dict[str, Any]:
        if self.resume is None:
            raise RuntimeError("no checkpoint to restore from")
        return self.resume.state

    def save(
        self,
        round_index: int,
        *,
        json_state: Mapping[str, Any],
        modules: Mapping[str, torch.nn.Module],
        optimizers: Mapping[str, torch.optim.Optimizer],
        generators: Sequence[torch.Generator],
        scalers: Mapping[str, ScalerState] | None = None,
    ) -> None:
        if not self.enabled:
            return
        rng_json, tensors = rng_state()
        for prefix, module in modules.items():
            tensors.update(module_tensors(prefix, module))
        for prefix, optimizer in optimizers.items():
            tensors.update(optimizer_tensors(prefix, optimizer))
        tensors.update(generator_tensors("loader", generators))
        # fp16 loss scales (16-mixed): a resumed job must go on from the scale the run had reached, or its
        # first steps overflow or underflow differently; scalers that are off have an empty state
        scales = {name: scaler.state_dict() for name, scaler in (scalers or {}).items()}
        state = {
            **json_state,
            **self.extra,
            "scalers": {name: value for name, value in scales.items() if value},
            "config": self.config,
            "rng": rng_json,
            "elapsed_seconds": self.elapsed_before + time.perf_counter() - self.started,
        }
        path = save_checkpoint(self.root, round_index, state, tensors, keep=self.keep)
        log.info("checkpoint after round %d: %s", round_index, path)

    def restore(
        self,
        *,
        modules: Mapping[str, torch.nn.Module],
        optimizers: Mapping[str, torch.optim.Optimizer],
        generators: Sequence[torch.Generator],
        scalers: Mapping[str, ScalerState] | None = None,
    ) -> None:
        """Parameters, optimizer moments, loss scales, loader generators (they seed
        workers; the order itself follows the epoch) and global RNGs as after the round."""
        if self.resume is None:
            return
        tensors = self.resume.tensors
        for prefix, module in modules.items():
            restore_module(prefix, module, tensors)
        for prefix, optimizer in optimizers.items():
            restore_optimizer(prefix, optimizer, tensors)
        try:
            restore_generators("loader", generators, tensors)
        except KeyError as err:
            raise CheckpointError(f"{self.resume.path}: no saved state for data loader {err}") from err
        saved_scales = self.resume.state.get("scalers") or {}
        for name, scaler in (scalers or {}).items():
            if name in saved_scales:
                scaler.load_state_dict(dict(saved_scales[name]))
            elif scaler.state_dict():  # scaling now, but the checkpoint has no scale for it
                log.warning(
                    "%s has no loss scale for %s: it starts from its initial scale", self.resume.path, name
                )
        restore_rng(self.resume.state["rng"], tensors)
        log.info("resumed from %s: continuing at round %d", self.resume.path, self.start_round)
