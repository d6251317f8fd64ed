"""Peer-to-peer pairing: which peer devices run each client's server half (pure functions, no Lightning).

Under `topology=server` one coordinator runs every client's blocks [s_k, L) and head. The base
specification wants no device to host the entire model and no central party to host layers: each
client's server half runs instead on a *route* of peers, contiguous segments [a, b) of blocks on
devices of its own cluster (the peers that hold the same task, so a segment's adapters stay within the
group that aggregates them). This module decides the routes from what Phase 2 already knows: the
memory model prices every segment (base blocks, adapters with gradients and AdamW state, activations of
the owner's batch, the boundary tensors) and every device's own client half; device speeds turn each
segment's FLOPs into seconds, so the choice balances the simulated round time.

The rules, in order of precedence:
1. every device's memory (own half + every hosted segment) stays within its budget;
2. no device holds all L blocks (its own half and hosted segments together): each leaves one block of
   [its split, L) to others (`missing_blocks`), or segments are checked as they are placed; four
   strategies are tried in turn, the last an exhaustive search for small federations (`plan_pairing`);
3. a client never hosts its own server half (its raw data and its activations stay apart by design);
4. peers of the same cluster first; a client that no same-cluster peer can host falls back to peers of
   other clusters, then to the server when `server_fallback` allows it; otherwise an error names the
   cluster, the devices and the shortfall;
5. segment by segment from the client's split: a peer that can take the whole remainder, else the one
   that takes the most blocks (fewer hops: less traffic); among equals, the one whose simulated busy
   time ends lowest. Other clusters' peers only for a segment no same-cluster peer can take.
Clients are placed longest server half first, the classic longest-processing-time order for balance.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from atlas_pl.errors import AtlasError
from atlas_pl.phases.memory import (
    MemorySettings,
    ModelArch,
    _block_activation_elems,
    dtype_bytes,
    lora_activation_bytes,
    lora_bytes,
)

SERVER = "server"  # the host of last resort (topology.server_fallback=true)


class PairingError(AtlasError, ValueError):
    """No pairing exists for a cluster: names the cluster, its devices and the shortfall."""


@dataclass(frozen=True)
class PeerClient:
    """What pairing needs of one client: its device and cluster, Phase 2's split and ranks, its work."""

    index: int
    device: str  # profile name
    cluster: int
    split: int
    ranks: Mapping[int, int]  # every block, client and server half
    own_bytes: int  # its client half, as Phase 2 priced it (MemoryBreakdown.total)
    head_params: int  # elements of its task head (the last segment carries it)
    steps: int  # training steps per round (sets the segment's work)


@dataclass(frozen=True)
class Segment:
    """Blocks [start, stop) of one client's server half on one host (a client index, or SERVER)."""

    host: int | str
    start: int
    stop: int
    head: bool
    bytes: int
    flops: float  # per round


@dataclass
class Route:
    client: int
    segments: list[Segment] = field(default_factory=list)
    fallback: str | None = None  # None | "other_cluster" | "server"

    @property
    def hosts(self) -> list[int | str]:
        return [s.host for s in self.segments]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Route:
        """The route `to_json` wrote (a checkpoint's)."""
        segments = [
            Segment(
                s["host"] if isinstance(s["host"], str) else int(s["host"]),
                int(s["blocks"][0]),
                int(s["blocks"][1]),
                bool(s["head"]),
                int(s["bytes"]),
                float(s["flops"]),
            )
            for s in data["segments"]
        ]
        return cls(int(data["client"]), segments, data.get("fallback"))

    def to_json(self) -> dict[str, Any]:
        return {
            "client": self.client,
            "fallback": self.fallback,
            "segments": [
                {
                    "host": s.host,
                    "blocks": [s.start, s.stop],
                    "head": s.head,
                    "bytes": s.bytes,
                    "flops": s.flops,
                }
                for s in self.segments
            ],
        }


# -- prices ----------------------------------------------------------------------------------------------
def block_flops(arch: ModelArch, settings: MemorySettings) -> float:
    """FLOPs of one block in a split training step: forward (2 per weight per token) and the backward to
    the block's input (2 more); the frozen weights take no gradient and the LoRA terms are negligible."""
    return 4.0 * settings.tokens * (sum(arch.block_params) / arch.num_layers)


def segment_bytes(
    arch: ModelArch,
    start: int,
    stop: int,
    ranks: Mapping[int, int],
    settings: MemorySettings,
    *,
    head_params: int,
    with_base: bool,
) -> int:
    """Memory a host needs for blocks [start, stop) of one client's server half.

    Adapters (parameters, gradients, AdamW state) at the client's ranks; what autograd keeps for the
    owner's batch (every block here has an input that requires grad, as in the server half today); the
    boundary tensors (h in and g out, plus h out and g in when the route goes on); the head and its
    optimizer when the segment ends the model. The frozen base blocks only when `with_base`: a device
    keeps one copy of each base block however many segments it runs.
    """
    if not 0 < start < stop <= arch.num_layers:
        raise ValueError(f"segment [{start}, {stop}) invalid for {arch.num_layers} blocks")
    blocks = range(start, stop)
    state = lora_bytes(arch, ranks, blocks, settings.lora_dtype)
    size_base, size_lora = dtype_bytes(settings.base_dtype), dtype_bytes(settings.lora_dtype)
    base_e, fp32_e, lora_e = _block_activation_elems(arch, settings, first=False)
    activations = len(blocks) * (base_e * size_base + fp32_e * 4 + lora_e * size_lora)
    activations += sum(lora_activation_bytes(arch, int(ranks[b]), settings) for b in blocks)
    if settings.attention == "sdpa":
        activations += settings.batch_size * settings.seq_len**2 * size_base  # the additive mask
    last = stop == arch.num_layers
    boundary = (2 if last else 4) * settings.tokens * arch.hidden * size_base + 8 * settings.tokens
    head = head_params * (4 + 4 + 8) if last else 0  # fp32 parameters, gradients, two AdamW moments
    base = sum(arch.block_params[start:stop]) * size_base if with_base else 0
    return state.param_bytes + state.grad_bytes + state.optimizer_bytes + activations + boundary + head + base


def own_half_flops(client: PeerClient, per_block: float) -> float:
    """FLOPs per round of a client's own blocks [0, split) on its own device."""
    return client.split * per_block * client.steps


# -- the search ------------------------------------------------------------------------------------------
@dataclass
class _Host:
    """A device's running account while routes are placed."""

    index: int
    device: str
    cluster: int
    budget: int
    speed: float  # FLOP/s
    used: int  # bytes: its own client half, then hosted segments
    blocks: set[int]  # base blocks held (own [0, split) and hosted)
    busy: float  # simulated seconds of work per round
    missing: int | None  # the block this device never holds; None: checked as segments are placed
    priority: float | None = None  # pairing=random: the host's random rank (clusters and load ignored)


@dataclass(frozen=True)
class Pairing:
    routes: list[Route]
    strategy: str  # how each device's missing block was chosen (`missing_blocks`)
    missing: dict[int, int | None]


STRATEGIES = ("cluster", "global", "dynamic", "search")
POLICIES = ("cluster", "random")  # pairing.name: the rules above, or random feasible peers (ablation)


def pair(
    arch: ModelArch,
    clients: Sequence[PeerClient],
    budgets: Mapping[str, int],
    speeds: Mapping[str, float],
    settings: MemorySettings,
    *,
    server_fallback: bool = False,
    policy: str = "cluster",
    seed: int = 0,
) -> Pairing:
    """One route per client (in client order) under the rules of the module docstring, with the
    strategy that made them: each of `STRATEGIES` is tried (all pure and deterministic); the one that
    leaves the fewest routes outside their cluster wins, ties to the earlier. The server is asked only
    when no strategy pairs everyone with peers. `policy="random"` (the ablation of rule 4-5) picks
    among the feasible peers of any cluster by a seeded random rank, never searching."""
    found: list[tuple[int, int, Pairing]] = []
    first_error: PairingError | None = None
    for order, strategy in enumerate(STRATEGIES):
        if policy == "random" and strategy == "search":
            continue
        missing = missing_blocks(arch, clients, strategy)
        hosts = _hosts(arch, clients, budgets, speeds, settings, missing, _priorities(policy, seed, clients))
        try:
            if strategy == "search":
                routes = _search(arch, clients, hosts, settings)
            else:
                routes = _pair_with(arch, clients, hosts, settings, server_fallback=False)
        except PairingError as err:
            first_error = first_error or err
            continue
        off = sum(r.fallback is not None for r in routes)
        found.append((off, order, Pairing(routes, strategy, missing)))
    if found:
        return min(found, key=lambda f: f[:2])[2]
    if not server_fallback:
        assert first_error is not None
        raise first_error
    missing = missing_blocks(arch, clients, STRATEGIES[0])
    hosts = _hosts(arch, clients, budgets, speeds, settings, missing, _priorities(policy, seed, clients))
    return Pairing(_pair_with(arch, clients, hosts, settings, server_fallback=True), STRATEGIES[0], missing)


@dataclass(frozen=True)
class Repair:
    """A round's routes after re-pairing around unavailable devices."""

    routes: dict[int, Route]  # every client of `needing` with a route this round (kept or new)
    moved: dict[int, str]  # re-paired clients: "cluster" | "other_cluster" | "server"
    unplaced: dict[int, str]  # clients no device can host this round, with the reason


def repair(
    arch: ModelArch,
    clients: Sequence[PeerClient],
    routes: Mapping[int, Route],
    missing: Mapping[int, int | None],
    budgets: Mapping[str, int],
    speeds: Mapping[str, float],
    settings: MemorySettings,
    *,
    unavailable: set[int],
    needing: Sequence[int],
    server_fallback: bool,
    policy: str = "cluster",
    seed: int = 0,
) -> Repair:
    """Routes for the clients in `needing` (those that train this round) when the devices in
    `unavailable` host nothing (absent, or too slow).

    A client's route in `routes` that avoids them stays as it is (moving a half costs bytes) and is
    charged first; every other client of `needing` is placed again by the rules of `pair` over the
    remaining devices: same cluster first (a re-pairing), then other clusters' peers, then the server
    if allowed; a client nobody can host is `unplaced` with the reason (it sits the round out). Each
    device keeps the block it leaves to others (`missing`), so no device ends up with all L blocks.
    Clients outside `needing` are not placed and not charged: their halves wait where they are."""
    available = [c for c in clients if c.index not in unavailable]
    hosts = _hosts(arch, available, budgets, speeds, settings, missing, _priorities(policy, seed, clients))
    by_index = {c.index: c for c in clients}
    kept = {
        k: routes[k]
        for k in needing
        if k in routes and all(h == SERVER or int(h) in hosts for h in routes[k].hosts)
    }
    for k, route in kept.items():
        _recharge(arch, by_index[k], route, hosts, settings)
    broken = [by_index[k] for k in needing if k not in kept]
    per_block = block_flops(arch, settings)
    out, moved, unplaced = dict(kept), {}, {}
    for client in _placement_order(arch, broken):
        try:
            route = _route(arch, client, hosts, settings, per_block, server_fallback)
        except PairingError as err:
            unplaced[client.index] = str(err)
            continue
        out[client.index] = route
        moved[client.index] = route.fallback or "cluster"
    return Repair(out, moved, unplaced)


def _recharge(
    arch: ModelArch, client: PeerClient, route: Route, hosts: Mapping[int, _Host], settings: MemorySettings
) -> None:
    """Book a kept route on its hosts again, its base blocks priced against what they hold now."""
    for segment in route.segments:
        if segment.host == SERVER:
            continue
        host = hosts[int(segment.host)]
        host.used += _cost(arch, client, host, segment.start, segment.stop, settings)
        host.blocks.update(range(segment.start, segment.stop))
        host.busy += segment.flops / host.speed


def _pair_with(
    arch: ModelArch,
    clients: Sequence[PeerClient],
    hosts: dict[int, _Host],
    settings: MemorySettings,
    *,
    server_fallback: bool,
) -> list[Route]:
    """The greedy placement, client by client in `_placement_order`, charging `hosts` as it goes."""
    per_block = block_flops(arch, settings)
    routes: dict[int, Route] = {}
    for client in _placement_order(arch, clients):
        routes[client.index] = _route(arch, client, hosts, settings, per_block, server_fallback)
    return [routes[c.index] for c in clients]


def _placement_order(arch: ModelArch, clients: Sequence[PeerClient]) -> list[PeerClient]:
    """Longest server half (in work per round) first: the classic order for balancing the load."""
    return sorted(clients, key=lambda c: (-(arch.num_layers - c.split) * c.steps, c.index))


def _hosts(
    arch: ModelArch,
    clients: Sequence[PeerClient],
    budgets: Mapping[str, int],
    speeds: Mapping[str, float],
    settings: MemorySettings,
    missing: Mapping[int, int | None],
    priorities: Mapping[int, float] | None = None,
) -> dict[int, _Host]:
    per_block = block_flops(arch, settings)
    return {
        c.index: _Host(
            c.index,
            c.device,
            c.cluster,
            int(budgets[c.device]),
            float(speeds[c.device]),
            c.own_bytes,
            set(range(c.split)),
            own_half_flops(c, per_block) / float(speeds[c.device]),
            missing[c.index],
            None if priorities is None else priorities[c.index],
        )
        for c in clients
    }


def _priorities(policy: str, seed: int, clients: Sequence[PeerClient]) -> dict[int, float] | None:
    """pairing=random: one seeded random rank per device (None under the cluster rules)."""
    if policy not in POLICIES:
        raise ValueError(f"pairing policy {policy!r} unknown; valid: {', '.join(POLICIES)}")
    if policy == "cluster":
        return None
    rng = random.Random(f"pairing/{seed}")
    return {c.index: rng.random() for c in sorted(clients, key=lambda c: c.index)}


# the exhaustive fallback: at most this many clients, hops per route and placements tried
SEARCH_CLIENTS = 48
SEARCH_HOPS = 3
SEARCH_NODES = 20_000


def _search(
    arch: ModelArch, clients: Sequence[PeerClient], hosts: dict[int, _Host], settings: MemorySettings
) -> list[Route]:
    """Depth-first over each client's possible routes (same-cluster ones first), undoing a placement
    that leaves a later client without one: finds the pairings the greedy rules miss (splits (2, 2, 4)
    of 6 in one cluster), for federations small enough to search (`SEARCH_CLIENTS`, `SEARCH_NODES`)."""
    if len(clients) > SEARCH_CLIENTS:
        raise PairingError(f"no exhaustive pairing search over {len(clients)} > {SEARCH_CLIENTS} clients")
    order = _placement_order(arch, clients)
    per_block = block_flops(arch, settings)
    left = [SEARCH_NODES]

    def place(i: int, state: dict[int, _Host]) -> dict[int, Route] | None:
        if i == len(order):
            return {}
        left[0] -= 1
        if left[0] < 0:
            return None
        client = order[i]
        for segments in _all_routes(arch, client, state, settings, per_block):
            after = {k: replace(h, blocks=set(h.blocks)) for k, h in state.items()}
            route = _charge(client, segments, after)
            rest = place(i + 1, after)
            if rest is not None:
                rest[client.index] = route
                return rest
        return None

    found = place(0, hosts)
    if found is None:
        raise PairingError(f"no pairing found within {SEARCH_NODES} placements")
    return [found[c.index] for c in clients]


def _all_routes(
    arch: ModelArch,
    client: PeerClient,
    hosts: Mapping[int, _Host],
    settings: MemorySettings,
    per_block: float,
) -> list[list[Segment]]:
    """Every route of at most `SEARCH_HOPS` feasible segments for `client` given the hosts' state: the
    fewest other-cluster hops first, then the fewest hops, then the earliest finishing busiest host."""
    last = arch.num_layers
    peers = [h for h in hosts.values() if h.index != client.index]
    out: list[list[Segment]] = []

    def extend(start: int, segments: list[Segment]) -> None:
        if start == last:
            out.append(list(segments))
            return
        if len(segments) == SEARCH_HOPS:
            return
        for host in peers:
            if any(s.host == host.index for s in segments):
                continue
            for stop in range(start + 1, _longest_fit(arch, client, host, start, settings) + 1):
                size = _cost(arch, client, host, start, stop, settings)
                flops = (stop - start) * per_block * client.steps
                segments.append(Segment(host.index, start, stop, stop == last, size, flops))
                extend(stop, segments)
                segments.pop()

    extend(client.split, [])

    def key(segments: list[Segment]) -> tuple[int, int, float]:
        off = sum(hosts[int(s.host)].cluster != client.cluster for s in segments)
        finish = max(hosts[int(s.host)].busy + s.flops / hosts[int(s.host)].speed for s in segments)
        return off, len(segments), finish

    return sorted(out, key=key)


def _route(
    arch: ModelArch,
    client: PeerClient,
    hosts: Mapping[int, _Host],
    settings: MemorySettings,
    per_block: float,
    server_fallback: bool,
) -> Route:
    peers = [h for h in hosts.values() if h.index != client.index]
    same = [h for h in peers if h.cluster == client.cluster]
    other = [h for h in peers if h.cluster != client.cluster]
    tiers = (peers,) if any(h.priority is not None for h in peers) else (same, other)
    segments, stuck = _place(arch, client, tiers, settings, per_block)
    if stuck is None:
        return _charge(client, segments, hosts)
    if server_fallback:
        flops = (arch.num_layers - client.split) * per_block * client.steps
        whole = Segment(SERVER, client.split, arch.num_layers, True, 0, flops)
        return Route(client.index, [whole], "server")
    raise _no_pairing(arch, client, peers, settings, stuck)


def _charge(client: PeerClient, segments: list[Segment], hosts: Mapping[int, _Host]) -> Route:
    """Book the segments on their hosts (memory, base blocks, busy time) and name the route's kind."""
    for segment in segments:
        host = hosts[int(segment.host)]
        host.used += segment.bytes
        host.blocks.update(range(segment.start, segment.stop))
        host.busy += segment.flops / host.speed
    off = any(hosts[int(s.host)].cluster != client.cluster for s in segments)
    return Route(client.index, segments, "other_cluster" if off else None)


def _place(
    arch: ModelArch,
    client: PeerClient,
    tiers: Sequence[Sequence[_Host]],
    settings: MemorySettings,
    per_block: float,
) -> tuple[list[Segment], int | None]:
    """Segments covering [split, L), each from the first tier of hosts that can take a block there
    (tentatively: the caller charges the accounts), and the block no host can take (None: covered).

    A host runs at most one segment of a route. Since a host keeps its own blocks [0, s_h), it can end
    the route only if s_h < the segment's start (else it would hold all L blocks): with equal splits in
    a cluster every route takes at least two hops.
    """
    last = arch.num_layers
    start, segments = client.split, list[Segment]()
    while start < last:
        best = None
        for tier in tiers:
            best = _best_segment(arch, client, tier, segments, start, settings, per_block)
            if best is not None:
                break
        if best is None:
            return segments, start
        segments.append(best)
        start = best.stop
    return segments, None


def _best_segment(
    arch: ModelArch,
    client: PeerClient,
    candidates: Sequence[_Host],
    taken: Sequence[Segment],
    start: int,
    settings: MemorySettings,
    per_block: float,
) -> Segment | None:
    """The whole remainder on the host that finishes it earliest, else the longest piece (fewest hops),
    ties to the earliest finish."""
    last = arch.num_layers
    best: tuple[tuple[float, ...], Segment] | None = None
    for host in candidates:
        if any(s.host == host.index for s in taken):
            continue
        stop = _longest_fit(arch, client, host, start, settings)
        if stop <= start:
            continue
        flops = (stop - start) * per_block * client.steps
        finish = host.busy + flops / host.speed
        if host.priority is not None:  # pairing=random: any host that fits, by its random rank
            key: tuple[float, ...] = (host.priority, host.index)
        else:
            key = (0.0 if stop == last else 1.0, -(stop - start), finish, host.index)
        if best is None or key < best[0]:
            size = _cost(arch, client, host, start, stop, settings)
            best = (key, Segment(host.index, start, stop, stop == last, size, flops))
    return None if best is None else best[1]


def _cost(
    arch: ModelArch,
    client: PeerClient,
    host: _Host,
    start: int,
    stop: int,
    settings: MemorySettings,
) -> int:
    """Bytes [start, stop) adds to `host`: the segment, plus the base blocks it does not hold yet."""
    new_blocks = set(range(start, stop)) - host.blocks
    size = segment_bytes(
        arch, start, stop, client.ranks, settings, head_params=client.head_params, with_base=False
    )
    return size + sum(arch.block_params[b] for b in new_blocks) * dtype_bytes(settings.base_dtype)


def missing_blocks(
    arch: ModelArch, clients: Sequence[PeerClient], strategy: str = "cluster"
) -> dict[int, int | None]:
    """The one block each device leaves to others (`cluster`, `global`), or None (`dynamic`, `search`).

    Placing segments greedily and only checking "not all L blocks" (`dynamic`) lets the first routes
    make every peer a holder of the same tail, after which later routes find no host for it (3 clients
    of equal split in a cluster: the third route had to leave the cluster). Fixing beforehand which
    block a device never takes, from the last block down within [s_h, L), spread over each cluster's
    members (`cluster`) or over all devices in index order (`global`: clusters of one, as local_only
    has, would otherwise all leave the last block), keeps for every block some peers that may take it.
    No one rule wins every case, so `plan_pairing` tries each.
    """
    if strategy in ("dynamic", "search"):  # checked as segments are placed
        return {c.index: None for c in clients}
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy={strategy!r}; valid: {', '.join(STRATEGIES)}")
    groups = sorted({c.cluster for c in clients}) if strategy == "cluster" else [None]
    out: dict[int, int | None] = {}
    for group in groups:
        members = sorted((c for c in clients if group is None or c.cluster == group), key=lambda c: c.index)
        for position, c in enumerate(members):
            out[c.index] = arch.num_layers - 1 - position % (arch.num_layers - c.split)
    return out


def _longest_fit(
    arch: ModelArch,
    client: PeerClient,
    host: _Host,
    start: int,
    settings: MemorySettings,
) -> int:
    """The largest stop with [start, stop) within the host's budget and short of its missing block (or,
    without one, short of every block). Both tests only get stricter as stop grows, so every stop up
    to this one passes them too."""
    best = start
    for stop in range(start + 1, arch.num_layers + 1):
        if host.missing is None:
            if len(host.blocks | set(range(start, stop))) >= arch.num_layers:
                break
        elif start <= host.missing < stop:
            break
        if host.used + _cost(arch, client, host, start, stop, settings) > host.budget:
            break
        best = stop
    return best


def _no_pairing(
    arch: ModelArch, client: PeerClient, peers: Sequence[_Host], settings: MemorySettings, first: int
) -> PairingError:
    head = client.head_params if first + 1 == arch.num_layers else 0
    need = segment_bytes(arch, first, first + 1, client.ranks, settings, head_params=head, with_base=True)
    free = {h.index: h.budget - h.used for h in peers}
    whole = [
        h.index
        for h in peers
        if h.missing == first or (h.missing is None and len(h.blocks | {first}) >= arch.num_layers)
    ]
    cluster = {f"{h.index}:{h.device}": free[h.index] for h in peers if h.cluster == client.cluster}
    most = max(free.values(), default=0)
    why = f"block {first} needs up to {need} bytes; the most any peer has free is {most}"
    if whole:
        why += f"; clients {whole} leave block {first} to others, or they would hold all {arch.num_layers}"
    return PairingError(
        f"no pairing for cluster {client.cluster}: no peer can host block {first} of client "
        f"{client.index}'s server half [{client.split}, {arch.num_layers}): {why} (free bytes in its "
        "cluster by client:device: "
        f"{cluster}; shortfall {max(0, need - most)} bytes); valid: larger "
        "devices.profiles.<device>.memory_gb, more clients per cluster, or topology.server_fallback=true"
    )


def device_memory(
    arch: ModelArch, clients: Sequence[PeerClient], routes: Sequence[Route], settings: MemorySettings
) -> dict[int, dict[str, int]]:
    """Each device's bytes by kind (own half, hosted adapters and activations, hosted base blocks),
    recomputed from the routes alone: what pairing.json records and the tests check against budgets."""
    by_index = {c.index: c for c in clients}
    out = {
        c.index: {"own_half": c.own_bytes, "hosted": 0, "hosted_base": 0, "total": c.own_bytes}
        for c in clients
    }
    held = {c.index: set(range(c.split)) for c in clients}
    size_base = dtype_bytes(settings.base_dtype)
    for route in routes:
        owner = by_index[route.client]
        for s in route.segments:
            if s.host == SERVER:
                continue
            host = int(s.host)
            hosted = segment_bytes(
                arch, s.start, s.stop, owner.ranks, settings, head_params=owner.head_params, with_base=False
            )
            new_blocks = set(range(s.start, s.stop)) - held[host]
            held[host] |= new_blocks
            base = sum(arch.block_params[b] for b in new_blocks) * size_base
            out[host]["hosted"] += hosted
            out[host]["hosted_base"] += base
            out[host]["total"] += hosted + base
    for index, blocks in held.items():
        out[index]["blocks_held"] = len(blocks)
    return out
