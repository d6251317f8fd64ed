"""Fixtures for the data-layer tests: where the real GLUE copy lives."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# tests/data/conftest.py -> parents[2] is the repo root; the shared data sits next to it.
DEFAULT_GLUE_DIR = Path(__file__).resolve().parents[2].parent / "shared/data/glue"


def local_glue_dir() -> Path:
    return Path(os.environ.get("ATLAS_GLUE_DIR") or DEFAULT_GLUE_DIR)


@pytest.fixture(scope="session")
def real_glue_dir() -> Path:
    path = local_glue_dir()
    if not path.is_dir():
        pytest.skip(f"real GLUE copy not found at {path} (set ATLAS_GLUE_DIR to its location)")
    return path
