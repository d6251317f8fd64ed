"""The in-process engine: every party in this process, clients one after another (DESIGN.md §12).

Per client: a ClientParty with its ClientModule, Trainer and loader; one ServerHost with every client's
ServerModule; a LocalLink between them; the coordinator behind the orchestrator Callback. A round:
re-cluster if due, fit each participant (the Callback aggregates after the last), evaluate, record,
checkpoint. Each Trainer is built once; a round raises its `max_epochs` by `fed.local_epochs` and fits
again, so Lightning continues the same loop with the same optimizers.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from tqdm.auto import tqdm

from atlas_pl.data import shuffled_loader
from atlas_pl.engines.batched import train_batched
from atlas_pl.engines.records import (
    ClientRound,
    FederationResult,
    RoundLog,
    check_not_diverged,
    log_round,
    round_record,
)
from atlas_pl.engines.setup import Federation, build_client_model
from atlas_pl.lightning.modules import ClientModule, ServerModule, task_class_weights
from atlas_pl.lightning.orchestrator import FederatedOrchestrator
from atlas_pl.lightning.trainers import make_trainer, server_grad_scaler, set_completed_epochs
from atlas_pl.lightning.training import ClientTraining
from atlas_pl.parties.client import ClientParty
from atlas_pl.parties.coordinator import Coordinator
from atlas_pl.parties.copies import CoordinatorCopies
from atlas_pl.parties.evaluation import model_digest
from atlas_pl.parties.faults import FaultPlanner, RoundPlan, TimeModel
from atlas_pl.parties.host import ServerHost, optimizer_moments, selected
from atlas_pl.parties.link import COORDINATOR, SERVER, LocalLink, RouteLink, TrafficLedger
from atlas_pl.parties.peers import device_bandwidths, device_speeds, hop_names
from atlas_pl.parties.planning import device_budgets, memory_settings
from atlas_pl.phases.allocation import ClientAllocation
from atlas_pl.phases.memory import ModelArch
from atlas_pl.settings import Settings
from atlas_pl.tracking.resume import RoundCheckpointer
from atlas_pl.tracking.tracker import Tracker

log = logging.getLogger(__name__)


class InProcessEngine:
    """Builds the parties of one federation and runs its rounds in this process."""

    def __init__(
        self, settings: Settings, fed: Federation, tracker: Tracker, checkpointer: RoundCheckpointer | None
    ) -> None:
        self.settings, self.fed, self.tracker, self.checkpointer = settings, fed, tracker, checkpointer
        self.ledger = TrafficLedger()
        self.coordinator = Coordinator(settings, [c.num_samples for c in fed.data.clients])
        self.parties = [
            ClientParty(k, c, fed.models[k], self.ledger, settings.seed)
            for k, c in enumerate(fed.data.clients)
        ]
        self.host = ServerHost()
        self.orchestrator = FederatedOrchestrator(
            settings, self.coordinator, self.parties, self.host, tracker, fed.device
        )
        self.log = RoundLog()
        self.fit_seconds = 0.0
        self.step_before = 0.0
        self.training: list[ClientTraining] = []  # per party, built after Phase 2
        self.planner: FaultPlanner | None = None  # each round's absences, routes and deadline
        self.copies: CoordinatorCopies | None = None  # p2p with faults: what a lost host restarts from
        self.trained_steps: dict[int, int] = {}  # per kept client, steps trained so far

    @property
    def resuming(self) -> bool:
        return self.checkpointer is not None and self.checkpointer.resume is not None

    def _rebuild(self, party: ClientParty, alloc: ClientAllocation) -> None:
        """A kept client's model at its allocated split and ranks (the base stays shared).

        Initial LoRA factors and heads depend only on the seed and the module, so a rebuilt model starts
        from the same function as the one Phase 1 fingerprinted.
        """
        num_labels = self.fed.data.specs[party.task].num_labels
        model = build_client_model(self.settings, self.fed.backbone, num_labels, alloc.split, alloc.ranks)
        party.model = self.fed.models[party.index] = model.to(self.fed.device)

    def _phases_1_and_2(self) -> None:
        self.ledger.start_round(1)
        arch = ModelArch.from_backbone(self.fed.backbone)
        if not self.resuming:
            self.orchestrator.prepare(arch, self.fed.devices, self._rebuild)
            return
        assert self.checkpointer is not None
        state = self.checkpointer.state
        self.coordinator.load_state_dict(state["coordinator"])
        for party, alloc in zip(self.parties, self.coordinator.allocations):
            if not alloc.dropped:
                self._rebuild(party, alloc)
        if self.settings.topology.p2p:  # a function of the allocation and the clusters it was made from
            clusters = state.get("pairing_clusters") or self.coordinator.clusters
            self.orchestrator.pair_peers(arch, self.coordinator.allocations, clusters, record=False)
        self.orchestrator.clustering_records = list(state["clustering_records"])
        self.orchestrator.clustering_summaries = list(state["clustering_summaries"])

    def _attach_lightning(self) -> None:
        s, fed = self.settings, self.fed
        servers = [
            ServerModule(
                p.model.server,
                lr=s.fed.lr,
                head_lr=s.fed.head_lr,
                weight_decay=s.fed.weight_decay,
                class_weights=task_class_weights(
                    s.fed.balanced_tasks, p.task, p.data.train.labels, p.model.server.head.num_labels
                ),
                scaler=server_grad_scaler(s.trainer, fed.device),
            )
            for p in self.parties
        ]
        for p, server in zip(self.parties, servers):
            self.host.host(p.index, server)
        modules = [
            ClientModule(
                p.index,  # the party's index names it everywhere: host, ledger, orchestrator
                p.model.client,
                self._link(p.index),
                lr=s.fed.lr,
                weight_decay=s.fed.weight_decay,
            )
            for p in self.parties
        ]
        loaders = [
            shuffled_loader(
                p.data.train, batch_size=s.fed.batch_size, seed=s.fed.loader_seed(p.data.client_id)
            )
            for p in self.parties
        ]
        trainers = [make_trainer(s.trainer, fed.device, [self.orchestrator]) for _ in self.parties]
        self.training = [ClientTraining(*pieces) for pieces in zip(modules, trainers, loaders)]
        for p, training in zip(self.parties, self.training):
            p.attach(training)

    def _time_model(self, arch: ModelArch) -> TimeModel | None:
        """What prices a round in simulated seconds, where every device (and, under topology=server,
        the server) has a profile; None otherwise (no simulated time, absences only)."""
        s, orch = self.settings, self.orchestrator
        speeds, bandwidths = device_speeds(s), device_bandwidths(s)
        if not all(speeds.get(d, 0) > 0 and bandwidths.get(d, 0) > 0 for d in set(self.fed.devices)):
            return None
        top = s.topology
        if top.server_flops and top.server_bandwidth:
            speeds[SERVER], bandwidths[SERVER] = top.server_flops, top.server_bandwidth
        elif not top.p2p:
            return None
        clients = orch.peer_clients or orch.peer_clients_for(
            self.coordinator.allocations, self.coordinator.clusters
        )
        return TimeModel(arch, memory_settings(s), clients, speeds, bandwidths)

    def _build_faults(self) -> None:
        s, orch = self.settings, self.orchestrator
        arch = ModelArch.from_backbone(self.fed.backbone)
        budgets = device_budgets(s.devices)
        self.planner = FaultPlanner(s, self._time_model(arch), orch.routes, orch.pairing_missing, budgets)
        kept = self.coordinator.participants
        self.trained_steps = dict.fromkeys(kept, 0)
        if s.topology.p2p and s.faults.enabled:
            self.copies = CoordinatorCopies(self.host, kept)

    def _carry_out(self, plan: RoundPlan) -> dict[int, int]:
        """Point each link at its route, move the halves that changed host (bytes counted; a lost
        host's guests restart from the coordinator's copy), set partial-round step limits. Returns the
        steps lost per client."""
        if self.settings.topology.p2p:
            self.orchestrator.routes = dict(plan.routes)
            for k, route in plan.routes.items():
                link = self.training[k].module.link
                if isinstance(link, RouteLink):
                    link.hops = hop_names(route)
                    link.host_name = link.hops[0]
        lost: dict[int, int] = {}
        for t in plan.transfers:
            module = self.host.modules[t.client]
            params = selected(module.server_half, set(t.blocks), t.head)
            if t.lost and self.copies is not None:
                lost[t.client] = self.copies.restore(
                    self.host, t.client, set(t.blocks), t.head, self.trained_steps[t.client]
                )
            if t.destination != COORDINATOR:  # the coordinator's copy has no optimizer moments
                moments = [] if t.source == COORDINATOR else optimizer_moments(module.optimizer, params)
                self.ledger.send(t.source, t.destination, "server_half", params + moments)
        for k in plan.training:
            self.training[k].module.step_limit = plan.steps.get(k)
        return lost

    def _after_training(self, plan: RoundPlan) -> None:
        for k in plan.training:
            self.trained_steps[k] += self.training[k].module.steps_this_round
        if self.copies is not None:
            for k in self.orchestrator.uploaded:
                self.copies.take(self.host, k, self.trained_steps[k])

    def _stateful(self) -> dict[str, Any]:
        """What a round checkpoint saves and a resumed job restores (keys are the checkpoint's names)."""
        kept = [self.parties[k] for k in self.coordinator.participants]
        pieces = self.training
        copies = {"copies": self.copies} if self.copies is not None else {}
        return {
            "modules": {**{f"model/{p.index}": p.model for p in kept}, **copies},
            "optimizers": {
                f"optim/{p.index}/{i}": opt
                for p in kept
                for i, opt in enumerate([pieces[p.index].optimizer, self.host.modules[p.index].optimizer])
            },
            "generators": [t.loader.generator for t in pieces],
            "scalers": {
                **{f"precision/{p.index}": pieces[p.index].trainer.precision_plugin for p in kept},
                **{
                    f"scaler/server/{p.index}": self.host.modules[p.index].scaler
                    for p in kept
                    if self.host.modules[p.index].scaler
                },
            },
        }

    def _json_state(self) -> dict[str, Any]:
        """Everything but tensors that later rounds depend on (the checkpointer adds RNGs and config)."""
        return {
            **self.log.to_json(),
            "ledger": self.ledger.to_json(),
            "fit_seconds": self.fit_seconds,
            "step_seconds": self.step_seconds,
            "coordinator": self.coordinator.state_dict(),
            "clustering_records": self.orchestrator.clustering_records,
            "clustering_summaries": self.orchestrator.clustering_summaries,
            "pairing_clusters": self.orchestrator.pairing_clusters,
            "planner": self.planner.state_dict() if self.planner is not None else None,
            "trained_steps": {str(k): n for k, n in self.trained_steps.items()},
            "copied_steps": {str(k): n for k, n in self.copies.steps.items()} if self.copies else {},
        }

    @property
    def step_seconds(self) -> float:
        return self.step_before + sum(t.module.step_seconds for t in self.training)

    def _restore(self, stateful: dict[str, Any]) -> None:
        assert self.checkpointer is not None
        state = self.checkpointer.state
        self.log.load_json(state)
        self.ledger.load_json(state["ledger"])
        self.fit_seconds = float(state["fit_seconds"])
        self.step_before = float(state.get("step_seconds", 0.0))
        self.tracker.restore(self.log.records)
        self.checkpointer.restore(**stateful)
        if self.planner is not None and state.get("planner"):
            self.planner.load_state_dict(state["planner"])
        self.trained_steps.update({int(k): int(n) for k, n in state.get("trained_steps", {}).items()})
        if self.copies is not None:
            self.copies.steps.update({int(k): int(n) for k, n in state.get("copied_steps", {}).items()})
        epochs = (self.checkpointer.start_round - 1) * self.settings.fed.local_epochs
        for t in self.training:
            set_completed_epochs(t.trainer, epochs)

    def _add_simulated_time(
        self, round_index: int, record: dict[str, Any], timing: dict[str, float], plan: RoundPlan
    ) -> None:
        """The round's simulated seconds on the profiled devices (phases/simtime.py), per client in its
        entry and for the round (capped at the deadline), with the running total."""
        time_model = self.planner.time if self.planner is not None else None
        if time_model is None:
            return
        exchanged = {}
        for k in plan.training:
            kinds = self.ledger.by_kind(round_index, k)
            exchanged[k] = kinds["upload"].get("activations", 0) + kinds["download"].get(
                "activation_grads", 0
            )
        assert self.planner is not None
        routes = self.planner.routes_of(plan.training)
        times = time_model.measure(routes, plan.faults.slowdown, exchanged, plan.steps)
        for k, seconds in times.clients.items():
            record["clients"][str(self.parties[k].data.client_id)]["sim_seconds"] = seconds
        seconds = times.seconds if plan.deadline is None else min(times.seconds, plan.deadline)
        before = self.log.records[-1].get("cumulative_sim_seconds", 0.0) if self.log.records else 0.0
        timing["sim_seconds"] = seconds
        timing["cumulative_sim_seconds"] = before + seconds

    def _link(self, index: int) -> LocalLink:
        """The client's way to its server half: the server, or under topology=p2p its route of peers."""
        route = self.orchestrator.routes.get(index)
        noise = self.settings.privacy.activation_noise
        if route is None:
            return LocalLink(index, self.host, self.ledger, noise=noise)
        return RouteLink(index, self.host, self.ledger, hop_names(route), noise=noise)

    def _train_batched(self, round_index: int, progress: Any) -> dict[int, tuple[float, float]]:
        """Every participant's epochs in lock-stepped batched steps, then Phase 4 (no Lightning fit)."""
        kept = [self.parties[k] for k in self.coordinator.participants]
        loaders = [self.training[p.index].loader for p in kept]
        per_round = self.settings.fed.local_epochs
        epochs = range((round_index - 1) * per_round, round_index * per_round)
        reports = train_batched(kept, self.host, self.ledger, loaders, epochs, self.fed.device)
        progress.update(len(kept))
        seconds = sum(s for _, s in reports.values())
        self.fit_seconds += seconds
        self.step_before += seconds  # no Lightning loop around these steps: no overhead to count
        self.orchestrator.finished_training(list(reports))
        return reports

    def _train(self, round_index: int, progress: Any, training: list[int]) -> dict[int, tuple[float, float]]:
        """Each training client's (mean loss, seconds) of local training this round."""
        if self.settings.trainer.batched_clients:
            return self._train_batched(round_index, progress)
        reports: dict[int, tuple[float, float]] = {}
        for k in training:
            progress.set_postfix(round=round_index, client=k)
            report = self.parties[k].train_round(round_index, self.settings.fed.local_epochs)
            reports[k] = (report.loss, report.seconds)
            progress.update(1)
        if reports:  # Phase 4 ran inside the last fit, on the orchestrator's clock, not the client's
            last = list(reports)[-1]
            loss, seconds = reports[last]
            reports[last] = (loss, seconds - self.orchestrator.aggregation_seconds)
        self.fit_seconds += sum(seconds for _, seconds in reports.values())
        return reports

    def _score(
        self, party: ClientParty, scored: dict[tuple[str, str, int | None], dict[str, float]]
    ) -> dict[str, float]:
        """A client's metrics on its task's evaluation set; identical models (e.g. after cluster
        averaging) are scored once."""
        # with activation noise the split is where the noise enters: same factors, other split, other scores
        split = party.model.split if self.settings.privacy.activation_noise else None
        seen = (party.task, model_digest(party.model), split)
        if seen not in scored:
            scored[seen] = party.evaluate(
                self.fed.data.eval[party.task],
                batch_size=self.settings.fed.eval_batch_size,
                device=self.fed.device,
            )
        return dict(scored[seen])

    def _score_personal(self, party: ClientParty) -> dict[str, float] | None:
        """A client's metrics on its own held-out rows (data.personal_share); these differ per client, so
        unlike the task's set they are scored for every client, identical models or not."""
        personal = party.data.personal
        if personal is None:
            return None
        return party.evaluate(personal, batch_size=self.settings.fed.eval_batch_size, device=self.fed.device)

    def _record(
        self, round_index: int, reports: dict[int, tuple[float, float]], plan: RoundPlan
    ) -> list[ClientRound]:
        s, fed, orch = self.settings, self.fed, self.orchestrator
        rows = []
        scored: dict[
            tuple[str, str, int | None], dict[str, float]
        ] = {}  # (task, model digest, split under noise) -> metrics
        evaluates = s.fed.evaluates(round_index)
        for k, p in enumerate(self.parties):
            row = ClientRound(p.data.client_id, p.task, self.coordinator.clusters[k], fed.devices[k])
            if not self.coordinator.dropped[k]:
                row.split = p.model.split
                row.ranks = [p.model.ranks[b] for b in range(fed.backbone.num_layers)]
                if evaluates:
                    row.metrics = self._score(p, scored)
                    row.personal = self._score_personal(p)
                if k in reports:
                    row.train_loss, row.train_seconds = reports[k]
                row.excluded = k in orch.excluded
                row.truncation_error = orch.truncation_errors.get(k)
                row.absent = k in plan.faults.absent
                row.late = k in plan.late
                row.sat_out = plan.unplaced.get(k)
                if k in plan.routes:
                    row.hosts = hop_names(plan.routes[k])
            rows.append(row)
        return rows

    def _overhead(self) -> dict[str, float]:
        """The job's training time against its bare steps, and the orchestration's (summary.json)."""
        step = self.step_seconds
        return {
            "fit_seconds": self.fit_seconds,
            "step_seconds": step,
            "lightning_overhead_seconds": self.fit_seconds - step,
            "overhead_fraction": (self.fit_seconds - step) / step if step else 0.0,
            "fit_calls": sum(  # who trained in each round (fewer than every participant under faults)
                sum(c.get("train_seconds", 0.0) > 0 for c in r["clients"].values()) for r in self.log.records
            ),
            "orchestration_seconds": sum(r.get("orchestration_seconds", 0.0) for r in self.log.records),
        }

    def run(self) -> FederationResult:
        s = self.settings
        prepared = time.perf_counter()  # round 1's clock includes Phases 1 and 2, as its orchestration does
        self._phases_1_and_2()
        self._attach_lightning()
        self._build_faults()
        assert self.planner is not None
        stateful = self._stateful()
        start_round = self.checkpointer.start_round if self.checkpointer is not None else 1
        if self.resuming:
            self._restore(stateful)
        participants = self.coordinator.participants
        progress = tqdm(
            total=(s.fed.rounds - start_round + 1) * len(self.parties),
            desc="rounds x clients",
            unit="client",
            leave=False,
            disable=None,
        )
        for round_index in range(start_round, s.fed.rounds + 1):
            round_start = prepared if round_index == 1 else time.perf_counter()
            self.ledger.start_round(round_index)
            plan = self.planner.plan(round_index, participants)
            lost = self._carry_out(plan)
            self.orchestrator.start_round(round_index, plan.training, plan.aggregated)
            reports = self._train(round_index, progress, plan.training)
            self._after_training(plan)
            evaluated = time.perf_counter()
            rows = self._record(round_index, reports, plan)
            evaluation = time.perf_counter() - evaluated
            record = round_record(round_index, rows, list(self.fed.data.specs), self.ledger)
            if s.faults.enabled:
                record["faults"] = {**plan.to_json(), "lost_steps": {str(k): n for k, n in lost.items()}}
            timing = {
                "round_seconds": time.perf_counter() - round_start,
                "orchestration_seconds": self.orchestrator.seconds.get(round_index, 0.0),
                "evaluation_seconds": evaluation,
                "fingerprint_seconds": self.orchestrator.fingerprint_seconds.get(round_index, 0.0),
                **self._engine_timing(),
            }
            self._add_simulated_time(round_index, record, timing, plan)
            self.tracker.log_round(self.log.add(record, timing))
            log_round(record, s.fed.rounds)
            check_not_diverged(round_index, rows, s.fed.lr)
            if self.checkpointer is not None:
                self.checkpointer.save(round_index, json_state=self._json_state(), **stateful)
        progress.close()
        return self._result()

    def _engine_timing(self) -> dict[str, float]:
        """Timing keys an engine adds to each round's record (Flower: its own share)."""
        return {}

    def _result(self) -> FederationResult:
        return FederationResult(
            log=self.log,
            ledger=self.ledger,
            overhead=self._overhead(),
            allocations=self.coordinator.allocations,
            clustering_summaries=self.orchestrator.clustering_summaries,
            elapsed_before=self.checkpointer.elapsed_before if self.checkpointer is not None else 0.0,
            parties=self.parties,
            host=self.host,
            orchestrator=self.orchestrator,
            trainers=[t.trainer for t in self.training],
        )


def run_inprocess(
    settings: Settings, fed: Federation, tracker: Tracker, checkpointer: RoundCheckpointer | None = None
) -> FederationResult:
    """Run `fed.rounds` rounds in this process; each round is one metrics.jsonl record via `tracker`."""
    return InProcessEngine(settings, fed, tracker, checkpointer).run()
