"""Simulated time of a peer-to-peer round (pure): work over each device's speed, bytes over its link.

Nothing measures wall time across devices in a one-process simulation, so the round's duration on the
devices the profiles describe is computed (DESIGN.md §10): a step's FLOPs over the computing device's
FLOP/s plus the bytes it sends over the slower end of each link. A client's path in a round is its own
half's compute, every hop's compute on its host, and the boundary tensors crossing each link of its route
both ways (split learning is sequential within a step). A host serves its guests one after another, so
a device is busy for its own half plus every segment it hosts. The round lasts until the last path or
the busiest device is done.

The model is stated, not measured: FLOPs are `pairing.block_flops` per block and step (padded batches,
LoRA terms left out), links have no latency or contention beyond their bandwidth, and a fallback
server's compute is not timed (it has no device profile).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from atlas_pl.phases.memory import MemorySettings, ModelArch
from atlas_pl.phases.pairing import SERVER, PeerClient, Route, block_flops, own_half_flops


@dataclass(frozen=True)
class RoundTime:
    seconds: float  # the round: the longest client path or the busiest device
    clients: dict[int, float]  # each client's path
    devices: dict[int, float]  # each device's compute: own half + hosted segments


def round_time(
    arch: ModelArch,
    settings: MemorySettings,
    clients: Sequence[PeerClient],
    routes: Sequence[Route],
    speeds: Mapping[str, float],
    bandwidths: Mapping[str, float],
    exchanged: Mapping[int, int],
) -> RoundTime:
    """Simulated seconds of one round. `exchanged[k]`: the bytes client k's own exchanges moved this
    round (its activations up plus dL/dh down, as the ledger counted them); every hop of its route moves
    the same tensors (the hidden size does not change between blocks)."""
    by_index = {c.index: c for c in clients}
    per_block = block_flops(arch, settings)
    own = {c.index: own_half_flops(c, per_block) / speeds[c.device] for c in clients}
    busy = dict(own)
    paths: dict[int, float] = {}
    for route in routes:
        owner = by_index[route.client]
        path = own[owner.index]
        links = [owner.device]
        for segment in route.segments:
            if segment.host == SERVER:  # the fallback server has no profile: its link is the owner's
                links.append(owner.device)
                continue
            host = by_index[int(segment.host)]
            seconds = segment.flops / speeds[host.device]
            busy[host.index] += seconds
            path += seconds
            links.append(host.device)
        moved = exchanged.get(owner.index, 0)
        path += sum(moved / min(bandwidths[a], bandwidths[b]) for a, b in zip(links, links[1:]))
        paths[owner.index] = path
    longest = max([*paths.values(), *busy.values()], default=0.0)
    return RoundTime(longest, paths, busy)
