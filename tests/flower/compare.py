"""What "the same job" means across engines: every file's fields but timings, equal."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# simulated device time (phases/simtime.py) is a function of the job, not of the machine: it is compared
SIMULATED = ("sim_seconds", "cumulative_sim_seconds")


def is_timing(key: str) -> bool:
    """A wall-clock measurement (`seconds`, `*_seconds`): machines and engines differ in these."""
    return (key == "seconds" or key.endswith("_seconds")) and key not in SIMULATED


def without_timings(value: Any) -> Any:
    """The value with every wall-clock key removed, at any depth."""
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if not is_timing(k)}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


def records(job: Path) -> list[dict[str, Any]]:
    return [without_timings(json.loads(line)) for line in (job / "metrics.jsonl").read_text().splitlines()]


def job_file(job: Path, name: str) -> Any:
    return without_timings(json.loads((job / name).read_text()))


def summary_outcome(job: Path) -> dict[str, Any]:
    """What a job's summary says it found (its result, traffic and phases), not how long it took."""
    s = json.loads((job / "summary.json").read_text())
    traffic = {k: v for k, v in s["totals"].items() if k.endswith("_bytes")}
    return without_timings(
        {k: s[k] for k in ("final", "allocation", "clustering", "traffic_by_device", "traffic_by_task")}
        | {"traffic": traffic}
    )


def assert_same_job(expected: Path, got: Path) -> None:
    assert records(got) == records(expected)
    for name in ("clustering.json", "allocation.json"):
        if (expected / name).exists() or (got / name).exists():
            assert job_file(got, name) == job_file(expected, name), name
    assert summary_outcome(got) == summary_outcome(expected)
