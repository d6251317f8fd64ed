"""Per-client LoRA over ONE shared frozen base.

Why our own LoRA layer and not peft: peft injects an adapter's parameters *into* the wrapped base
modules, so N clients with their own per-block ranks over one base would mean N named adapters living
inside the shared model, switched with `set_adapter`, and the client/server split would have to slice
each module's adapter dict by block. Here the base modules are wrapped once by `LoRAHost`, which owns
no trainable state; every client owns a small `LoRAAdapter` module (its own parameters, optimizer and
state dict) and lends its factors to the hosts only for the duration of its own forward pass
(`LoRAAdapter.active`). Two clients therefore share the base tensors by construction and can never
see each other's factors, and a client half / server half is just an adapter over a block range.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torch.nn import functional as F

ModuleKey = tuple[int, str]  # (block index, module path inside the block)


class LoRAHost(nn.Module):
    """A frozen projection that adds the low-rank update of whichever adapter is currently lent to it.

    Handles both `nn.Linear` (weight [out, in]) and GPT-2's `Conv1D` (weight [in, out]); the update is
    always expressed in the Linear convention dW [out, in], so aggregation code never sees the difference.
    """

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__()
        self.base_layer = base_layer
        weight = self.base_weight
        if isinstance(base_layer, nn.Linear):
            self.out_features, self.in_features = weight.shape
        else:  # transformers' Conv1D stores the transpose
            self.in_features, self.out_features = weight.shape
        # a client's lent (A, B, scale, dropout), or a callable x -> update that adds many clients'
        # updates at once (models/batched.py), or None: the bare base projection
        self.active: tuple[Tensor, Tensor, float, nn.Module] | Callable[[Tensor], Tensor] | None = None

    @property
    def base_weight(self) -> Tensor:
        """The frozen projection's weight, in its layer's own layout (Conv1D: [in, out])."""
        weight = self.base_layer.weight
        assert isinstance(weight, Tensor)
        return weight

    def forward(self, x: Tensor) -> Tensor:
        out = self.base_layer(x)
        if self.active is None:
            return out
        if callable(self.active):
            return out + self.active(x)
        a, b, scale, dropout = self.active
        if a.dtype != x.dtype:
            # fp32 master factors over a bf16/fp16 base: run the update in the base's dtype, as autocast
            # does. Casting the tiny factors down (their gradients flow back up to fp32) costs nothing;
            # casting every activation up to fp32 and the update back cost more than the matmuls.
            a, b = a.to(x.dtype), b.to(x.dtype)
        return out + F.linear(F.linear(dropout(x), a), b) * scale


def _param_name(key: ModuleKey, which: str) -> str:
    block, module = key
    return f"b{block}__{module.replace('.', '_')}__{which}"


def init_seed(seed: int, key: ModuleKey) -> int:
    """A per-(block, module) seed, so a factor's initial value does not depend on split or rank layout."""
    return (seed * 1_000_003 + zlib.crc32(f"{key[0]}/{key[1]}".encode())) % (2**63 - 1)


class LoRAAdapter(nn.Module):
    """Trainable LoRA factors of one client for a set of (block, module) targets with per-block ranks.

    dW = (alpha / r) * B @ A with A [r, in] (seeded Kaiming init) and B [out, r] (zeros), the usual LoRA
    start where the adapted model equals the base model. Initial A depends only on (seed, block, module),
    so every client starts from the same model whatever its split or rank.
    """

    def __init__(
        self,
        shapes: Mapping[ModuleKey, tuple[int, int]],
        ranks: Mapping[int, int],
        *,
        alpha: float = 16.0,
        dropout: float = 0.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.keys: list[ModuleKey] = sorted(shapes)
        self.ranks: dict[int, int] = {}
        self.alpha = float(alpha)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.factors = nn.ParameterDict()
        for key in self.keys:
            block = key[0]
            if block not in ranks:
                raise ValueError(f"no LoRA rank given for block {block}; ranks cover {sorted(ranks)}")
            rank = int(ranks[block])
            if rank <= 0:
                raise ValueError(f"LoRA rank for block {block} must be positive, got {rank}")
            self.ranks[block] = rank
            in_f, out_f = shapes[key]
            gen = torch.Generator().manual_seed(init_seed(seed, key))
            bound = 1.0 / math.sqrt(in_f)  # kaiming_uniform(a=sqrt(5)) bound, as nn.Linear/peft use
            a = (torch.rand(rank, in_f, generator=gen) * 2 - 1) * bound
            self.factors[_param_name(key, "A")] = nn.Parameter(a)
            self.factors[_param_name(key, "B")] = nn.Parameter(torch.zeros(out_f, rank))

    # -- access ------------------------------------------------------------------------------------
    def scaling(self, block: int) -> float:
        return self.alpha / self.ranks[block]

    def pair(self, key: ModuleKey) -> tuple[Tensor, Tensor]:
        return self.factors[_param_name(key, "A")], self.factors[_param_name(key, "B")]

    def delta(self, key: ModuleKey) -> Tensor:
        """Dense update dW [out, in] of one module: what aggregation averages exactly."""
        a, b = self.pair(key)
        return self.scaling(key[0]) * (b @ a)

    def deltas(self) -> dict[ModuleKey, Tensor]:
        with torch.no_grad():
            return {key: self.delta(key).detach().clone() for key in self.keys}

    # -- lending the factors to the shared base ------------------------------------------------------
    @contextmanager
    def active(self, hosts: Mapping[ModuleKey, LoRAHost]) -> Iterator[None]:
        """Lend this adapter's factors to the shared hosts for one forward pass, then take them back."""
        lent = []
        try:
            for key in self.keys:
                a, b = self.pair(key)
                host = hosts[key]
                host.active = (a, b, self.scaling(key[0]), self.dropout)
                lent.append(host)
            yield
        finally:
            for host in lent:
                host.active = None
