"""A round under faults, on the coordinator: who is absent, who hosts whom, who is late (DESIGN.md §10).

Before each round the coordinator draws the round's absences and stragglers (phases/availability.py),
prices the round on the device profiles (phases/simtime.py), sets the deadline, re-pairs the routes
whose hosts are absent or too slow (phases/pairing.repair: same cluster, then other clusters, then the
server if allowed; otherwise the client sits the round out), and marks the clients that will miss the
deadline. The engine carries the plan out: it moves the server halves that changed host (counting
their bytes), trains the clients that can, and aggregates the ones on time.

Routes are sticky: a re-paired route stays until one of its hosts fails in turn, since moving a half
back costs bytes too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from atlas_pl.parties.link import COORDINATOR, SERVER
from atlas_pl.parties.peers import host_name
from atlas_pl.phases.availability import (
    RoundFaults,
    deadline_seconds,
    draw_faults,
    late_clients,
    steps_by_deadline,
    too_slow_hosts,
)
from atlas_pl.phases.memory import MemorySettings, ModelArch
from atlas_pl.phases.pairing import PeerClient, Route, repair
from atlas_pl.phases.simtime import RoundTime, round_time, server_routes, step_exchange_bytes
from atlas_pl.settings import Settings


@dataclass(frozen=True)
class Transfer:
    """Blocks of one client's server half (and its head) moving to a new host at a round's start.

    `source` is the old host, or the coordinator when the old host is absent: then only the adapter and
    head as the coordinator last received them exist (`lost`), and the progress since is lost."""

    client: int
    source: str
    destination: str
    blocks: tuple[int, ...]
    head: bool
    lost: bool


@dataclass
class RoundPlan:
    round: int
    participants: list[int]  # kept by Phase 2
    faults: RoundFaults
    routes: dict[int, Route] = field(default_factory=dict)  # topology=p2p: this round's routes
    moved: dict[int, str] = field(default_factory=dict)  # re-paired: cluster | other_cluster | server
    unplaced: dict[int, str] = field(default_factory=dict)  # no host this round: sits out (reason)
    transfers: list[Transfer] = field(default_factory=list)
    deadline: float | None = None
    late: set[int] = field(default_factory=set)  # past the deadline: left out of the aggregation
    steps: dict[int, int] = field(default_factory=dict)  # late=partial: the steps that fit

    @property
    def absent(self) -> list[int]:
        return [k for k in self.participants if k in self.faults.absent]

    @property
    def training(self) -> list[int]:
        """Who trains this round: present, with a host."""
        return [k for k in self.participants if k not in self.faults.absent and k not in self.unplaced]

    @property
    def aggregated(self) -> list[int]:
        """Whose adapters the round's aggregation takes: those that trained and met the deadline."""
        return [k for k in self.training if k not in self.late]

    def to_json(self) -> dict[str, Any]:
        """What metrics.jsonl records of the round's faults."""
        return {
            "absent_clients": self.absent,
            "sat_out": {str(k): why for k, why in sorted(self.unplaced.items())},
            "late_clients": sorted(self.late),
            "partial_steps": {str(k): n for k, n in sorted(self.steps.items())},
            "repairings": sum(kind == "cluster" for kind in self.moved.values()),
            "fallbacks": sum(kind != "cluster" for kind in self.moved.values()),
            "moved": {str(k): kind for k, kind in sorted(self.moved.items())},
            "stragglers": {str(k): round(f, 4) for k, f in sorted(self.faults.slowdown.items())},
            "deadline_seconds": self.deadline,
        }


@dataclass
class TimeModel:
    """What pricing a round needs: the model, the clients as pairing sees them, speeds and links."""

    arch: ModelArch
    memory: MemorySettings
    clients: list[PeerClient]
    speeds: dict[str, float]
    bandwidths: dict[str, float]

    @property
    def by_index(self) -> dict[int, PeerClient]:
        return {c.index: c for c in self.clients}

    def predict(self, routes: Sequence[Route], slowdown: Mapping[int, float]) -> RoundTime:
        """The round priced before it runs: every step's exchange at the full padded length."""
        per_step = step_exchange_bytes(self.arch, self.memory)
        by_index = self.by_index
        exchanged = {r.client: per_step * by_index[r.client].steps for r in routes}
        return round_time(
            self.arch, self.memory, self.clients, routes, self.speeds, self.bandwidths, exchanged, slowdown
        )

    def measure(
        self,
        routes: Sequence[Route],
        slowdown: Mapping[int, float],
        exchanged: Mapping[int, int],
        steps: Mapping[int, int],
    ) -> RoundTime:
        """The round as it ran: the ledger's bytes, and the steps each client really did."""
        by_index = self.by_index
        clients = [replace(c, steps=steps.get(c.index, c.steps)) for c in self.clients]
        done = [
            _scaled(r, steps[r.client] / by_index[r.client].steps) if r.client in steps else r for r in routes
        ]
        return round_time(
            self.arch, self.memory, clients, done, self.speeds, self.bandwidths, exchanged, slowdown
        )


Holder = int | str  # who keeps a block of a client's half: a peer's index, SERVER or COORDINATOR


class FaultPlanner:
    """Plans each round; holds, between rounds, every client's last route and who keeps each block of
    its server half (topology=p2p)."""

    def __init__(
        self,
        settings: Settings,
        time: TimeModel | None,
        routes: Mapping[int, Route],
        missing: Mapping[int, int | None],
        budgets: Mapping[str, int],
    ) -> None:
        self.settings = settings
        self.time = time
        self.routes = dict(routes)  # p2p: each kept client's last route (it may cross an absent host)
        self.holders: dict[int, dict[int, Holder]] = {k: _holders(r) for k, r in routes.items()}
        self.missing = dict(missing)
        self.budgets = dict(budgets)

    def plan(self, round_index: int, participants: Sequence[int]) -> RoundPlan:
        f, s = self.settings.faults, self.settings
        faults = draw_faults(
            s.seed, round_index, participants, drop=f.drop, straggle=f.straggle, slowdown=f.slowdown
        )
        plan = RoundPlan(round_index, list(participants), faults)
        present = [k for k in participants if k not in faults.absent]
        if s.topology.p2p:
            plan.transfers = self._lose(set(faults.absent))
        if self.time is None:  # no device profiles: absences only, routes as they are
            plan.routes = {k: self.routes[k] for k in present if k in self.routes}
            return plan
        deadline = self._deadline(present, faults)
        plan.deadline = deadline
        if s.topology.p2p:
            self._repair(plan, present, deadline)
        self._mark_late(plan, deadline)
        return plan

    def routes_of(self, clients: Sequence[int]) -> list[Route]:
        """The routes of `clients`: their peers (p2p; those with a route), or the server."""
        if self.settings.topology.p2p:
            return [self.routes[k] for k in clients if k in self.routes]
        assert self.time is not None
        by_index = self.time.by_index
        return server_routes(self.time.arch, self.time.memory, [by_index[k] for k in clients])

    def _deadline(self, present: Sequence[int], faults: RoundFaults) -> float | None:
        assert self.time is not None
        f = self.settings.faults
        if not f.has_deadline:
            return None
        predicted = self.time.predict(self.routes_of(present), faults.slowdown)
        return deadline_seconds(
            predicted.clients, seconds=f.deadline_seconds, median_multiple=f.deadline_multiple
        )

    def _lose(self, absent: set[int]) -> list[Transfer]:
        """What absent hosts held of anyone's half is gone: those blocks fall back to the coordinator's
        copy (a `lost` transfer to the coordinator, which the engine restores)."""
        assert self.time is not None  # topology=p2p requires device profiles
        out = []
        last = self.time.arch.num_layers - 1
        for k, holders in sorted(self.holders.items()):
            blocks = [b for b, h in sorted(holders.items()) if isinstance(h, int) and h in absent]
            if not blocks:
                continue
            head = last in blocks
            out.append(Transfer(k, COORDINATOR, COORDINATOR, tuple(blocks), head, True))
            for b in blocks:
                holders[b] = COORDINATOR
        return out

    def _repair(self, plan: RoundPlan, present: Sequence[int], deadline: float | None) -> None:
        """Re-pair the present clients whose hosts are absent, or too slow to meet the deadline; then
        move each block of their halves from whoever keeps it to its new host."""
        assert self.time is not None
        t, s = self.time, self.settings
        predicted = t.predict(self.routes_of(present), plan.faults.slowdown)
        hosting = sorted({int(h) for r in self.routes_of(present) for h in r.hosts if h != SERVER})
        busy = {k: v for k, v in predicted.devices.items() if isinstance(k, int)}
        unavailable = set(plan.faults.absent) | too_slow_hosts(busy, hosting, deadline)
        fixed = repair(
            t.arch,
            t.clients,
            self.routes,
            self.missing,
            self.budgets,
            t.speeds,
            t.memory,
            unavailable=unavailable,
            needing=present,
            server_fallback=s.topology.server_fallback,
            policy=s.topology.pairing,
            seed=s.seed,
        )
        plan.moved, plan.unplaced = dict(fixed.moved), dict(fixed.unplaced)
        self.routes.update(fixed.routes)  # an unplaced client keeps its last route, placed again later
        plan.routes = dict(fixed.routes)
        plan.transfers += self._move(fixed.routes)

    def _move(self, routes: Mapping[int, Route]) -> list[Transfer]:
        """Each run of a route's blocks whose keeper is not its host moves there, with the head when
        the run ends the model."""
        out = []
        for k, route in sorted(routes.items()):
            holders = self.holders.setdefault(k, {})
            for segment in route.segments:
                runs: dict[Holder, list[int]] = {}
                for b in range(segment.start, segment.stop):
                    if holders.get(b, COORDINATOR) != segment.host:
                        runs.setdefault(holders.get(b, COORDINATOR), []).append(b)
                        holders[b] = segment.host
                for source, blocks in runs.items():
                    head = segment.head and segment.stop - 1 in blocks
                    out.append(
                        Transfer(k, host_name(source), host_name(segment.host), tuple(blocks), head, False)
                    )
        return out

    def _mark_late(self, plan: RoundPlan, deadline: float | None) -> None:
        """Who misses the deadline on this round's routes (and, under topology=server, whom the server
        cannot serve in time: it serves its clients one after another, in index order); under
        late=partial, the steps that fit."""
        assert self.time is not None
        if deadline is None:
            return
        training = plan.training
        predicted = self.time.predict(self.routes_of(training), plan.faults.slowdown)
        paths = dict(predicted.clients)
        if not self.settings.topology.p2p:
            queue = 0.0
            for route in self.routes_of(training):
                queue += route.segments[0].flops / self.time.speeds.get(SERVER, float("inf"))
                paths[route.client] = max(paths[route.client], queue)
        late = late_clients({k: paths[k] for k in training}, deadline)
        if self.settings.faults.late == "partial":
            by_index = self.time.by_index
            for k in sorted(late):
                done = steps_by_deadline(paths[k], by_index[k].steps, deadline)
                if done > 0:
                    plan.steps[k] = done
            late = {k for k in late if k not in plan.steps}
        plan.late = late

    # -- checkpoints ----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "routes": [r.to_json() for r in self.routes.values()],
            "holders": {str(k): {str(b): h for b, h in v.items()} for k, v in self.holders.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.routes = {int(r["client"]): Route.from_json(r) for r in state["routes"]}
        self.holders = {
            int(k): {int(b): (h if isinstance(h, str) else int(h)) for b, h in v.items()}
            for k, v in state.get("holders", {}).items()
        }


def _scaled(route: Route, share: float) -> Route:
    """A route whose every segment did `share` of its planned steps (late=partial)."""
    return Route(
        route.client, [replace(seg, flops=seg.flops * share) for seg in route.segments], route.fallback
    )


def _holders(route: Route) -> dict[int, Holder]:
    return {b: s.host for s in route.segments for b in range(s.start, s.stop)}
