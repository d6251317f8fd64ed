"""Fixtures shared by the federation tests."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from atlas_pl.engines import centralized, inprocess


def _spy_on_engines(patch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Keep what the job's engine was given (`fed`) and returned (`result`)."""
    seen: dict[str, Any] = {}

    def spying(real):
        def spy(settings, fed, tracker, *args):
            seen["fed"] = fed
            seen["result"] = real(settings, fed, tracker, *args)
            return seen["result"]

        return spy

    patch.setattr(inprocess, "run_inprocess", spying(inprocess.run_inprocess))
    patch.setattr(centralized, "run_centralized", spying(centralized.run_centralized))
    return seen


@pytest.fixture
def capture_models(monkeypatch):
    """Keep a handle on the federation a job built, to inspect the clients' adapters afterwards."""
    return _spy_on_engines(monkeypatch)


@dataclass(frozen=True)
class SmokeRun:
    """A finished in-process smoke job: its directory, what run_job returned, and what the engine built."""

    dir: Path
    value: float
    fed: Any  # the Federation (models, data, backbone)
    result: Any  # the engine's FederationResult (parties, host, trainers, ledger)

    def records(self) -> list[dict]:
        return [json.loads(line) for line in (self.dir / "metrics.jsonl").read_text().splitlines()]

    def config(self) -> dict:
        """The job's resolved settings, as it saved them."""
        return json.loads((self.dir / "job_config.json").read_text())


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., SmokeRun]:
    """`smoke_run(*overrides)`: the smoke job (`test_federation._cfg`) with these overrides, run once per
    session and shared by every test asking for the same overrides (in any order).

    Only for tests that read a run (its files, records, models and optimizer state) without patching the
    job or changing what they read; a test that patches or mutates runs its own job. Every job seeds
    everything it uses, so a shared run is the run each test would have made itself.
    """
    from atlas_pl.run import run_job

    from .test_federation import _cfg

    runs: dict[tuple[str, ...], SmokeRun] = {}

    def run(*overrides: str) -> SmokeRun:
        key = tuple(sorted(overrides))
        if key not in runs:
            out = tmp_path_factory.mktemp("smoke_run")
            with pytest.MonkeyPatch.context() as patch:
                seen = _spy_on_engines(patch)
                value = run_job(_cfg(out, *overrides))
            runs[key] = SmokeRun(out, value, seen["fed"], seen["result"])
        return runs[key]

    return run
