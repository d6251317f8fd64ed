"""Many clients' split steps as ONE forward/backward over the shared frozen base.

Why: on a GPU a client's step on a small model is a few hundred tiny kernels, so clients trained one
after another leave the chip idle between launches. Clients that share the frozen base can instead run
as one large batch: the base projections see every client's tokens at once, and each LoRA host adds each
client's own low-rank update with two batched matmuls over a [C, ...] stack of the clients' factors.

The maths is the sequential one, not an approximation:
- split == unsplit (the client half then the server half on the same blocks), so the whole model is one
  pass; block b uses client c's client-half adapter if b < s_c, else its server-half adapter;
- batches are padded (rows and columns) to a common shape with masked positions, which a transformer row
  never attends to, and every client's head and loss read only its own unpadded slice;
- ranks differ per client: factors are zero-padded to the widest rank of that module, which adds exactly
  zero, and the padding is built with differentiable ops so each gradient lands in the client's own
  `nn.Parameter`;
- the loss backpropagated is the SUM of the per-client losses (each the mean over its own batch, with its
  own class weights), so each client's parameters get exactly its own gradient.

Optimizers are not touched: the caller zeroes and steps every client's own optimizers as before.

Lending: `batched_lora` lends every host a callable that computes all clients' updates (LoRAHost accepts
one in place of a single client's factors) and takes it back afterwards, as `LoRAAdapter.active` does.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from atlas_pl.models.lora import LoRAAdapter, ModuleKey
from atlas_pl.models.split import SharedBackbone, SplitClientModel


@dataclass(frozen=True)
class SplitTraffic:
    """What the split protocol would have exchanged for one client in this step, by shape and dtype.

    The batched step never materialises the per-client messages, but the ledger still has to count them:
    `messages()` gives meta tensors of the exact shapes/dtypes (no memory) for `TrafficLedger.send`.
    """

    hidden_shape: tuple[int, ...]  # [B, T, H] of the client's own (unpadded) batch at its split
    hidden_dtype: torch.dtype
    mask_shape: tuple[int, ...]
    mask_dtype: torch.dtype
    labels_shape: tuple[int, ...]
    labels_dtype: torch.dtype

    def messages(self) -> tuple[tuple[Tensor, Tensor, Tensor], tuple[Tensor]]:
        """(activations, mask, labels) sent up and (dL/dh,) sent back, as meta tensors."""
        hidden = torch.empty(self.hidden_shape, dtype=self.hidden_dtype, device="meta")
        mask = torch.empty(self.mask_shape, dtype=self.mask_dtype, device="meta")
        labels = torch.empty(self.labels_shape, dtype=self.labels_dtype, device="meta")
        return (hidden, mask, labels), (torch.empty_like(hidden),)

    @property
    def activation_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.messages()[0])

    @property
    def grad_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.messages()[1])


@dataclass
class BatchedStep:
    """Per-client detached losses and the protocol traffic of one batched step, in the models' order."""

    losses: list[Tensor]
    traffic: list[SplitTraffic]


@dataclass
class _Packed:
    input_ids: Tensor  # [C * rows, T]
    attention_mask: Tensor
    token_type_ids: Tensor | None
    rows: int  # rows per client after padding
    sizes: list[tuple[int, int]]  # each client's own (B, T)


def _pack(batches: Sequence[Mapping[str, Tensor]], pad_id: int) -> _Packed:
    """Pad every client's batch to the same [rows, T] and stack them client-major.

    Client-major with equal rows is what lets a host view its input as [C, rows * T, in] and use bmm.
    Padding rows get one attended token so no row is fully masked (some attention kernels dislike that);
    their outputs are never read.
    """
    sizes = [(int(b["input_ids"].shape[0]), int(b["input_ids"].shape[1])) for b in batches]
    rows = max(s[0] for s in sizes)
    length = max(s[1] for s in sizes)
    count = len(batches)
    first = batches[0]["input_ids"]
    ids = torch.full((count, rows, length), pad_id, dtype=first.dtype, device=first.device)
    mask_dtype = batches[0]["attention_mask"].dtype
    mask = torch.zeros((count, rows, length), dtype=mask_dtype, device=first.device)
    mask[:, :, 0] = 1
    with_types = any(b.get("token_type_ids") is not None for b in batches)
    types = torch.zeros_like(ids) if with_types else None
    for c, (batch, (n, t)) in enumerate(zip(batches, sizes)):
        ids[c, :n, :t] = batch["input_ids"]
        mask[c, :n] = 0
        mask[c, :n, :t] = batch["attention_mask"].to(mask_dtype)
        tt = batch.get("token_type_ids")
        if types is not None and tt is not None:
            types[c, :n, :t] = tt
    flat = (count * rows, length)
    return _Packed(
        ids.view(flat), mask.view(flat), types.view(flat) if types is not None else None, rows, sizes
    )


@lru_cache(maxsize=4096)
def _constant(values: tuple[float | int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """A small constant tensor built once: a fresh host-to-device copy per host per step would cost a
    launch and a staging copy each time, and scales / orders only change when the clients do.
    """
    return torch.tensor(values, dtype=dtype, device=device)


def _stack_padded(tensors: Sequence[Tensor], ranks: Sequence[int], rank_dim: int) -> Tensor:
    """Stack factors of different ranks into [C, ...] zero-padded to the widest rank, differentiably.

    Grouped by rank (one stack + one pad per distinct rank, then one reorder) rather than one pad per
    client: with hundreds of clients the per-client ops would dominate the step's launch count.
    """
    widest = max(ranks)
    if all(r == widest for r in ranks):
        return torch.stack(list(tensors))
    groups: dict[int, list[int]] = {}
    for index, rank in enumerate(ranks):
        groups.setdefault(rank, []).append(index)
    parts, order = [], []
    for rank, members in groups.items():
        stacked = torch.stack([tensors[i] for i in members])  # [n, ...] with `rank` on rank_dim + 1
        pad = [0, 0] * (stacked.dim() - 1 - rank_dim - 1) + [0, widest - rank]
        parts.append(F.pad(stacked, pad) if rank < widest else stacked)
        order.extend(members)
    joined = torch.cat(parts)
    inverse = [0] * len(order)
    for position, client in enumerate(order):
        inverse[client] = position
    return joined.index_select(0, _constant(tuple(inverse), torch.long, joined.device))


class _HostUpdate:
    """All clients' factors of one host as bmm operands: A^T [C, in, R], B^T [C, R, out], scale [C, 1, 1]."""

    def __init__(self, adapters: Sequence[LoRAAdapter], key: ModuleKey) -> None:
        pairs = [adapter.pair(key) for adapter in adapters]
        ranks = [int(a.shape[0]) for a, _ in pairs]
        a_stack = _stack_padded([a for a, _ in pairs], ranks, rank_dim=0)  # [C, R, in]
        b_stack = _stack_padded([b for _, b in pairs], ranks, rank_dim=1)  # [C, out, R]
        self.a_t = a_stack.transpose(1, 2)
        self.b_t = b_stack.transpose(1, 2)
        scales = [adapter.scaling(key[0]) for adapter in adapters]
        self.scale = _constant(tuple(scales), a_stack.dtype, a_stack.device).view(-1, 1, 1)
        self.dropout = _shared_dropout(adapters)

    def __call__(self, x: Tensor) -> Tensor:
        a_t, b_t, scale = self.a_t, self.b_t, self.scale
        if a_t.dtype != x.dtype:  # fp32 factors over a bf16 base: the update runs in the base's dtype,
            a_t, b_t, scale = a_t.to(x.dtype), b_t.to(x.dtype), scale.to(x.dtype)  # as LoRAHost does
        xs = self.dropout(x.reshape(a_t.shape[0], -1, x.shape[-1]))
        update = torch.bmm(torch.bmm(xs, a_t), b_t) * scale
        return update.reshape(*x.shape[:-1], update.shape[-1])


def _shared_dropout(adapters: Sequence[LoRAAdapter]) -> nn.Module:
    """One LoRA dropout for the whole stack: the same p and mode for every client, or a refusal.

    With p > 0 the step is the same in distribution as the sequential one, not in value (the masks
    come from one draw over all clients instead of one per client, in client order).
    """
    probs = {
        (float(a.dropout.p), bool(a.dropout.training)) if isinstance(a.dropout, nn.Dropout) else (0.0, False)
        for a in adapters
    }
    if len(probs) > 1:
        raise ValueError(f"batched step needs one LoRA dropout for all clients; got (p, training) {probs}")
    p, training = probs.pop()
    if p == 0.0 or not training:
        return nn.Identity()
    return nn.Dropout(p)


@contextmanager
def batched_lora(backbone: SharedBackbone, models: Sequence[SplitClientModel]) -> Iterator[None]:
    """Lend the clients' stacked updates to every host for one forward pass, then take them back.

    The forward inside must feed the hosts the clients' rows client-major, in `models` order, with the
    same number of rows per client: that is what lets a host view its input as [C, rows * T, in].
    """
    busy = [key for key, host in backbone.hosts.items() if host.active is not None]
    if busy:
        raise RuntimeError(f"an adapter is already lent to hosts {busy[:3]}; batched step needs them free")
    try:
        for key, host in backbone.hosts.items():
            adapters = [m.client.adapter if key[0] < m.split else m.server.adapter for m in models]
            host.active = _HostUpdate(adapters, key)
        yield
    finally:
        for host in backbone.hosts.values():
            host.active = None


def _pad_id(backbone: SharedBackbone) -> int:
    pad = getattr(backbone.model.config, "pad_token_id", None)
    return int(pad) if isinstance(pad, int) else 0


def batched_split_step(
    models: Sequence[SplitClientModel],
    batches: Sequence[Mapping[str, Tensor]],
    class_weights: Sequence[Tensor | None] | None = None,
) -> BatchedStep:
    """Forward + backward of every client's step in one pass; gradients accumulate in each client's own
    parameters exactly as C sequential `split_step`s would put them there.
    """
    if not models or len(models) != len(batches):
        raise ValueError(f"need one batch per model; got {len(models)} models, {len(batches)} batches")
    weights = list(class_weights) if class_weights is not None else [None] * len(models)
    if len(weights) != len(models):
        raise ValueError(f"need one class-weight entry (or None) per model; got {len(weights)}")
    backbone = models[0].client.backbone
    if any(m.client.backbone is not backbone for m in models):
        raise ValueError("batched step needs every client on the same shared backbone")
    packed = _pack(batches, _pad_id(backbone))
    ops = backbone.ops
    with batched_lora(backbone, models):
        hidden = ops.embed(packed.input_ids, packed.attention_mask, packed.token_type_ids)
        ctx = ops.block_context(hidden, packed.attention_mask)
        for index in range(backbone.num_layers):
            hidden = ops.run_block(index, hidden, ctx)
        hidden = ops.finalize(hidden)
    width = hidden.shape[-1]
    hidden = hidden.reshape(len(models), packed.rows, -1, width)
    mask = packed.attention_mask.view(len(models), packed.rows, -1)
    losses: list[Tensor] = []
    traffic: list[SplitTraffic] = []
    for c, (model, batch, weight) in enumerate(zip(models, batches, weights)):
        n, t = packed.sizes[c]
        logits = model.server.head(hidden[c, :n, :t], mask[c, :n, :t])
        w = None if weight is None else weight.to(device=logits.device)
        losses.append(F.cross_entropy(logits, batch["labels"], weight=w))
        traffic.append(
            SplitTraffic(
                (n, t, width),
                hidden.dtype,
                tuple(batch["attention_mask"].shape),
                batch["attention_mask"].dtype,
                tuple(batch["labels"].shape),
                batch["labels"].dtype,
            )
        )
    torch.stack(losses).sum().backward()
    return BatchedStep([loss.detach() for loss in losses], traffic)


def trainable_bytes(model: nn.Module, optimizer_states: int = 2) -> int:
    """Persistent bytes one client adds: parameters + gradients + `optimizer_states` moments (AdamW: 2)."""
    params = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    return params * (2 + optimizer_states)
