"""topology=p2p on the coordinator: who runs each client's server half, decided once after Phase 2.

The coordinator knows each client's device, cluster, split and ranks (Phase 2) and hosts no layers; it
asks `phases.pairing.pair` for the routes, records them (`pairing.json`, a W&B table) and tells each
client its hops. In this single-process simulation the server halves still compute in the one
`ServerHost`, so the maths is exactly topology=server's; what the routes change is who is charged with
the memory, the work and the traffic (each hop of a route carries the boundary tensors, counted by
`RouteLink` under the host's `peer/<client>` name).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from atlas_pl.parties.planning import device_budgets, memory_settings
from atlas_pl.phases.allocation import ClientAllocation
from atlas_pl.phases.memory import ModelArch
from atlas_pl.phases.pairing import Pairing, PeerClient, Route, device_memory, pair
from atlas_pl.settings import Settings
from atlas_pl.tracking.results import write_json

ROUTE_COLUMNS = ["client", "hop", "host", "first_block", "end_block", "head", "bytes", "gflop_per_round"]


def peer_name(client: int) -> str:
    """A device in its role of host for others (its own client half is `client/<id>`)."""
    return f"peer/{client}"


def host_name(host: int | str) -> str:
    """A ledger name for whoever keeps a segment: a peer's index, or a named party (server, coordinator)."""
    return host if isinstance(host, str) else peer_name(host)


def hop_names(route: Route) -> list[str]:
    return [host_name(h) for h in route.hosts]


def peer_clients(
    settings: Settings,
    allocations: Sequence[ClientAllocation],
    clusters: Sequence[int],
    train_sizes: Sequence[int],
    head_params: Sequence[int],
) -> list[PeerClient]:
    """What pairing needs of every client Phase 2 kept (dropped clients hold nothing and host nothing)."""
    steps_per_epoch = [math.ceil(n / settings.fed.batch_size) for n in train_sizes]
    return [
        PeerClient(
            index=k,
            device=a.device,
            cluster=int(clusters[k]),
            split=a.split,
            ranks=a.ranks,
            own_bytes=a.memory.total,
            head_params=int(head_params[k]),
            steps=steps_per_epoch[k] * settings.fed.local_epochs,
        )
        for k, a in enumerate(allocations)
        if not a.dropped
    ]


def device_speeds(settings: Settings) -> dict[str, float]:
    """FLOP/s per device profile (validation requires them under p2p)."""
    return {name: float(p.flops or 0.0) for name, p in settings.devices.profiles.items()}


def device_bandwidths(settings: Settings) -> dict[str, float]:
    """Link bytes/s per device profile (validation requires them under p2p)."""
    return {name: float(p.bandwidth or 0.0) for name, p in settings.devices.profiles.items()}


def plan_routes(settings: Settings, arch: ModelArch, clients: Sequence[PeerClient]) -> Pairing:
    return pair(
        arch,
        clients,
        device_budgets(settings.devices),
        device_speeds(settings),
        memory_settings(settings),
        server_fallback=settings.topology.server_fallback,
        policy=settings.topology.pairing,
        seed=settings.seed,
    )


def pairing_record(
    settings: Settings, arch: ModelArch, clients: Sequence[PeerClient], pairing: Pairing
) -> dict[str, Any]:
    """pairing.json: every route, and every device's memory by kind against its budget."""
    budgets = device_budgets(settings.devices)
    memory = device_memory(arch, clients, pairing.routes, memory_settings(settings))
    missing = pairing.missing
    return {
        "topology": settings.topology.name,
        "pairing": settings.topology.pairing,
        "server_fallback": settings.topology.server_fallback,
        "host_reserve": settings.allocation.host_reserve,
        "num_layers": arch.num_layers,
        "missing_block_strategy": pairing.strategy,
        "routes": [r.to_json() for r in pairing.routes],
        "devices": [
            {
                "client": c.index,
                "device": c.device,
                "cluster": c.cluster,
                "split": c.split,
                "budget_bytes": budgets[c.device],
                "missing_block": missing[c.index],
                **memory[c.index],
            }
            for c in clients
        ],
    }


def route_rows(routes: Sequence[Route]) -> list[list[Any]]:
    return [
        [r.client, hop, str(s.host), s.start, s.stop, s.head, s.bytes, s.flops / 1e9]
        for r in routes
        for hop, s in enumerate(r.segments)
    ]


def write_pairing(out_dir: Path, record: dict[str, Any]) -> None:
    write_json(out_dir / "pairing.json", record)
