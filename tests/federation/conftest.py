"""Fixtures shared by the federation tests."""

from __future__ import annotations

import pytest

from atlas_pl.federation import loop as loop_module


@pytest.fixture
def capture_models(monkeypatch):
    """Keep a handle on the federation a job built, to inspect the clients' adapters afterwards."""
    seen = {}
    real = loop_module.run_federation

    def spy(cfg, fed, tracker, *args):
        seen["fed"] = fed
        seen["result"] = real(cfg, fed, tracker, *args)
        return seen["result"]

    monkeypatch.setattr("atlas_pl.run.run_federation", spy)
    return seen
