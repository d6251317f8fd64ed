"""The ServerApp's side of engine=flower: the coordinator, its records, and clients behind a Grid.

It keeps a shadow of every client: the client's model as the coordinator last knew it (built at its
allocation on the shared base; the server's copy of the job's data gives ids, tasks and sizes). Each
reply's tensors are written into the shadow, so Phase 4, the ledger's byte counts and the choice of
which identical models to score run on exactly what the in-process engine reads. The coordinator's
updates wait in `pending` and go to each client with its next message, where the client writes them
as the in-process party does (rewritten factors lose their AdamW state).

What the in-process engine does per client, this one asks for in one exchange per phase: fingerprints
(Phase 1), a round's local training (Phase 3, both halves on the client), evaluation.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from flwr.app import RecordDict
from flwr.serverapp import Grid

from atlas_pl.engines.flower.codec import get_tensors, json_record, put_updates, read_json
from atlas_pl.engines.flower.nodes import ASK, REPORT, FlowerClients, data_shape
from atlas_pl.engines.inprocess import InProcessEngine
from atlas_pl.engines.records import ClientRound, FederationResult
from atlas_pl.engines.setup import Federation
from atlas_pl.errors import EngineError
from atlas_pl.lightning.orchestrator import FederatedOrchestrator
from atlas_pl.models.split import ServerHalf
from atlas_pl.parties.aggregation import RoundAggregation
from atlas_pl.parties.client import ClientParty
from atlas_pl.parties.evaluation import model_digest
from atlas_pl.parties.faults import RoundPlan
from atlas_pl.parties.messages import AdapterUpdate, Fingerprint
from atlas_pl.settings import Settings
from atlas_pl.tracking.checkpoint import restore_module
from atlas_pl.tracking.resume import RoundCheckpointer
from atlas_pl.tracking.tracker import Tracker

log = logging.getLogger(__name__)


@dataclass
class ShadowHalf:
    """A hosted half as the coordinator sees it: tensors to read and update, no optimizer here."""

    server_half: ServerHalf
    optimizer: Any = None
    scaler: Any = None


class FlowerOrchestrator(FederatedOrchestrator):
    """Phases 1, 2 and 4 as in-process, with the fingerprints asked of the ClientApps."""

    engine: FlowerEngine

    def _answers(self, round_index: int) -> list[Fingerprint]:
        include_head = self._include_head()
        replies = self.engine.ask(
            "query.fingerprint",
            range(len(self.parties)),
            lambda k: {"round": round_index, "include_head": include_head},
        )
        fingerprints = []
        for k in range(len(self.parties)):
            tensors = get_tensors(replies[k], "fingerprint")
            importance = tensors["importance"].numpy().astype(np.float64)
            fingerprints.append(Fingerprint(k, tensors["vector"], importance))
            self.fingerprint_seconds[round_index] += float(read_json(replies[k], REPORT)["seconds"])
        return fingerprints

    def fingerprints(self, round_index: int) -> list[Fingerprint]:
        fingerprints = self._answers(round_index)
        self.count_fingerprints(fingerprints)
        return fingerprints

    def measure_importance(self, round_index: int) -> np.ndarray:
        fingerprints = self._answers(round_index)
        for party, f in zip(self.parties, fingerprints):
            party.send("importance", [torch.as_tensor(f.importance, dtype=torch.float32)])
        return np.stack([f.importance for f in fingerprints])

    def between_rounds(self) -> RoundAggregation | None:
        result = super().between_rounds()
        for k, update in (result.updates if result is not None else {}).items():
            self.engine.pending[k].append(update)
        return result


class FlowerEngine(InProcessEngine):
    """The in-process engine's rounds and records, with the clients' work done by their ClientApps."""

    def __init__(
        self,
        settings: Settings,
        fed: Federation,
        tracker: Tracker,
        grid: Grid,
        checkpointer: RoundCheckpointer | None = None,
        *,
        simulated: bool = True,
    ) -> None:
        super().__init__(settings, fed, tracker, checkpointer)  # saved each round; never resumed (refused)
        self.simulated = simulated
        self.pending: dict[int, list[AdapterUpdate]] = defaultdict(list)
        self.clients = FlowerClients(grid, len(self.parties), settings.engine.reply_timeout)
        self.orchestrator = FlowerOrchestrator(
            settings, self.coordinator, self.parties, self.host, tracker, fed.device
        )
        self.orchestrator.engine = self
        self.client_step_seconds = 0.0
        self.scores: dict[int, dict[str, float]] = {}
        self.personal_scores: dict[int, dict[str, float]] = {}
        self.flower_total = 0.0

    # -- messages -------------------------------------------------------------------------------------
    def ask(self, kind: str, clients: Any, fields: Any) -> dict[int, RecordDict]:
        """One message to each client: `fields(k)` as JSON, with the updates it has not received yet."""
        contents = {}
        for k in clients:
            content = RecordDict({ASK: json_record(fields(k))})
            if self.pending[k]:
                put_updates(content, self.pending[k])
            contents[k] = content
        replies = self.clients.exchange(kind, contents)
        for k in contents:
            self.pending[k] = []
        return replies

    def _connect(self) -> None:
        """Each node gets the job's config; each client must hold the data the server expects of it."""
        config = self.settings.config
        answers = self.clients.connect(lambda node: RecordDict({"job": json_record(config)}))
        for k, party in enumerate(self.parties):
            got = answers[k]
            expected = data_shape(party.data)
            mismatch = {key: got.get(key) for key, value in expected.items() if got.get(key) != value}
            if mismatch:
                raise EngineError(
                    f"client {k}'s node built other data than the server: {mismatch}, expected {expected} "
                    "(same data files and config on every machine?)"
                )

    # -- the engine's steps ---------------------------------------------------------------------------
    def _attach_lightning(self) -> None:
        """No Lightning here: the shadows' server halves stand in the host, for Phase 4 to read."""
        for p in self.parties:
            self.host.host(p.index, ShadowHalf(p.model.server))  # type: ignore[arg-type]

    def _train(self, round_index: int, progress: Any, training: list[int]) -> dict[int, tuple[float, float]]:
        def fields(k: int) -> dict[str, Any]:
            alloc = self.coordinator.allocations[k]
            ranks = {str(b): r for b, r in self.parties[k].model.ranks.items()}
            return {"round": round_index, "allocation": {"split": alloc.split, "ranks": ranks}}

        replies = self.ask("train", training, fields)
        reports: dict[int, tuple[float, float]] = {}
        for k in training:
            report = read_json(replies[k], REPORT)
            restore_module("model", self.parties[k].model, get_tensors(replies[k], "model"))
            self.ledger.merge(report["ledger"])
            reports[k] = (float(report["loss"]), float(report["seconds"]))
            self.client_step_seconds += float(report["step_seconds"])
            self.trained_steps[k] += int(report["steps"])
        progress.update(len(training))
        self.fit_seconds += sum(seconds for _, seconds in reports.values())
        self.orchestrator.finished_training(list(reports))
        return reports

    def _evaluate(self) -> None:
        """One client per distinct model (task, digest, and split under activation noise) is scored on the
        task's set; with personal test sets every participant is asked too, for its own set only."""
        groups: dict[tuple[str, str, int | None], list[int]] = defaultdict(list)
        noise = self.settings.privacy.activation_noise
        for k in self.coordinator.participants:
            p = self.parties[k]
            groups[(p.task, model_digest(p.model), p.model.split if noise else None)].append(k)
        first = [members[0] for members in groups.values()]
        # personal sets differ per client: then every participant is asked, each for its own set
        personal = any(self.parties[k].data.personal is not None for k in self.coordinator.participants)
        asked = list(self.coordinator.participants) if personal else first
        scored = set(first)
        answers = self.ask("evaluate", asked, lambda k: {"global": k in scored})
        replies = {k: read_json(r, REPORT) for k, r in answers.items()}
        self.scores = {
            k: dict(replies[members[0]]["metrics"]) for members in groups.values() for k in members
        }
        self.personal_scores = {k: dict(r["personal"]) for k, r in replies.items() if r.get("personal")}

    def _score(self, party: ClientParty, scored: dict[Any, dict[str, float]]) -> dict[str, float]:
        return dict(self.scores[party.index])

    def _score_personal(self, party: ClientParty) -> dict[str, float] | None:
        scores = self.personal_scores.get(party.index)
        return dict(scores) if scores is not None else None

    @property
    def step_seconds(self) -> float:
        return self.client_step_seconds

    # -- the in-process engine's hooks ---------------------------------------------------------------
    def _phases_1_and_2(self) -> None:
        self._connect()
        super()._phases_1_and_2()

    def _stateful(self) -> dict[str, Any]:
        """What a round checkpoint saves: every kept client's tensors as the coordinator holds them (what
        `python -m atlas_pl.export` and the privacy tools read). Optimizer moments and loaders stay on
        the nodes, so a Flower job is not resumed from it."""
        kept = [self.parties[k] for k in self.coordinator.participants]
        return {"modules": {f"model/{p.index}": p.model for p in kept}, "optimizers": {}, "generators": []}

    def _carry_out(self, plan: RoundPlan) -> dict[int, int]:
        return {}  # one server host and no faults (engine=flower refuses both): nothing moves

    def _after_training(self, plan: RoundPlan) -> None:
        """Steps were counted from the replies (`_train`)."""

    def _record(
        self, round_index: int, reports: dict[int, tuple[float, float]], plan: RoundPlan
    ) -> list[ClientRound]:
        if self.settings.fed.evaluates(round_index):
            self._evaluate()  # on the round's evaluation clock, as the in-process scoring
        return super()._record(round_index, reports, plan)

    def _engine_timing(self) -> dict[str, float]:
        seconds = self.clients.take_flower_seconds()
        self.flower_total += seconds
        return {"flower_seconds": seconds}

    def _result(self) -> FederationResult:
        result = super()._result()
        rounds = sum(r["round_seconds"] for r in self.log.records)
        result.overhead["flower_seconds"] = self.flower_total  # exchanges' time with no handler running
        result.overhead["flower_fraction"] = self.flower_total / rounds if rounds else 0.0
        result.memory = self._client_memory()
        return result

    def _client_memory(self) -> dict[str, float]:
        """The ClientApps' peak memory. Simulated: Ray's workers (each runs several clients, one after
        another), summed. Deployed: Flower 1.42 starts a process per message, one after another on a
        node, so the largest per node, summed over nodes (as if every node peaked at once)."""
        peaks = self.clients.peak_rss_mib
        groups: dict[str, float] = {}
        for (host, pid, node), rss in peaks.items():
            key = f"{host}/{pid}" if self.simulated else str(node)
            groups[key] = max(groups.get(key, 0.0), rss)
        return {
            "client_processes": float(len({(h, p) for h, p, _ in peaks})),
            "client_max_rss_mib_sum": sum(groups.values()),
            "client_max_rss_mib": max(groups.values(), default=0.0),
        }
