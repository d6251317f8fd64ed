"""The one way this package builds a Lightning Trainer: quiet, no checkpoints, rounds driven from outside."""

from __future__ import annotations

from collections.abc import Sequence

import lightning.pytorch as pl
import torch

from atlas_pl.settings import TrainerSettings


def make_trainer(
    settings: TrainerSettings, device: torch.device, callbacks: Sequence[pl.Callback] = ()
) -> pl.Trainer:
    """A Trainer on the device the backbone already sits on, starting at max_epochs=0.

    The engine raises `fit_loop.max_epochs` by `fed.local_epochs` each round and calls `fit` again, so the
    same optimizers continue; logging, checkpoints and validation are the job's, not Lightning's.
    """
    return pl.Trainer(
        accelerator="gpu" if device.type == "cuda" else device.type,
        devices=settings.devices,
        precision=settings.precision,  # type: ignore[arg-type]  # validated against Lightning's names
        max_epochs=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        deterministic=settings.deterministic,
        callbacks=list(callbacks),
    )


def server_grad_scaler(settings: TrainerSettings, device: torch.device) -> torch.amp.GradScaler | None:
    """The loss scaler a server module needs under fp16 mixed precision, else None.

    Lightning scales only the backward it runs (the client's); the server half's backward runs inside
    the client's step, outside the precision plugin, and without its own scaler its fp16 gradients
    would underflow. Lightning turns 16-mixed into bf16-mixed on CPU, which needs no scaling.
    """
    if settings.precision != "16-mixed" or device.type != "cuda":
        return None
    return torch.amp.GradScaler(device.type)


def set_completed_epochs(trainer: pl.Trainer, epochs: int) -> None:
    """Make a fresh Trainer count `epochs` as already done, as the uninterrupted job's Trainer would.

    Lightning starts a data iterator once per `fit` and once more per epoch after the first one the
    Trainer has ever run, and each start draws from the loader's generator; a resumed job's Trainer
    must therefore be past its first epoch too, or every later batch order shifts.
    """
    progress = trainer.fit_loop.epoch_progress.current
    # the epoch tracker is a _ProcessedTracker at run time; Lightning annotates its base class
    progress.ready = progress.started = progress.processed = progress.completed = int(epochs)  # type: ignore[attr-defined]
