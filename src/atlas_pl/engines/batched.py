"""A round's local training with every participant in one batched step (`trainer.batched_clients=true`).

Clients one after another leave a GPU idle between the small kernels of a small model; clients that share
the frozen base can run their steps together instead (models/batched.py: one pass over the base, each
client's LoRA as batched matmuls, the same gradients as one after another). Here the participants' loaders
advance in lock step: step t trains every client that still has a t-th batch this epoch, each with its own
optimizers, class weights and loader order, so a client's trajectory is the one it would have alone. The
split protocol's messages are not materialised, but the ledger counts each client's activations and
dL/dh at the shapes and dtypes they would have had.

What it does not do: Lightning's precision plugins and the server's fp16 loss scaling (the config refuses
batched_clients with a mixed `trainer.precision`; the base dtype still applies), and LoRA dropout (refused
too: one mask over the stacked clients is not the masks each would draw alone). Per-client training
seconds are the round's batched seconds shared out by each client's number of steps; with no Lightning
loop around the steps, the job's Lightning overhead is zero by construction. The centralized ablation
has no clients and ignores the setting.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from atlas_pl.models.batched import batched_split_step
from atlas_pl.parties.client import ClientParty
from atlas_pl.parties.host import ServerHost
from atlas_pl.parties.link import SERVER, TrafficLedger, count_exchange


@dataclass
class _Lane:
    """One participant's part of the lock step: its loader, optimizers, and what it did."""

    party: ClientParty
    loader: torch.utils.data.DataLoader
    optimizers: tuple[torch.optim.Optimizer, torch.optim.Optimizer]
    class_weights: Tensor | None
    losses: list[float] = field(default_factory=list)


def _epoch_steps(lanes: Sequence[_Lane]) -> Iterator[list[tuple[_Lane, dict[str, Tensor]]]]:
    """Step t of one epoch: (lane, batch) for every lane whose loader still has a t-th batch."""
    iterators = [(lane, iter(lane.loader)) for lane in lanes]
    while iterators:
        group, alive = [], []
        for lane, it in iterators:
            batch = next(it, None)
            if batch is not None:
                group.append((lane, batch))
                alive.append((lane, it))
        iterators = alive
        if group:
            yield group


def train_batched(
    parties: Sequence[ClientParty],
    host: ServerHost,
    ledger: TrafficLedger,
    loaders: Sequence[torch.utils.data.DataLoader],
    epochs: range,
    device: torch.device,
) -> dict[int, tuple[float, float]]:
    """Each party's (mean step loss, seconds) after the global `epochs` trained together.

    The epoch numbers are the ones Lightning would give the loaders' samplers (`set_epoch`), so each
    client sees the batches, in the order, that it would see trained alone.
    """
    lanes = []
    for party, loader in zip(parties, loaders, strict=True):
        server = host.modules[party.index]
        assert party.training is not None, "the engine attaches each party's training before round 1"
        lanes.append(_Lane(party, loader, (party.training.optimizer, server.optimizer), server.class_weights))
        party.model.train()
    start = time.perf_counter()
    for epoch in epochs:
        for lane in lanes:
            set_epoch = getattr(lane.loader.sampler, "set_epoch", None)
            if callable(set_epoch):
                set_epoch(epoch)
        for group in _epoch_steps(lanes):
            _step(group, ledger, device)
    seconds = time.perf_counter() - start
    steps = sum(len(lane.losses) for lane in lanes) or 1
    return {
        lane.party.index: (
            statistics.fmean(lane.losses) if lane.losses else float("nan"),
            seconds * len(lane.losses) / steps,
        )
        for lane in lanes
    }


def _step(
    group: Sequence[tuple[_Lane, dict[str, Tensor]]], ledger: TrafficLedger, device: torch.device
) -> None:
    lanes = [lane for lane, _ in group]
    batches = [{k: v.to(device) for k, v in batch.items()} for _, batch in group]
    for lane in lanes:
        for optimizer in lane.optimizers:
            optimizer.zero_grad(set_to_none=True)
    step = batched_split_step(
        [lane.party.model for lane in lanes], batches, [lane.class_weights for lane in lanes]
    )
    for lane, loss in zip(lanes, step.losses, strict=True):
        for optimizer in reversed(lane.optimizers):  # the server steps first, as in the split protocol
            optimizer.step()
        lane.losses.append(float(loss))
    for lane, traffic in zip(lanes, step.traffic, strict=True):
        count_exchange(ledger, lane.party.index, SERVER, *traffic.messages())
