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


def cli_env(cache: Path, **extra: str) -> dict[str, str]:
    """Environment for a CLI subprocess: offline hub and W&B, and its own model/data cache so tests cannot
    share (or corrupt) each other's cached tokenizations."""
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "WANDB_MODE": "offline",
        "ATLAS_CACHE_DIR": str(cache),
        **extra,
    }


@pytest.fixture(scope="session")
def glue_dir() -> Path:
    if not (GLUE_DIR / "sst2" / "train.tsv").is_file():
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the real-data tests, but GLUE data is missing at {GLUE_DIR}")
        pytest.skip(f"real GLUE data not found at {GLUE_DIR} (set ATLAS_GLUE_DIR)")
    return GLUE_DIR
