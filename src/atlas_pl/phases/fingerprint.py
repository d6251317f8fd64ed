"""Phase 1, client side: gradient fingerprints, layer importance, and their compression (pure, no Lightning).

A client's fingerprint is the direction its data pulls the shared model in. Every client starts from the
same initial model, so two clients of the same task produce similar gradients and clients of different
tasks do not; the server clusters these directions to discover the tasks without seeing any data.

The gradient is taken w.r.t. the *frozen base* weights that LoRA targets (the weights inside every
`LoRAHost`), not w.r.t. the LoRA factors: with B = 0 at initialisation dL/dA is identically zero, while
dL/dW is the direction full fine-tuning would move each weight, which LoRA's low-rank dW = s B A then
approximates. The same backward passes give each block's layer importance (how much of the gradient
energy lands in that block), which Phase 2 uses to spend a rank budget where it matters.

Only a seeded Johnson-Lindenstrauss sketch of the fingerprint leaves the client (`sketch`), optionally
clipped and noised for differential privacy (`dp_sketch`). The projection matrix is regenerated chunk
by chunk from the shared seed on every client, so all clients use the identical matrix and nobody ever
holds the full D x dim matrix.
"""

from __future__ import annotations

import hashlib
import math
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from atlas_pl.models.split import SplitClientModel

DEFAULT_CHUNK_ROWS = 4096


@dataclass(frozen=True)
class FingerprintGrads:
    """What one client's fingerprint passes produce.

    `parts` are flat float32 tensors in a fixed order (blocks ascending, then module path, then head
    parameters), each L2-normalized on its own so that no single large tensor dominates the direction;
    `names` labels them. `importance` has one entry per block of the whole model and sums to 1.
    """

    parts: list[Tensor]
    names: list[str]
    importance: np.ndarray
    num_batches: int
    mean_loss: float

    @property
    def dim(self) -> int:
        """Length D of the (virtual) concatenated fingerprint vector."""
        return int(sum(p.numel() for p in self.parts))


def _l2_normalized(t: Tensor) -> Tensor:
    norm = torch.linalg.vector_norm(t)
    return t / norm if norm > 0 else t.clone()


def _class_weights(batches: Sequence[Mapping[str, Tensor]]) -> Tensor:
    """Per-label sample weights making each present class count equally over ALL fingerprint batches.

    Scaled so that, with balanced labels and equal batch sizes, each batch's weighted sum equals the
    plain batch-mean loss (the gradient scale, and so the importance, is unchanged in that case).
    """
    labels = torch.cat([b["labels"].reshape(-1).cpu() for b in batches])
    counts = torch.bincount(labels).to(torch.float64)
    present = int((counts > 0).sum())
    weight = torch.zeros_like(counts)
    weight[counts > 0] = len(batches) / (present * counts[counts > 0])
    return weight.to(torch.float32)


def client_gradients(
    model: SplitClientModel,
    batches: Iterable[Mapping[str, Tensor]],
    *,
    last_layers: int,
    include_head: bool,
    class_balanced: bool = False,
) -> FingerprintGrads:
    """Average gradients of the cross-entropy loss over `batches` w.r.t. the LoRA-target base weights.

    The base tensors are shared by every client, so their `requires_grad` is switched on only for the
    duration of this call (restored in `finally`) and gradients are taken with `torch.autograd.grad`,
    which never writes `.grad` on any tensor. Dropout is off (eval mode) so that identical clients give
    identical fingerprints; the model's previous train/eval state is restored afterwards.

    `include_head` adds the task head's parameters; only meaningful when every client's head has the same
    shape (same number of labels), which the caller knows and this function does not.

    `class_balanced` weights the loss so every class present in the client's fingerprint batches counts
    equally. Why: near the initial model the predictions are almost constant (p ~ c), and the plain mean
    gradient is dominated by (c - label share) x (the task's mean logit gradient), a term whose SIGN
    follows the client's label proportion. Two clients of one task with 45% and 55% positives (IID
    sampling noise), or any Dirichlet label skew, then get opposite fingerprints. Balancing removes the
    label share from that term, leaving what depends on the task's inputs and labelling rule.
    """
    backbone = model.client.backbone
    num_layers = backbone.num_layers
    if not 1 <= last_layers <= num_layers:
        raise ValueError(f"last_layers (fingerprint.layers) must be in 1..{num_layers}, got {last_layers}")
    batches = list(batches)
    if not batches:
        raise ValueError("client_gradients needs at least one batch")
    host_keys = sorted(backbone.hosts)
    base_weights = [backbone.hosts[key].base_weight for key in host_keys]
    head_named = list(model.server.head.named_parameters()) if include_head else []
    inputs = base_weights + [p for _, p in head_named]
    first_fp_block = num_layers - last_layers
    fp_index = [i for i, key in enumerate(host_keys) if key[0] >= first_fp_block]
    names = [f"b{host_keys[i][0]}.{host_keys[i][1]}.weight" for i in fp_index]
    names += [f"head.{n}" for n, _ in head_named]
    device = base_weights[0].device
    class_weight = _class_weights(batches).to(device) if class_balanced else None

    modes = [(m, m.training) for m in (*model.modules(), *backbone.model.modules())]
    grad_flags = [t.requires_grad for t in inputs]
    sums: list[Tensor] = [torch.zeros(t.shape, dtype=torch.float32, device=device) for t in inputs]
    block_energy = np.zeros(num_layers, dtype=np.float64)
    losses: list[float] = []
    try:
        model.eval()
        backbone.model.eval()
        for t in inputs:
            t.requires_grad_(True)
        with torch.enable_grad():
            for batch in batches:
                ids = batch["input_ids"].to(device)
                mask = batch["attention_mask"].to(device)
                types = batch.get("token_type_ids")
                labels = batch["labels"].to(device)
                logits = model(ids, mask, None if types is None else types.to(device)).float()
                if class_weight is None:
                    loss = F.cross_entropy(logits, labels)
                else:
                    loss = (F.cross_entropy(logits, labels, reduction="none") * class_weight[labels]).sum()
                if not torch.isfinite(loss):
                    raise ValueError(f"non-finite fingerprint loss {float(loss)} on batch {len(losses)}")
                grads = torch.autograd.grad(loss, inputs, allow_unused=True)
                for i, (acc, g) in enumerate(zip(sums, grads)):
                    if g is None:  # e.g. a head parameter the loss does not reach
                        continue
                    g = g.detach().float()
                    acc.add_(g)
                    if i < len(host_keys):
                        block_energy[host_keys[i][0]] += float(torch.sum(g * g))
                losses.append(float(loss.detach()))
    finally:
        for t, flag in zip(inputs, grad_flags):
            t.requires_grad_(flag)
        for module, training in modes:
            module.training = training
    if not np.all(np.isfinite(block_energy)):
        raise ValueError("non-finite gradient in fingerprint computation")
    count = len(batches)
    mean_energy = block_energy / count
    total = float(mean_energy.sum())
    # an all-zero gradient carries no preference between blocks: fall back to uniform importance
    importance = mean_energy / total if total > 0 else np.full(num_layers, 1.0 / num_layers)
    selected = [sums[i] for i in fp_index] + sums[len(host_keys) :]
    parts = [_l2_normalized(s / count).flatten() for s in selected]
    return FingerprintGrads(parts, names, importance, count, float(np.mean(losses)))


# -- compression: seeded JL sketch, computed on the client ---------------------------------------------


def chunk_seed(seed: int, index: int) -> int:
    """Seed of row-chunk `index` of the projection: a hash, so nearby (seed, index) are unrelated."""
    digest = hashlib.blake2b(f"atlas-jl/{int(seed)}/{int(index)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def projection_chunk(seed: int, index: int, rows: int, dim: int) -> Tensor:
    """Rows [index * chunk_rows, index * chunk_rows + rows) of the unscaled Gaussian projection, on CPU.

    Generated on the CPU from a fresh generator so every client (whatever its device) gets the same
    numbers.
    """
    gen = torch.Generator(device="cpu").manual_seed(chunk_seed(seed, index))
    return torch.randn((rows, dim), generator=gen, dtype=torch.float32)


def sketch(parts: Sequence[Tensor], *, dim: int, seed: int, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> Tensor:
    """JL projection y = R^T v / sqrt(dim) of v = concat(parts), R ~ N(0, 1)^{D x dim}, chunk by chunk.

    Row chunk c of R (rows [c * chunk_rows, (c + 1) * chunk_rows)) comes from a generator seeded by
    (seed, c), so the matrix is a function of (seed, dim, chunk_rows) only: every client must use the same
    three values (they come from the shared config). At most one chunk_rows x dim block is alive at a time
    and `parts` are never concatenated. E[||y||^2] = ||v||^2, and pairwise distances are preserved within
    the usual JL factor. Computed in float64 (exact to float32 output precision whatever D); the result
    is float32 on the device of `parts`.
    """
    return sketch_many([parts], dim=dim, seed=seed, chunk_rows=chunk_rows)[0]


def sketch_many(
    clients: Sequence[Sequence[Tensor]], *, dim: int, seed: int, chunk_rows: int = DEFAULT_CHUNK_ROWS
) -> list[Tensor]:
    """`sketch` of several clients' fingerprints, bitwise equal to calling it once per client.

    A simulation shortcut only: real clients each regenerate the shared matrix, but in one process
    generating every chunk once and applying it to each client (the same vector-matrix product `sketch`
    does) saves (n - 1) x D x dim Gaussian draws, which dominate Phase 1's time on CPU.
    """
    if dim < 1 or chunk_rows < 1:
        raise ValueError(f"sketch needs dim >= 1 and chunk_rows >= 1, got dim={dim}, chunk_rows={chunk_rows}")
    flats = [[p.detach().reshape(-1) for p in parts] for parts in clients]
    if not flats or any(not flat for flat in flats):
        raise ValueError("sketch needs at least one part per client")
    totals = {sum(p.numel() for p in flat) for flat in flats}
    if len(totals) != 1:
        raise ValueError(f"every client's fingerprint must have the same length, got {sorted(totals)}")
    total = totals.pop()
    outs = [torch.zeros(dim, dtype=torch.float64, device=flat[0].device) for flat in flats]
    cursors = [[0, 0] for _ in flats]  # (part, offset) inside each client's parts list
    for chunk in _chunks_ahead(seed, total, chunk_rows, dim):
        rows = chunk.shape[0]
        cache: dict[torch.device, Tensor] = {}
        for flat, cursor, out in zip(flats, cursors, outs):
            segment = _take(flat, cursor, rows)
            if out.device not in cache:
                cache[out.device] = chunk.to(device=out.device, dtype=torch.float64)
            out += segment.to(torch.float64) @ cache[out.device]
    return [(out / math.sqrt(dim)).to(torch.float32) for out in outs]


def _chunks_ahead(seed: int, total: int, chunk_rows: int, dim: int) -> Iterator[Tensor]:
    """The projection's row chunks in order, generated by a few threads a little ahead of their use.

    Drawing the Gaussians is most of a sketch's time on the CPU and each chunk has its own generator,
    so chunks can be drawn in parallel (torch releases the GIL) without changing a single number; at most
    2 x threads chunks are alive at once.
    """
    count = math.ceil(total / chunk_rows)
    workers = max(1, min(4, torch.get_num_threads()))

    def draw(index: int) -> Tensor:
        return projection_chunk(seed, index, min(chunk_rows, total - index * chunk_rows), dim)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: deque[Future[Tensor]] = deque()
        for index in range(count):
            pending.append(pool.submit(draw, index))
            if len(pending) > 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _take(flat: Sequence[Tensor], cursor: list[int], rows: int) -> Tensor:
    """The next `rows` entries of the virtual concatenation of `flat`, advancing `cursor` in place."""
    pieces = []
    need = rows
    while need > 0:
        part, offset = cursor
        take = min(need, flat[part].numel() - offset)
        pieces.append(flat[part][offset : offset + take])
        offset += take
        need -= take
        cursor[:] = [part + 1, 0] if offset == flat[part].numel() else [part, offset]
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces)


def raw_pca_vector(parts: Sequence[Tensor]) -> Tensor:
    """The full concatenated fingerprint: what `compression=raw_pca` sends (leaks the raw gradient)."""
    return torch.cat([p.detach().reshape(-1).float() for p in parts])


# -- differential privacy ---------------------------------------------------------------------------


def dp_sketch(s: Tensor, *, clip: float, noise_multiplier: float, generator: torch.Generator) -> Tensor:
    """Gaussian mechanism on a sketch: clip to L2 norm `clip` (C), then add N(0, (noise_multiplier * C)^2).

    Clipping bounds what one client's data can change in the released vector, which is what lets the
    noise scale translate into an (epsilon, delta) guarantee (`gaussian_epsilon`).
    """
    if clip <= 0:
        raise ValueError(f"DP clip norm must be positive, got {clip}")
    if noise_multiplier < 0:
        raise ValueError(f"DP noise multiplier must be >= 0, got {noise_multiplier}")
    s = s.detach().to(torch.float64)
    norm = float(torch.linalg.vector_norm(s))
    clipped = s * min(1.0, clip / norm) if norm > 0 else s.clone()
    noise = torch.randn(s.shape, generator=generator, dtype=torch.float64, device=generator.device)
    return (clipped + noise.to(s.device) * (noise_multiplier * clip)).to(torch.float32)


def gaussian_epsilon(noise_multiplier: float, delta: float) -> float:
    """epsilon of ONE release of a `dp_sketch` at this delta, by the classic Gaussian mechanism bound.

    Dwork & Roth (2014, Thm A.1): noise N(0, sigma^2 Delta^2) on a query of L2 sensitivity Delta gives
    (epsilon, delta)-DP with sigma = sqrt(2 ln(1.25 / delta)) / epsilon, i.e.
    epsilon = sqrt(2 ln(1.25 / delta)) / noise_multiplier. Assumptions, to be reported with the number:
    sensitivity Delta = C (the clip norm: add/remove neighbouring; replacing a client's whole data can move
    a clipped sketch by up to 2C, which doubles epsilon), a single release (re-clustering composes), and
    the theorem is only proven for epsilon < 1 — larger values are a heuristic indication, not a bound.
    """
    if not 0 < delta < 1:
        raise ValueError(f"DP delta must be in (0, 1), got {delta}")
    if noise_multiplier <= 0:
        return math.inf
    return math.sqrt(2.0 * math.log(1.25 / delta)) / noise_multiplier


# -- server side helpers on importance -----------------------------------------------------------------


def cluster_importance(importance: np.ndarray, labels: Sequence[int]) -> dict[int, np.ndarray]:
    """Mean layer importance of each cluster's clients: the profile Phase 2 allocates a cluster's ranks by.

    A mean of distributions that each sum to 1 sums to 1 again, so no renormalisation is needed.
    """
    imp = np.asarray(importance, dtype=np.float64)
    labels = [int(x) for x in labels]
    if imp.ndim != 2 or imp.shape[0] != len(labels):
        raise ValueError(
            f"importance must be [n_clients, n_blocks] with one label per client, got "
            f"shape {imp.shape} and {len(labels)} labels"
        )
    lab = np.asarray(labels)
    return {c: imp[lab == c].mean(axis=0) for c in sorted(set(labels))}
