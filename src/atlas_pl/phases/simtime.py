"""Simulated time of a round (pure): work over each device's speed, bytes over its link.

Nothing measures wall time across devices in a one-process simulation, so the round's duration on the
devices the profiles describe is computed (DESIGN.md §10): a step's FLOPs over the computing device's
FLOP/s plus the bytes it sends over the slower end of each link. A client's path in a round is its own
half's compute, every hop's compute on its host, and the boundary tensors crossing each link of its route
both ways (split learning is sequential within a step). A host serves its guests one after another, so
a device is busy for its own half plus every segment it hosts. The round lasts until the last path or
the busiest device is done.

Under `topology=server` every route is one segment on the server (`server_routes`), which serves
its clients one after another like any host. A straggler's factor divides its speed and its
bandwidth. The model is stated, not measured: FLOPs are `pairing.block_flops` per block and step (padded
batches, LoRA terms left out), links have no latency or contention beyond their bandwidth, and the
server is timed only when its profile is given (`speeds[SERVER]`, `bandwidths[SERVER]`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from atlas_pl.phases.memory import MemorySettings, ModelArch, dtype_bytes
from atlas_pl.phases.pairing import SERVER, PeerClient, Route, Segment, block_flops, own_half_flops


@dataclass(frozen=True)
class RoundTime:
    seconds: float  # the round: the longest client path or the busiest device
    clients: dict[int, float]  # each client's path
    devices: dict[int | str, float]  # each device's compute: own half + hosted segments (and the server)


def server_routes(arch: ModelArch, settings: MemorySettings, clients: Sequence[PeerClient]) -> list[Route]:
    """topology=server as routes: each client's blocks [split, L) and head on the server."""
    per_block = block_flops(arch, settings)
    return [
        Route(
            c.index,
            [
                Segment(
                    SERVER,
                    c.split,
                    arch.num_layers,
                    True,
                    0,
                    (arch.num_layers - c.split) * per_block * c.steps,
                )
            ],
        )
        for c in clients
    ]


def step_exchange_bytes(arch: ModelArch, settings: MemorySettings) -> int:
    """Bytes one split step moves over one link at the full padded length: h up and dL/dh down (the
    compute dtype), the attention mask and the labels (int64). What a round is priced with before it
    runs; after it, the ledger's counts of the trimmed batches replace it."""
    hidden = settings.tokens * arch.hidden * dtype_bytes(settings.base_dtype)
    return 2 * hidden + 8 * settings.tokens + 8 * settings.batch_size


def round_time(
    arch: ModelArch,
    settings: MemorySettings,
    clients: Sequence[PeerClient],
    routes: Sequence[Route],
    speeds: Mapping[str, float],
    bandwidths: Mapping[str, float],
    exchanged: Mapping[int, int],
    slowdown: Mapping[int, float] | None = None,
) -> RoundTime:
    """Simulated seconds of one round over `routes` (the clients that train in it). `exchanged[k]`: the
    bytes client k's own exchanges moved this round (its activations up plus dL/dh down); every hop of
    its route moves the same tensors (the hidden size does not change between blocks). `slowdown[k]`:
    device k's straggler factor this round (1 when absent from the map)."""
    by_index = {c.index: c for c in clients}
    slow = slowdown or {}
    per_block = block_flops(arch, settings)

    def speed(k: int) -> float:
        return speeds[by_index[k].device] / slow.get(k, 1.0)

    def link(k: int | str) -> float:
        if k == SERVER:
            return bandwidths.get(SERVER, math.inf)
        return bandwidths[by_index[int(k)].device] / slow.get(int(k), 1.0)

    busy: dict[int | str, float] = {}
    paths: dict[int, float] = {}
    for route in routes:
        owner = route.client
        path = own_half_flops(by_index[owner], per_block) / speed(owner)
        busy[owner] = busy.get(owner, 0.0) + path
        for segment in route.segments:
            seconds = _segment_seconds(segment, speed, speeds)
            busy[segment.host] = busy.get(segment.host, 0.0) + seconds
            path += seconds
        hops: list[int | str] = [owner, *route.hosts]
        moved = exchanged.get(owner, 0)
        paths[owner] = path + sum(moved / min(link(a), link(b)) for a, b in zip(hops, hops[1:]))
    longest = max([*paths.values(), *busy.values()], default=0.0)
    return RoundTime(longest, paths, busy)


def _segment_seconds(segment: Segment, speed: Callable[[int], float], speeds: Mapping[str, float]) -> float:
    """A segment's compute on its host; the server's only when it has a profile."""
    if segment.host != SERVER:
        return segment.flops / speed(int(segment.host))
    return segment.flops / speeds[SERVER] if SERVER in speeds else 0.0
