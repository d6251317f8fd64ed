"""Fixtures shared by the federation tests."""

from __future__ import annotations

import pytest

from atlas_pl.engines import centralized, inprocess


@pytest.fixture
def capture_models(monkeypatch):
    """Keep a handle on the federation a job built, to inspect the clients' adapters afterwards."""
    seen = {}

    def spying(real):
        def spy(settings, fed, tracker, *args):
            seen["fed"] = fed
            seen["result"] = real(settings, fed, tracker, *args)
            return seen["result"]

        return spy

    monkeypatch.setattr(inprocess, "run_inprocess", spying(inprocess.run_inprocess))
    monkeypatch.setattr(centralized, "run_centralized", spying(centralized.run_centralized))
    return seen
