"""Fixtures for the data-layer tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def real_glue_dir(glue_dir: Path) -> Path:
    """The real GLUE copy, through the suite-wide fixture (which fails under CI when it is missing)."""
    return glue_dir
