"""The main job end to end through the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from .conftest import REPO_ROOT


def _run(tmp_path, *overrides: str) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "ATLAS_CACHE_DIR": str(tmp_path / "cache")}
    result = subprocess.run(
        [sys.executable, "-m", "atlas_pl", *overrides, f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads((tmp_path / "run" / "summary.json").read_text())


def test_smoke_job_runs_a_real_split_step_for_every_client(tmp_path) -> None:
    summary = _run(tmp_path, "+experiment=smoke")
    clients = summary["clients"]
    assert len(clients) == 9
    assert sorted({c["task"] for c in clients.values()}) == ["synthetic0", "synthetic1", "synthetic2"]
    hidden = 32
    for info in clients.values():
        assert info["gradients_finite"] is True
        assert info["probe_loss"] > 0
        assert info["split"] == summary["config"]["model"]["split_point"]
        assert info["ranks"] == [summary["config"]["lora"]["rank"]] * summary["model"]["num_layers"]
        # activations (fp32) + mask and labels (int64) up; activation gradients down
        assert info["download_bytes"] % (4 * hidden) == 0
        assert info["upload_bytes"] > info["download_bytes"]
    assert summary["config"]["experiment_name"] == "smoke"
    assert summary["versions"]["torch"] and summary["versions"]["transformers"]


@pytest.mark.slow
def test_default_job_on_real_minilm_and_glue(tmp_path, glue_dir) -> None:
    summary = _run(
        tmp_path, f"data.glue_dir={glue_dir}", "data.samples_per_client=32", "data.eval_samples=32"
    )
    assert summary["model"]["name"] == "minilm" and summary["model"]["num_layers"] == 6
    assert summary["model"]["base_params"] > 20_000_000
    tasks = sorted({c["task"] for c in summary["clients"].values()})
    assert tasks == ["cola", "mrpc", "sst2"]
    for info in summary["clients"].values():
        assert info["gradients_finite"] and 0.05 < info["probe_loss"] < 5.0
