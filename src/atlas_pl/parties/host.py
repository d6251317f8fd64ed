"""A host of server halves: the central server in topology=server, a peer device later (DESIGN.md §10).

It holds one `ServerModule` per client it serves (that client's blocks [s, L), server-side adapter,
head, optimizer and loss scaler), answers each training exchange with (loss, dL/dh), and can hand a
hosted half over whole, so that a half can move to another host without losing its progress.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from atlas_pl.models.split import ServerHalf
from atlas_pl.parties.apply import apply_factors
from atlas_pl.parties.messages import ActivationGrads, Activations, AdapterUpdate, Factors
from atlas_pl.tracking.checkpoint import module_tensors, optimizer_tensors, restore_module, restore_optimizer


class ServerModule(Protocol):
    """What the host runs for one client: lightning.modules.ServerModule in-process."""

    server_half: ServerHalf
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    class_weights: Tensor | None
    training: bool

    def process(self, hidden: Tensor, attention_mask: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]: ...

    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...

    def eval(self) -> Any: ...

    def train(self, mode: bool = True) -> Any: ...


@dataclass
class HostedHalf:
    """Everything one hosted half carries when it moves: parameters, AdamW moments, loss scale."""

    client: int
    tensors: dict[str, Tensor]
    scaler: dict[str, Any]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())


class ServerHost:
    """Runs the server halves of the clients it hosts; knows nothing of engines or transports."""

    def __init__(self, name: str = "server") -> None:
        self.name = name
        self.modules: dict[int, ServerModule] = {}

    def host(self, client: int, module: ServerModule) -> None:
        self.modules[client] = module

    @property
    def clients(self) -> list[int]:
        return sorted(self.modules)

    def process(self, message: Activations) -> ActivationGrads:
        loss, grad = self.modules[message.client].process(
            message.hidden, message.attention_mask, message.labels
        )
        return ActivationGrads(loss, grad)

    @torch.no_grad()
    def infer(self, client: int, hidden: Tensor, attention_mask: Tensor) -> Tensor:
        """Logits for evaluation, with the half in eval mode (dropout off) and its mode restored after."""
        module = self.modules[client]
        was_training = module.training
        module.eval()
        try:
            return module(hidden, attention_mask)
        finally:
            module.train(was_training)

    # -- what the coordinator aggregates ----------------------------------------------------------
    def factors(self, client: int) -> tuple[Factors, dict[int, float], list[Tensor]]:
        """The client's server-side factors, LoRA scales and head tensors (copies, as sent)."""
        half = self.modules[client].server_half
        adapter = half.adapter
        factors: Factors = {}
        for key in adapter.keys:  # copies: a message must not change when the factors are updated
            a, b = adapter.pair(key)
            factors[key] = (a.detach().clone(), b.detach().clone())
        scaling = {block: adapter.scaling(block) for block in adapter.ranks}
        return factors, scaling, [p.detach().clone() for p in half.head.parameters()]

    @torch.no_grad()
    def apply(self, update: AdapterUpdate) -> None:
        """Write the server-side part of an update; rewritten factors lose their AdamW state."""
        module = self.modules[update.client]
        apply_factors(module.server_half.adapter, update, module.optimizer)
        if update.head is not None:
            for param, value in zip(module.server_half.head.parameters(), update.head):
                param.copy_(value)

    # -- moving a hosted half -----------------------------------------------------------------------
    def export_half(self, client: int) -> HostedHalf:
        module = self.modules[client]
        tensors = {
            **{k: v.detach().clone() for k, v in module_tensors("half", module.server_half).items()},
            **{k: v.clone() for k, v in optimizer_tensors("optim", module.optimizer).items()},
        }
        scaler = module.scaler.state_dict() if module.scaler is not None else {}
        return HostedHalf(client, tensors, scaler)

    def import_half(self, half: HostedHalf, module: ServerModule) -> None:
        """Host `half.client` on `module` (built with the same split and ranks), state and all."""
        restore_module("half", module.server_half, half.tensors)
        restore_optimizer("optim", module.optimizer, half.tensors)
        if module.scaler is not None and half.scaler:
            module.scaler.load_state_dict(dict(half.scaler))
        self.modules[half.client] = module

    def release(self, client: int) -> ServerModule:
        return self.modules.pop(client)


def half_parameters(half: ServerHalf) -> list[tuple[int | None, Tensor]]:
    """A server half's trainable tensors in a fixed order, each with its block (None: the head)."""
    adapter = half.adapter
    out: list[tuple[int | None, Tensor]] = [
        (int(key[0]), p) for key in adapter.keys for p in adapter.pair(key)
    ]
    return out + [(None, p) for p in half.head.parameters()]


def selected(half: ServerHalf, blocks: set[int], head: bool) -> list[Tensor]:
    """The trainable tensors of these blocks (and the head) of a half: what moves with them."""
    return [p for b, p in half_parameters(half) if (b in blocks) or (b is None and head)]


def optimizer_moments(optimizer: torch.optim.Optimizer, params: list[Tensor]) -> list[Tensor]:
    """The AdamW state of these parameters (what a move carries beside them)."""
    return [v for p in params for v in optimizer.state.get(p, {}).values() if isinstance(v, Tensor)]
