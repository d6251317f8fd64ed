"""The client party: its private data, its client half, and the four things it does in a round.

1. fingerprint itself on its own minibatches (Phase 1; only the sketch and importance leave it);
2. train one round through what the engine attached (Lightning in-process), every step over its split link;
3. apply the coordinator's update to the factors it holds;
4. evaluate: its half's activations go over the link, the host returns logits.

Phase 1 reads the client's model whole: before round 1 that is the provisional model, the same seeded
state every client could build itself; at a re-clustering round it is the trained model, whose server
half the host holds, read here in-process rather than over the link (a topology that puts the host
elsewhere has to route this pass). From Phase 2 on, the party trains only its own half.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from atlas_pl.data import ClientData, TokenizedExamples, take_rows
from atlas_pl.data.federated import derive_seed
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
    seconds: float  # wall time of this client's local training in the round


class RoundTraining(Protocol):
    """What trains a client's half one round at a time (lightning.training.ClientTraining in-process)."""

    @property
    def link(self) -> SplitLink: ...

    @property
    def optimizer(self) -> torch.optim.Optimizer: ...

    def fit_round(self, round_index: int, local_epochs: int) -> TrainReport: ...


def fingerprint_batches(
    data: TokenizedExamples, *, batches: int, batch_size: int, seed: int
) -> list[dict[str, torch.Tensor]]:
    """The samples of the client's first `batches` shuffled minibatches, regrouped by length.

    The samples are those of a private seeded shuffle (cycling through small data), drawn as a
    shuffling DataLoader with that generator would; it leaves the global RNG and the training loaders
    untouched, so clustering never changes the training order. Regrouping them into
    length-sorted batches of the same sizes cuts the padded tokens by about a third on GLUE (139,680 ->
    93,808 on quick) and leaves the fingerprint unchanged: the class-balanced loss is a sum of per-sample
    terms, and the plain one a mean over equal-sized batches. Only layer importance, a mean over
    batches of squared gradient norms, sees the new grouping.
    """
    # the indices of the batches a shuffling DataLoader with this generator would yield
    order: torch.utils.data.DataLoader[int] = torch.utils.data.DataLoader(
        range(len(data)),  # type: ignore[arg-type]  # a range is a valid map-style dataset
        batch_size=batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )
    if len(order) == 0:
        raise ValueError("a client with no training data cannot fingerprint itself")
    chosen: list[torch.Tensor] = []
    while len(chosen) < batches:
        for index in order:
            chosen.append(torch.as_tensor(index))
            if len(chosen) == batches:
                break
    flat = torch.cat(chosen)
    lengths = data.attention_mask[flat].sum(dim=1)
    flat = flat[torch.argsort(lengths, stable=True)]
    return [take_rows(data, part) for part in torch.split(flat, [len(c) for c in chosen])]


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
        self.training: RoundTraining | None = None

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
    def attach(self, training: RoundTraining) -> None:
        """What trains its half (the engine builds it after Phase 2: Lightning in-process)."""
        self.training = training

    def _training(self) -> RoundTraining:
        if self.training is None:
            raise RuntimeError(f"client {self.index} cannot train yet: attach() its training first")
        return self.training

    @property
    def link(self) -> SplitLink:
        return self._training().link

    def train_round(self, round_index: int, local_epochs: int) -> TrainReport:
        return self._training().fit_round(round_index, local_epochs)

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
        apply_factors(
            self.half.adapter, update, self.training.optimizer if self.training is not None else None
        )

    # -- evaluation -----------------------------------------------------------------------------------
    def evaluate(self, data: TokenizedExamples, *, batch_size: int, device: torch.device) -> dict[str, float]:
        half, link = self.half, self.link
        was_training = half.training
        half.eval()  # LoRA dropout off while scoring
        noise = torch.Generator().manual_seed(
            derive_seed(self.seed, "eval_noise")
        )  # the same draws each time
        try:
            return evaluate(
                lambda b: link.infer(
                    half(b["input_ids"], b["attention_mask"], b.get("token_type_ids")),
                    b["attention_mask"],
                    noise,
                ),
                self.task,
                data,
                batch_size=batch_size,
                device=device,
            )
        finally:
            half.train(was_training)
