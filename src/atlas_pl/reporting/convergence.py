"""Convergence speed: how soon a job's per-task metric first reaches a target, in rounds and in simulated
seconds (the base specification's second evaluation axis; DESIGN.md §10 and §13).

A final metric says where a method ends; the rounds and the simulated seconds to a common target say how
fast it gets there on the devices the profiles describe, which is what dropouts, stragglers and
peer-to-peer hosting change. Only scored rounds count (`fed.eval_every`), so the answer is the first
scored round at or above the target.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

TARGET_SHARE = 0.95  # the target: this share of the best final metric (the job's own, or the group's)


def target_of(best: float) -> float:
    """TARGET_SHARE of `best`, measured from 0: below it also when the best is negative (an MCC can be)."""
    return best - (1.0 - TARGET_SHARE) * abs(best)


@dataclass(frozen=True)
class Reached:
    round: int
    sim_seconds: float | None  # cumulative at that round; None without device profiles


def task_metric(record: Mapping[str, Any], task: str) -> float | None:
    entry = record.get("per_task", {}).get(task)
    return None if entry is None else float(entry["primary"])


def reached(records: Sequence[Mapping[str, Any]], task: str, target: float) -> Reached | None:
    """The first scored round whose per-task mean primary metric is >= target (None: never)."""
    for record in records:
        value = task_metric(record, task)
        if value is not None and value >= target:
            seconds = record.get("cumulative_sim_seconds")
            return Reached(int(record["round"]), None if seconds is None else float(seconds))
    return None


def job_convergence(records: Sequence[Mapping[str, Any]], tasks: Sequence[str]) -> dict[str, Any]:
    """summary.json's `convergence`: per task, the target (TARGET_SHARE of the job's best scored value)
    and the round and simulated seconds that first reached it."""
    out: dict[str, Any] = {}
    for task in tasks:
        values = [v for r in records if (v := task_metric(r, task)) is not None]
        if not values:
            continue
        target = target_of(max(values))
        hit = reached(records, task, target)
        out[task] = {
            "target": target,
            "target_rule": f"{TARGET_SHARE} x the job's best",
            "round": None if hit is None else hit.round,
            "sim_seconds": None if hit is None else hit.sim_seconds,
        }
    return out
