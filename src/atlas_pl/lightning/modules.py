"""Client and server LightningModules of split learning (manual optimization, SFL-V1).

The server module wraps one client's server half (blocks [s, L), that client's server-side adapter and
task head) with its own optimizer; a host of server halves keeps one per client. The client module runs
the bottom half, sends the detached activations (+ mask, labels) over its split link, gets back dL/dh
and finishes its own backward with `manual_backward(h, gradient=g)`. Both optimizers are created once and
returned by every `configure_optimizers` call, so their state survives the repeated `fit` calls of
later rounds.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from atlas_pl.models.split import ClientHalf, ServerHalf
from atlas_pl.parties.link import SplitLink
from atlas_pl.parties.messages import Activations


def adapter_head_adamw(
    adapters: Iterable[nn.Parameter],
    heads: Iterable[nn.Parameter],
    lr: float,
    head_lr: float,
    weight_decay: float,
) -> torch.optim.Optimizer:
    """Adapters and heads in two groups: a freshly initialised head needs a larger step than LoRA factors."""
    groups: list[dict[str, Any]] = [{"params": [p for p in adapters if p.requires_grad], "lr": lr}]
    groups.append({"params": [p for p in heads if p.requires_grad], "lr": head_lr})
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, weight_decay=weight_decay)


def balanced_class_weights(labels: Any, num_labels: int) -> torch.Tensor:
    """n / (C * n_c) from the client's own labels: every class weighs as much in the loss as the others.

    For skewed tasks scored by MCC (CoLA is 70/30) the plain loss is minimised by answering the majority
    class, which scores MCC 0 however informative the features are. Classes absent locally get weight 0.
    """
    counts = torch.bincount(torch.as_tensor(labels).long().flatten(), minlength=num_labels).double()
    present = counts > 0
    weights = torch.zeros(num_labels, dtype=torch.float64)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return weights.float()


class ServerModule(pl.LightningModule):
    """The server's side of one client: its half, loss, backward and optimizer step."""

    def __init__(
        self,
        half: ServerHalf,
        *,
        lr: float,
        head_lr: float | None = None,
        weight_decay: float = 0.0,
        class_weights: Tensor | None = None,
        scaler: torch.amp.GradScaler | None = None,
    ) -> None:
        super().__init__()
        self.server_half = half
        # fp16 loss scaling for the server half (16-mixed): this module trains outside Lightning's
        # precision plugin, which only scales the client's backward
        self.scaler = scaler
        # None = plain cross-entropy; a tensor weighs each class (e.g. inversely to its frequency)
        self.class_weights = class_weights
        self.automatic_optimization = False
        self.optimizer = adapter_head_adamw(
            half.adapter.parameters(),
            half.head.parameters(),
            lr,
            head_lr if head_lr is not None else lr,
            weight_decay,
        )
        self.last_loss = float("nan")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optimizer

    def forward(self, hidden: Tensor, attention_mask: Tensor) -> Tensor:
        return self.server_half(hidden, attention_mask)

    def process(self, hidden: Tensor, attention_mask: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """One server step on received activations; returns (loss, dL/dh) for the client.

        With a scaler the backward runs on the scaled loss and dL/dh is unscaled (in its own dtype: fp32
        for an fp32 base, the only base 16-mixed accepts) before it is sent, so the client gets the true
        gradient whatever the server's scale. An overflow skips the server's step; if it reached dL/dh, the
        client's scaler sees a non-finite gradient and skips the client's step too (and backs off).
        """
        received = hidden.detach().requires_grad_(True)
        self.optimizer.zero_grad(set_to_none=True)
        weight = None if self.class_weights is None else self.class_weights.to(received.device)
        loss = F.cross_entropy(self.server_half(received, attention_mask), labels, weight=weight)
        scaled = self.scaler is not None and self.scaler.is_enabled()
        if self.scaler is None or not scaled:
            loss.backward()
            self.optimizer.step()
        else:
            self.scaler.scale(loss).backward()
        grad = received.grad
        assert grad is not None  # received requires grad and the loss depends on it
        if self.scaler is not None and scaled:
            grad = grad / self.scaler.get_scale()  # the scale the backward used, before update
            self.scaler.step(self.optimizer)
            self.scaler.update()
        self.last_loss = float(loss.detach())
        return loss.detach(), grad


class ClientModule(pl.LightningModule):
    """The client's side: bottom half + its adapter; each step goes through its split link."""

    link: SplitLink

    def __init__(
        self, client_id: int, half: ClientHalf, link: SplitLink, *, lr: float, weight_decay: float = 0.0
    ) -> None:
        super().__init__()
        self.client_id = client_id
        self.client_half = half
        self.automatic_optimization = False
        object.__setattr__(self, "link", link)  # a route to another party, not state of this module
        params = [p for p in self.client_half.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
        self.losses: list[float] = []
        self.step_seconds = 0.0  # time inside training_step: the bare compute, to measure overhead
        self.step_limit: int | None = None  # steps this round may take (faults.late=partial), None: all
        self.steps_this_round = 0

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optimizer

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None
    ) -> Tensor:
        return self.client_half(input_ids, attention_mask, token_type_ids)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor | None:
        if self.step_limit is not None and self.steps_this_round >= self.step_limit:
            return None  # faults.late=partial: past the deadline, the rest of the round's batches go unused
        self.steps_this_round += 1
        started = time.perf_counter()
        optimizer = self.optimizers()
        assert not isinstance(optimizer, list)  # one optimizer: the client half's AdamW
        optimizer.zero_grad()
        hidden = self.client_half(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
        message = Activations(self.client_id, hidden.detach(), batch["attention_mask"], batch["labels"])
        reply = self.link.exchange(message)
        self.manual_backward(hidden, gradient=reply.grad)
        optimizer.step()
        self.losses.append(float(reply.loss))
        self.step_seconds += time.perf_counter() - started
        return reply.loss


def task_class_weights(
    balanced_tasks: frozenset[str], task: str, labels: Any, num_labels: int
) -> Tensor | None:
    """Balanced class weights for the tasks listed in `fed.balanced_tasks`, else None (plain loss)."""
    return balanced_class_weights(labels, num_labels) if task in balanced_tasks else None
