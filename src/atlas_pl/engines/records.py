"""One metrics.jsonl record per round (DESIGN.md §7), the same format for every pipeline."""

from __future__ import annotations

import logging
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from atlas_pl.data.metrics import confusion_matrix, pooled_metrics
from atlas_pl.errors import DivergedError
from atlas_pl.parties.link import TrafficLedger
from atlas_pl.phases.allocation import ClientAllocation

log = logging.getLogger(__name__)


@dataclass
class ClientRound:
    """What one client did in a round, as the engine saw it (None where it did not take part)."""

    client_id: int
    task: str
    cluster: int
    device: str
    split: int | None = None  # None = dropped by Phase 2: holds no model, is not scored
    ranks: list[int] = field(default_factory=list)
    metrics: dict[str, float] | None = None  # None with a split: not scored this round (fed.eval_every)
    personal: dict[str, float] | None = None  # on its own held-out rows (data.personal_share > 0)
    train_loss: float | None = None
    train_seconds: float | None = None  # None = did not train this round
    excluded: bool = False
    truncation_error: float | None = None
    absent: bool = False  # faults: missed the round (kept its state)
    late: bool = False  # faults: past the deadline, left out of the aggregation
    sat_out: str | None = None  # faults: no device could host its server half this round (why)
    hosts: list[str] | None = None  # topology=p2p: the hops of its route this round


def check_not_diverged(round_index: int, rows: Sequence[ClientRound], lr: float) -> None:
    """Fail the job once every client that trained this round came back non-finite.

    A NaN model still evaluates (to chance), so without this a diverged run would finish `done` with
    numbers that look like a weak result instead of a broken one."""
    trained = [r for r in rows if r.train_seconds is not None]
    broken = [r for r in trained if r.excluded or r.train_loss is None or not math.isfinite(r.train_loss)]
    if trained and len(broken) == len(trained):
        raise DivergedError(
            f"round {round_index}: training diverged: every one of the {len(trained)} clients that trained "
            f"came back with non-finite (NaN/inf) loss or adapters; lower fed.lr (now {lr:g}) or "
            "fed.head_lr, or train in float32 (model.dtype=float32, trainer.precision=32-true)"
        )


def client_entry(c: ClientRound, index: int, round_index: int, ledger: TrafficLedger) -> dict[str, Any]:
    entry: dict[str, Any] = {"task": c.task, "cluster": c.cluster, "device": c.device}
    up, down = ledger.upload_bytes(round_index, index), ledger.download_bytes(round_index, index)
    if c.split is None:
        entry.update(
            split=0,
            ranks=[],
            accuracy=None,
            primary=None,
            loss=None,
            dropped=True,
            upload_bytes=up,  # Phase 1 ran before the drop
            download_bytes=down,
            train_seconds=0.0,
        )
        return entry
    m = c.metrics or {}
    if c.metrics is not None:
        entry.update(accuracy=m["accuracy"], primary=m["primary"], loss=m["loss"])
        entry["global"] = _scores(m)
        if c.personal is not None:
            entry["personal"] = _scores(c.personal)
            matrix = confusion_matrix(c.personal)
            if matrix is not None:  # rows by true label: the task's pooled personal score adds these
                entry["personal"]["confusion"] = matrix
    entry.update(
        {
            "split": c.split,
            "ranks": list(c.ranks),
            "train_loss": float("nan") if c.train_loss is None else c.train_loss,
            "upload_bytes": up,
            "download_bytes": down,
            "dropped": False,  # Phase 2's drop only; a round missed under faults is `absent` / `sat_out`
            "train_seconds": c.train_seconds or 0.0,
        }
    )
    for extra in ("f1", "mcc"):
        if extra in m:
            entry[extra] = m[extra]
    entry["excluded_from_aggregation"] = c.excluded
    if c.absent or c.late or c.sat_out:
        entry.update(absent=c.absent, late=c.late, sat_out=c.sat_out)
    if c.hosts is not None:
        entry["hosts"] = list(c.hosts)
    if c.truncation_error is not None:
        entry["truncation_error"] = c.truncation_error
    return entry


def _scores(metrics: Mapping[str, float]) -> dict[str, float]:
    """One evaluation set's scores of a client, in the same keys for the global and the personal set."""
    keys = ("accuracy", "primary", "loss", "f1", "mcc")
    return {k: float(metrics[k]) for k in keys if k in metrics}


def _summary(scored: Sequence[Mapping[str, Any]], tasks: Sequence[str]) -> dict[str, Any]:
    """Means, spread and the worst client over `scored` client entries (one evaluation set's scores)."""
    accuracies = [c["accuracy"] for c in scored]
    per_task: dict[str, dict[str, float]] = {}
    for task in tasks:
        members = [c for c in scored if c["task"] == task]
        if not members:
            continue
        per_task[task] = {
            "accuracy": statistics.fmean(c["accuracy"] for c in members),
            "primary": statistics.fmean(c["primary"] for c in members),
            "worst_primary": min(c["primary"] for c in members),
        }
        matrices = [c["confusion"] for c in members if c.get("confusion") is not None]
        if len(matrices) == len(members):  # personal sets: the task's rows scored together
            pooled = pooled_metrics(task, matrices)
            per_task[task].update(pooled_accuracy=pooled["accuracy"], pooled_primary=pooled["primary"])
    return {
        "mean_accuracy": statistics.fmean(accuracies),
        "worst_accuracy": min(accuracies),
        "std_accuracy": statistics.pstdev(accuracies),
        "mean_primary": statistics.fmean(c["primary"] for c in scored),
        "per_task": per_task,
    }


def round_record(
    round_index: int, clients: Sequence[ClientRound], tasks: Sequence[str], ledger: TrafficLedger
) -> dict[str, Any]:
    """The record of one round: every client's entry, the means, worst client and per-task figures.

    A round in which nobody was scored (`fed.eval_every`) has `evaluated: false` and no metric keys at
    all, rather than nulls, so a reader that plots a metric over rounds simply finds fewer points."""
    entries = {str(c.client_id): client_entry(c, k, round_index, ledger) for k, c in enumerate(clients)}
    scored = [c for c in entries.values() if c.get("accuracy") is not None]
    traffic = {
        "upload_bytes": sum(c["upload_bytes"] for c in entries.values()),
        "download_bytes": sum(c["download_bytes"] for c in entries.values()),
    }
    if not scored:
        return {"round": round_index, "evaluated": False, "clients": entries, "per_task": {}, **traffic}
    record = {"round": round_index, "evaluated": True, "clients": entries, **_summary(scored, tasks)}
    record.update(traffic)
    personal = [{"task": c["task"], **c["personal"]} for c in scored if "personal" in c]
    if personal:  # the same figures on each client's own held-out rows (DESIGN.md §13)
        record["personal"] = _summary(personal, tasks)
    return record


@dataclass
class RoundLog:
    """The job's records so far and the byte totals that run through them (what a resumed job continues)."""

    records: list[dict[str, Any]] = field(default_factory=list)
    cumulative: dict[str, int] = field(default_factory=lambda: {"upload": 0, "download": 0})

    def add(self, record: dict[str, Any], timing: Mapping[str, float]) -> dict[str, Any]:
        for key in ("upload", "download"):
            self.cumulative[key] += record[f"{key}_bytes"]
            record[f"cumulative_{key}_bytes"] = self.cumulative[key]
        record.update(timing)
        self.records.append(record)
        return record

    def to_json(self) -> dict[str, Any]:
        return {"records": self.records, "cumulative": dict(self.cumulative)}

    def load_json(self, state: Mapping[str, Any]) -> None:
        self.records = list(state["records"])
        self.cumulative = {k: int(v) for k, v in state["cumulative"].items()}


@dataclass
class FederationResult:
    """What a finished engine hands the job: records, traffic, timing, and Phases 1-2's outcome."""

    log: RoundLog
    ledger: TrafficLedger
    overhead: dict[str, float] = field(default_factory=dict)
    allocations: list[ClientAllocation] = field(default_factory=list)
    clustering_summaries: list[dict[str, Any]] = field(default_factory=list)
    elapsed_before: float = 0.0  # seconds spent by earlier processes of a resumed job
    parties: list[Any] = field(default_factory=list)  # the engine's ClientParty objects, for inspection
    host: Any = None  # its ServerHost
    trainers: list[Any] = field(default_factory=list)  # the Lightning Trainers the engine ran
    orchestrator: Any = None  # its FederatedOrchestrator
    memory: dict[str, float] = field(default_factory=dict)  # peaks of the processes beside this one (Flower)

    @property
    def records(self) -> list[dict[str, Any]]:
        return self.log.records


def log_round(record: dict[str, Any], rounds: int) -> None:
    if not record.get("evaluated", True):
        log.info(
            "round %d/%d: trained, not scored (fed.eval_every) (%.1fs)",
            record["round"],
            rounds,
            record["round_seconds"],
        )
        return
    log.info(
        "round %d/%d: mean acc %.4f, worst %.4f, per task %s (%.1fs)",
        record["round"],
        rounds,
        record["mean_accuracy"],
        record["worst_accuracy"],
        {t: round(v["primary"], 4) for t, v in record["per_task"].items()},
        record["round_seconds"],
    )
