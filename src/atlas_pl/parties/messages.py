"""The typed messages parties exchange: tensors and scalars only, so any transport can carry them."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from torch import Tensor

from atlas_pl.models.lora import ModuleKey

# one LoRA module's factors as sent: (A [r, in], B [out, r]) and its scaling alpha / r
Factors = dict[ModuleKey, tuple[Tensor, Tensor]]


@dataclass
class Fingerprint:
    """Phase 1's client -> coordinator message: the sketch (or raw vector) and per-block importance."""

    client: int
    vector: Tensor
    importance: np.ndarray


@dataclass
class AdapterUpload:
    """One client's trainable state as the coordinator aggregates it (both halves and the head).

    `factors` covers every LoRA module of the client, whichever half holds it; `scaling` is the LoRA
    scale per block; `head` the task head's tensors in parameter order.
    """

    client: int
    factors: Factors
    scaling: dict[int, float]
    head: list[Tensor]

    def finite(self) -> bool:
        tensors = [t for pair in self.factors.values() for t in pair] + list(self.head)
        return all(bool(t.isfinite().all()) for t in tensors)


@dataclass
class AdapterUpdate:
    """The coordinator's answer to one client: new factors for some modules, maybe a new head.

    `reset_optimizer` = forget all AdamW state (a client excluded for a non-finite update restarts clean);
    otherwise only the rewritten factors lose theirs (the SVD expressed them in a new basis).
    """

    client: int
    factors: Factors = field(default_factory=dict)
    head: list[Tensor] | None = None
    reset_optimizer: bool = False


@dataclass
class Activations:
    """Split learning's client -> host message of one step: h (detached), the mask and the labels."""

    client: int
    hidden: Tensor
    attention_mask: Tensor
    labels: Tensor

    def tensors(self) -> tuple[Tensor, Tensor, Tensor]:
        return self.hidden, self.attention_mask, self.labels


@dataclass
class ActivationGrads:
    """The host's answer: the step's loss and dL/dh for the client's backward."""

    loss: Tensor
    grad: Tensor
