"""Phase 2 allocator: a split point and per-block LoRA ranks for every client (pure, no Lightning).

The device budget is spent in two steps, each with a reason:

1. **Split point.** The client keeps the largest number of blocks s in [1, max_split] whose fixed cost
   (frozen base + activations + io, see `memory`) plus LoRA at `split_rank` on every kept block still
   fits the budget. Fixed cost grows by a whole block's weights and activations per block while LoRA
   grows by a few rank-sized vectors, so the split is what memory really limits: weaker devices keep
   fewer blocks, and every client keeps at least one (else it is infeasible: a named error, or a
   logged drop).
2. **Ranks** (DESIGN.md §4, budget-proportional, from HSplitLoRA): the adapter budget C is what is left
   after the fixed cost; r* is the largest candidate with sum over the client blocks of M(r*) <= C;
   the client's total rank budget B = L * r* is spread over all L blocks by its cluster's importance
   (r_l = the candidate nearest importance_l * B); then, while the client blocks exceed C, the least
   important client block above the minimum steps down one candidate.

B spans all L blocks, not only the s client blocks, because the importance profile is over the whole
model and the client's server-half adapter (SFL-V1) is aggregated like the client half: one profile per
client, whose level r* the device sets and whose shape its cluster sets. Uniform importance therefore
gives exactly r* on every block. Only the client blocks are bound by the device; server blocks are then
capped so that no block ever gets more rank than a more important one (the stepping in 4 keeps that
order among client blocks, the cap restores it across the split). Stepping strictly from the least
important block, as specified, can leave part of C unused: a less important block drops to the minimum
before a more important one gives up a single step (tests/phases/test_allocation.py shows a case).

`mode="uniform"` is the SplitLoRA baseline: one rank for every block of every client (the largest that
fits every client, or a given `uniform_rank`), so factor averaging needs no padding.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from atlas_pl.errors import AtlasError
from atlas_pl.phases.memory import (
    MemoryBreakdown,
    MemorySettings,
    ModelArch,
    client_memory,
    dtype_bytes,
    fixed_bytes,
    lora_bytes,
    rank_cost,
)

log = logging.getLogger(__name__)

DEFAULT_CANDIDATES: tuple[int, ...] = (4, 8, 16, 32, 64)
MODES = ("importance", "uniform")


class InfeasibleClientError(AtlasError, ValueError):
    """A client whose device cannot hold even one block (or the fixed split) at the minimum rank."""

    def __init__(
        self,
        client: Any,
        device: str,
        budget: int,
        memory: MemoryBreakdown,
        rank: int,
        split: int = 1,
        reserve: float = 0.0,
    ) -> None:
        self.client = client
        self.device = device
        self.budget = budget
        self.memory, self.rank, self.split = memory, rank, split
        self.required = memory.total
        self.shortfall = memory.total - budget
        blocks = "even 1 block" if split == 1 else f"{split} blocks"
        super().__init__(
            f"client {client} on device {device!r} cannot hold {blocks} at LoRA rank {rank}: its "
            f"client half needs {_fmt(memory.total)} (base {_fmt(memory.base)}, activations "
            f"{_fmt(memory.activations)}, io {_fmt(memory.io)}, adapter {_fmt(memory.adapter)}) but the "
            f"budget is {_fmt(budget)}, short by {_fmt(self.shortfall)}. Raise "
            f"devices.profiles.{device}.memory_gb, lower fed.batch_size or data.max_len, or set "
            "allocation.drop_infeasible=true to drop such clients."
            + (
                f" The budget is what allocation.host_reserve={reserve:g} leaves of the device for its own "
                "half (topology=p2p keeps the rest for hosting peers); a lower reserve also helps."
                if reserve
                else ""
            )
        )


def _fmt(n: int) -> str:
    return f"{n / 2**20:.2f} MiB ({n} bytes)"


@dataclass(frozen=True)
class ClientAllocation:
    """One client's Phase 2 result, as written to allocation.json (`to_json`).

    `ranks` covers every block (client half [0, split) and server half [split, L)); `memory` is the client
    half at those ranks. A dropped client has split 0, no ranks, and `memory` at split 1 and the minimum
    rank, which is what it would have needed (`shortfall_bytes` more than its budget).
    """

    client: Any
    device: str
    budget_bytes: int
    split: int
    ranks: dict[int, int]
    rank_star: int  # r*: the largest uniform candidate the client blocks fit
    rank_budget: int  # B = L * r*, what the importance profile distributes
    memory: MemoryBreakdown
    adapter_bytes: int  # client-half LoRA parameters: what the client uploads at aggregation
    server_adapter_bytes: int  # the server-half adapter kept for this client
    dropped: bool = False
    shortfall_bytes: int = 0
    importance: tuple[float, ...] = field(default=(), repr=False)

    @property
    def client_ranks(self) -> list[int]:
        return [self.ranks[b] for b in range(self.split)]

    def to_json(self) -> dict[str, Any]:
        return {
            "client": self.client,
            "device": self.device,
            "budget_bytes": self.budget_bytes,
            "split": self.split,
            "ranks": [self.ranks[b] for b in sorted(self.ranks)],
            "rank_star": self.rank_star,
            "rank_budget": self.rank_budget,
            "memory": self.memory.to_json(),
            "adapter_bytes": self.adapter_bytes,
            "server_adapter_bytes": self.server_adapter_bytes,
            "dropped": self.dropped,
            "shortfall_bytes": self.shortfall_bytes,
            "importance": list(self.importance),
        }

    @classmethod
    def from_json(cls, payload: Mapping[str, Any]) -> ClientAllocation:
        """The inverse of `to_json` (a resumed job re-applies the allocation it was started with)."""
        memory_fields = MemoryBreakdown.__dataclass_fields__
        return cls(
            client=payload["client"],
            device=str(payload["device"]),
            budget_bytes=int(payload["budget_bytes"]),
            split=int(payload["split"]),
            ranks={b: int(r) for b, r in enumerate(payload["ranks"])},
            rank_star=int(payload["rank_star"]),
            rank_budget=int(payload["rank_budget"]),
            memory=MemoryBreakdown(**{k: int(v) for k, v in payload["memory"].items() if k in memory_fields}),
            adapter_bytes=int(payload["adapter_bytes"]),
            server_adapter_bytes=int(payload["server_adapter_bytes"]),
            dropped=bool(payload["dropped"]),
            shortfall_bytes=int(payload["shortfall_bytes"]),
            importance=tuple(float(v) for v in payload["importance"]),
        )


def rank_candidates(candidates: Sequence[int] | None) -> tuple[int, ...]:
    """Sorted distinct positive candidates (the default set when None); a clear error otherwise."""
    if candidates is None:
        return DEFAULT_CANDIDATES
    values = list(candidates)
    if not values or not all(
        isinstance(c, (int, np.integer)) and not isinstance(c, bool) and c > 0 for c in values
    ):
        raise ValueError(f"allocation.rank_candidates={values}; valid: a non-empty list of positive integers")
    return tuple(sorted({int(c) for c in values}))


def normalized_importance(importance: Any, num_layers: int) -> np.ndarray:
    """Importance over the L blocks, summing to 1; all-zero means no preference (uniform)."""
    imp = np.asarray(importance, dtype=np.float64).reshape(-1)
    if imp.shape != (num_layers,):
        raise ValueError(f"importance has {imp.size} entries; the model has {num_layers} blocks")
    if not np.all(np.isfinite(imp)) or np.any(imp < 0):
        raise ValueError(f"importance must be finite and non-negative, got {imp.tolist()}")
    total = imp.sum()
    return imp / total if total > 0 else np.full(num_layers, 1.0 / num_layers)


def nearest_candidate(value: float, candidates: Sequence[int]) -> int:
    """The candidate closest to `value`; a tie goes to the smaller (the cheaper) one."""
    return min(candidates, key=lambda c: (abs(c - value), c))


def choose_split(
    arch: ModelArch,
    settings: MemorySettings,
    budget: int,
    *,
    max_split: int,
    split_rank: int,
    min_rank: int,
) -> int:
    """Largest s in [1, max_split] that fits the budget with `split_rank` on every kept block.

    Falls back to s = 1 at `min_rank` when not even one block fits at `split_rank`; returns 0 when the
    client cannot hold one block at all. Feasibility is monotone in s, so the first fit from the top wins.
    """
    for s in range(max_split, 0, -1):
        if fixed_bytes(arch, s, settings) + s * rank_cost(arch, split_rank, settings) <= budget:
            return s
    return 1 if fixed_bytes(arch, 1, settings) + rank_cost(arch, min_rank, settings) <= budget else 0


def importance_ranks(
    importance: np.ndarray,
    split: int,
    capacity: int,
    costs: Mapping[int, int],
    candidates: Sequence[int],
) -> tuple[dict[int, int], int, int]:
    """Budget-proportional per-block ranks (DESIGN.md §4, steps 2-4); returns (ranks, r*, B).

    `importance` is normalized over all L blocks, `capacity` the adapter budget C of the client blocks
    [0, split), `costs[c]` the bytes one client block costs at candidate rank c. The caller has checked
    that the minimum candidate fits.
    """
    num_layers = importance.shape[0]
    fitting = [c for c in candidates if split * costs[c] <= capacity]
    r_star = fitting[-1] if fitting else candidates[0]
    budget_b = num_layers * r_star
    position = {c: k for k, c in enumerate(candidates)}
    ranks = {b: nearest_candidate(float(importance[b]) * budget_b, candidates) for b in range(num_layers)}

    def used() -> int:
        return sum(costs[ranks[b]] for b in range(split))

    # least important first; among equals the later block (further from the data) gives way first
    order = sorted(range(split), key=lambda b: (importance[b], -b))
    while used() > capacity:
        step = next((b for b in order if ranks[b] > candidates[0]), None)
        if step is None:  # every client block at the minimum and still too much: caller's check failed
            raise RuntimeError("minimum ranks exceed the adapter budget; check feasibility first")
        ranks[step] = candidates[position[ranks[step]] - 1]

    # server blocks: never more rank than a more important client block (restores the order the
    # client-side stepping may have broken across the split)
    for b in range(split, num_layers):
        above = [ranks[c] for c in range(split) if importance[c] > importance[b]]
        if above:
            ranks[b] = min(ranks[b], min(above))
    return ranks, r_star, budget_b


def allocate(
    arch: ModelArch,
    devices: Sequence[str],
    budgets: Mapping[str, int],
    settings: MemorySettings,
    importance: Sequence[Any] | np.ndarray | None = None,
    *,
    candidates: Sequence[int] | None = None,
    mode: str = "importance",
    uniform_rank: int | None = None,
    split: int | None = None,
    max_split: int | None = None,
    split_rank: int | None = None,
    drop_infeasible: bool = False,
    client_ids: Sequence[Any] | None = None,
) -> list[ClientAllocation]:
    """Split point and ranks for every client, in client order.

    devices      the device profile name of each client; `budgets` maps each name to bytes.
    importance   per client, over all L blocks: the importance of the client's cluster (Phase 1).
                 None means uniform (no preference between blocks).
    mode         "importance" (budget-proportional ranks) or "uniform" (SplitLoRA: one rank for all).
    uniform_rank in uniform mode, the rank to use (the split then shrinks until it fits); None = the
                 largest candidate every client fits.
    split        a fixed split point for every client (SplitLoRA-style); None = chosen per device.
    max_split    the most blocks a client may keep (default L - 1: the server keeps at least one).
    split_rank   the rank every kept block must still afford when the split is chosen (default: the
                 minimum candidate, i.e. keep as many blocks as fit).
    Raises InfeasibleClientError naming client, device and shortfall, unless `drop_infeasible`, in which
    case the client is logged and returned with `dropped=True`.
    """
    if mode not in MODES:
        raise ValueError(f"allocation.mode={mode!r}; valid: {', '.join(MODES)}")
    cands = rank_candidates(candidates)
    num_layers = arch.num_layers
    if num_layers < 2:
        raise ValueError(f"a split model needs at least 2 blocks, {arch.family} has {num_layers}")
    ids = list(client_ids) if client_ids is not None else list(range(len(devices)))
    if len(ids) != len(devices):
        raise ValueError(f"{len(ids)} client ids for {len(devices)} clients")
    missing = sorted({d for d in devices if d not in budgets})
    if missing:
        raise ValueError(f"no memory budget for device(s) {missing}; profiles: {sorted(budgets)}")
    limit = num_layers - 1 if max_split is None else int(max_split)
    if not 1 <= limit <= num_layers - 1:
        raise ValueError(f"max_split={max_split} out of range; valid: 1..{num_layers - 1}")
    if split is not None and not 1 <= split <= num_layers - 1:
        raise ValueError(f"split point {split} out of range; valid: 1..{num_layers - 1}")
    if uniform_rank is not None and (mode != "uniform" or uniform_rank <= 0):
        raise ValueError(f"uniform_rank={uniform_rank} needs mode='uniform' and a positive rank")
    if importance is None:
        profiles = [np.full(num_layers, 1.0 / num_layers)] * len(devices)
    else:
        if len(importance) != len(devices):
            raise ValueError(f"{len(importance)} importance profiles for {len(devices)} clients")
        profiles = [normalized_importance(imp, num_layers) for imp in importance]

    min_rank = cands[0] if uniform_rank is None else int(uniform_rank)
    floor_rank = min_rank if split_rank is None else max(int(split_rank), min_rank)
    costs = {c: rank_cost(arch, c, settings) for c in {*cands, min_rank, floor_rank}}

    plans: list[tuple[int, dict[int, int], int, int] | None] = []
    dropped: list[ClientAllocation | None] = []
    for cid, device, imp in zip(ids, devices, profiles):
        budget = int(budgets[device])
        if split is None:
            s = choose_split(
                arch, settings, budget, max_split=limit, split_rank=floor_rank, min_rank=min_rank
            )
        else:
            s = split if fixed_bytes(arch, split, settings) + split * costs[min_rank] <= budget else 0
        if s == 0:
            dropped.append(
                _infeasible(arch, settings, cid, device, budget, split or 1, min_rank, drop_infeasible)
            )
            plans.append(None)
            continue
        capacity = budget - fixed_bytes(arch, s, settings)
        if mode == "uniform":
            fit = [c for c in cands if s * costs[c] <= capacity]
            r_star = int(uniform_rank) if uniform_rank is not None else fit[-1]
            plans.append((s, {}, r_star, num_layers * r_star))
        else:
            ranks, r_star, budget_b = importance_ranks(imp, s, capacity, costs, cands)
            plans.append((s, ranks, r_star, budget_b))
        dropped.append(None)

    if mode == "uniform":
        kept = [p[2] for p in plans if p is not None]
        level = min(kept) if kept else min_rank
        plans = [
            None if p is None else (p[0], dict.fromkeys(range(num_layers), level), p[2], num_layers * level)
            for p in plans
        ]

    out: list[ClientAllocation] = []
    size = dtype_bytes(settings.lora_dtype)
    for cid, device, imp, plan, drop in zip(ids, devices, profiles, plans, dropped):
        if plan is None:
            assert drop is not None
            out.append(drop)
            continue
        s, ranks, r_star, budget_b = plan
        memory = client_memory(arch, s, ranks, settings)
        budget = int(budgets[device])
        if memory.total > budget:  # cannot happen by construction; a guard against future edits
            raise RuntimeError(f"allocation of client {cid} exceeds its budget: {memory.total} > {budget}")
        server = lora_bytes(arch, ranks, range(s, num_layers), settings.lora_dtype)
        out.append(
            ClientAllocation(
                client=cid,
                device=device,
                budget_bytes=budget,
                split=s,
                ranks=ranks,
                rank_star=r_star,
                rank_budget=budget_b,
                memory=memory,
                adapter_bytes=memory.lora_params,
                server_adapter_bytes=server.params * size,
                importance=tuple(float(x) for x in imp),
            )
        )
    return out


def _infeasible(
    arch: ModelArch,
    settings: MemorySettings,
    cid: Any,
    device: str,
    budget: int,
    split: int,
    rank: int,
    drop: bool,
) -> ClientAllocation:
    memory = client_memory(arch, split, dict.fromkeys(range(split), rank), settings)
    error = InfeasibleClientError(cid, device, budget, memory, rank, split)
    if not drop:
        raise error
    log.warning("dropping client %s: %s", cid, error)
    return ClientAllocation(
        client=cid,
        device=device,
        budget_bytes=budget,
        split=0,
        ranks={},
        rank_star=0,
        rank_budget=0,
        memory=memory,
        adapter_bytes=0,
        server_adapter_bytes=0,
        dropped=True,
        shortfall_bytes=error.shortfall,
    )
