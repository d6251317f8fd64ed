"""The client party: its private data, its client half, and the four things it does in a round.

1. fingerprint itself on its own minibatches (Phase 1; only the sketch and importance leave it);
2. train one round: Lightning fits its ClientModule, every step going through its split link;
3. apply the coordinator's update to the factors it holds;
4. evaluate: its half's activations go over the link, the host returns logits.

Phase 1 reads the client's model whole: before round 1 that is the provisional model, the same seeded
state every client could build itself; at a re-clustering round it is the trained model, whose server
half the host holds, read here in-process rather than over the link (a topology that puts the host
elsewhere has to route this pass). From Phase 2 on, the party trains only its own half.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor

from atlas_pl.data import ClientData, TokenizedExamples, shuffled_loader
from atlas_pl.data.federated import derive_seed
from atlas_pl.lightning.modules import ClientModule
from atlas_pl.models.split import ClientHalf, SplitClientModel
from atlas_pl.parties.apply import apply_factors
from atlas_pl.parties.evaluation import evaluate
from atlas_pl.parties.link import COORDINATOR, SplitLink, TrafficLedger, client_name
from atlas_pl.parties.messages import AdapterUpdate, Factors
from atlas_pl.phases.fingerprint import FingerprintGrads, client_gradients
from atlas_pl.settings import FingerprintSettings


@dataclass
class TrainReport:
    loss: float
    seconds: float  # wall time of Lightning's fit for this client's round


def fingerprint_batches(
    data: Any, *, batches: int, batch_size: int, seed: int
) -> list[dict[str, torch.Tensor]]:
    """The client's first `batches` shuffled minibatches (cycling through small data), from a private RNG.

    A dedicated generator keeps the global RNG untouched, so clustering never changes the training order.
    """
    loader = shuffled_loader(data, batch_size=batch_size, seed=seed)
    if len(loader) == 0:
        raise ValueError("a client with no training data cannot fingerprint itself")
    out: list[dict[str, torch.Tensor]] = []
    while len(out) < batches:
        for batch in loader:
            out.append(batch)
            if len(out) == batches:
                break
    return out


class ClientParty:
    """One simulated edge client. `index` is its position in the federation (and its ledger name)."""

    def __init__(
        self, index: int, data: ClientData, model: SplitClientModel, ledger: TrafficLedger, seed: int
    ) -> None:
        self.index = index
        self.data = data
        self.model = model  # the provisional whole model (Phase 1); from Phase 2 on, `half` is what trains
        self.ledger = ledger
        self.seed = seed
        self.name = client_name(index)
        self.module: ClientModule | None = None
        self.trainer: pl.Trainer | None = None
        self.loader: torch.utils.data.DataLoader | None = None

    @property
    def task(self) -> str:
        return self.data.task

    @property
    def half(self) -> ClientHalf:
        return self.model.client

    # -- Phase 1 ------------------------------------------------------------------------------------
    def fingerprint_gradients(
        self, fp: FingerprintSettings, round_index: int, *, batch_size: int, include_head: bool, device
    ) -> FingerprintGrads:
        """The loss gradients on its first `fingerprint.batches` minibatches (kept on the client)."""
        batches = fingerprint_batches(
            self.data.train,
            batches=fp.batches,
            batch_size=batch_size,
            seed=derive_seed(self.seed, "fingerprint", self.data.client_id, round_index),
        )
        batches = [{name: t.to(device) for name, t in b.items()} for b in batches]
        return client_gradients(
            self.model,
            batches,
            last_layers=min(fp.layers, len(self.model.ranks)),
            include_head=include_head,
            class_balanced=fp.class_balanced,
        )

    def send(self, kind: str, tensors: list[Tensor]) -> None:
        """Something for the coordinator (fingerprint, importance, adapter), counted as it leaves."""
        self.ledger.send(self.name, COORDINATOR, kind, tensors)

    # -- Phase 3 --------------------------------------------------------------------------------------
    def attach(self, module: ClientModule, trainer: pl.Trainer, loader: torch.utils.data.DataLoader) -> None:
        """The Lightning pieces that train its half (built by the engine after Phase 2)."""
        self.module, self.trainer, self.loader = module, trainer, loader

    @property
    def link(self) -> SplitLink:
        return self.lightning()[0].link

    def lightning(self) -> tuple[ClientModule, pl.Trainer, torch.utils.data.DataLoader]:
        """Its module, Trainer and loader (after `attach`)."""
        if self.module is None or self.trainer is None or self.loader is None:
            raise RuntimeError(f"client {self.index} has no Lightning pieces yet: attach() first")
        return self.module, self.trainer, self.loader

    def train_round(self, round_index: int, local_epochs: int) -> TrainReport:
        module, trainer, loader = self.lightning()
        trainer.fit_loop.max_epochs = round_index * local_epochs
        module.losses = []
        start = time.perf_counter()
        trainer.fit(module, loader)
        seconds = time.perf_counter() - start
        losses = module.losses
        return TrainReport(statistics.fmean(losses) if losses else float("nan"), seconds)

    # -- Phase 4 --------------------------------------------------------------------------------------
    def factors(self) -> tuple[Factors, dict[int, float]]:
        """Its client-half factors (detached views) and their LoRA scales, for the coordinator."""
        adapter = self.half.adapter
        # copies: the message must not change when the factors are overwritten by an update
        pairs = {
            key: (adapter.pair(key)[0].detach().clone(), adapter.pair(key)[1].detach().clone())
            for key in adapter.keys
        }
        return pairs, {block: adapter.scaling(block) for block in adapter.ranks}

    def upload_adapter(self) -> None:
        self.send("adapter", list(self.half.adapter.parameters()))

    def receive_adapter(self) -> None:
        self.ledger.send(COORDINATOR, self.name, "adapter", list(self.half.adapter.parameters()))

    def apply(self, update: AdapterUpdate) -> None:
        """Write the client-half part of an update; rewritten factors lose their AdamW state."""
        apply_factors(self.half.adapter, update, self.module.optimizer if self.module is not None else None)

    # -- evaluation -----------------------------------------------------------------------------------
    def evaluate(self, data: TokenizedExamples, *, batch_size: int, device: torch.device) -> dict[str, float]:
        half, link = self.half, self.link
        was_training = half.training
        half.eval()  # LoRA dropout off while scoring
        try:
            return evaluate(
                lambda b: link.infer(
                    half(b["input_ids"], b["attention_mask"], b.get("token_type_ids")), b["attention_mask"]
                ),
                self.task,
                data,
                batch_size=batch_size,
                device=device,
            )
        finally:
            half.train(was_training)
