"""Shared test setup: offline everywhere, deterministic torch, and locations of the real data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]
GLUE_DIR = Path(os.environ.get("ATLAS_GLUE_DIR", REPO_ROOT.parent / "shared" / "data" / "glue"))


@pytest.fixture(scope="session")
def glue_dir() -> Path:
    if not (GLUE_DIR / "sst2" / "train.tsv").is_file():
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the real-data tests, but GLUE data is missing at {GLUE_DIR}")
        pytest.skip(f"real GLUE data not found at {GLUE_DIR} (set ATLAS_GLUE_DIR)")
    return GLUE_DIR
