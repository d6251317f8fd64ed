"""Shared test setup: offline everywhere, deterministic torch, and locations of the real data."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]
GLUE_DIR = Path(os.environ.get("ATLAS_GLUE_DIR", REPO_ROOT.parent / "shared" / "data" / "glue"))


def cli_env(**extra: str) -> dict[str, str]:
    """Environment for a CLI subprocess: offline hub and W&B, and the session's shared model/tokenization
    cache (`ATLAS_CACHE_DIR`, set by `shared_cache_dir`)."""
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "WANDB_MODE": "offline",
        "ATLAS_CACHE_DIR": os.environ["ATLAS_CACHE_DIR"],
        **extra,
    }


def run_module(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """`python -m ARGS` from the checkout in `cli_env()`, output captured (the caller checks it)."""
    return subprocess.run(
        [sys.executable, "-m", *args],
        capture_output=True,
        text=True,
        env=cli_env(),
        cwd=REPO_ROOT,
        timeout=timeout,
    )


@pytest.fixture(scope="session", autouse=True)
def shared_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One model/tokenization cache (`paths.cache_dir`) for the whole session, in-process jobs and CLI
    subprocesses alike, so no test tokenizes again what an earlier one did, and none writes into the
    repository's .cache. Sharing is safe: an entry is keyed by (model, task, split, max_len), checked
    against a fingerprint of its source text and tokenizer, and written atomically (tokenize_cache.py).
    A test of the cache itself, or one that counts the files a build writes, passes its own directory."""
    cache = tmp_path_factory.mktemp("atlas_cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ATLAS_CACHE_DIR", str(cache))
        yield cache


@pytest.fixture(scope="session")
def glue_dir() -> Path:
    if not (GLUE_DIR / "sst2" / "train.tsv").is_file():
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the real-data tests, but GLUE data is missing at {GLUE_DIR}")
        pytest.skip(f"real GLUE data not found at {GLUE_DIR} (set ATLAS_GLUE_DIR)")
    return GLUE_DIR
