"""A client's Lightning pieces: its module, persistent Trainer and loader, fitted one round at a time."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import lightning.pytorch as pl
import torch

from atlas_pl.lightning.modules import ClientModule
from atlas_pl.lightning.trainers import set_completed_epochs
from atlas_pl.parties.client import TrainReport
from atlas_pl.parties.link import SplitLink


@dataclass
class ClientTraining:
    """What trains a client party's half; the party sees only `link`, `optimizer` and `fit_round`."""

    module: ClientModule
    trainer: pl.Trainer
    loader: torch.utils.data.DataLoader

    @property
    def link(self) -> SplitLink:
        return self.module.link

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.module.optimizer

    def fit_round(self, round_index: int, local_epochs: int) -> TrainReport:
        """Raise the Trainer's `max_epochs` by `local_epochs` and fit again: same loop, same optimizer.

        A client that missed rounds (faults) skips their epochs rather than catching up on them, so
        round r trains epochs of round r's numbering (its batch order) however many it sat out, as a
        resumed job's fresh Trainer does."""
        done = (round_index - 1) * local_epochs
        if self.trainer.current_epoch < done:
            set_completed_epochs(self.trainer, done)
        self.trainer.fit_loop.max_epochs = round_index * local_epochs
        self.module.losses = []
        self.module.steps_this_round = 0
        start = time.perf_counter()
        self.trainer.fit(self.module, self.loader)
        seconds = time.perf_counter() - start
        losses = self.module.losses
        return TrainReport(statistics.fmean(losses) if losses else float("nan"), seconds)
