"""The activation-noise defense in training, and the privacy evaluation on a finished job."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from atlas_pl.privacy.jobs import trained_client
from atlas_pl.privacy.targets import trained_half

from ..conftest import REPO_ROOT

pytestmark = pytest.mark.integration


def test_the_white_box_half_is_the_clients_trained_half(smoke_run) -> None:
    run = smoke_run("ablation=fedavg", "fed.rounds=1")
    party = run.result.parties[0]
    client = trained_client(run.dir, 0)
    assert client.split == party.model.split
    half = trained_half(run.fed.backbone, client, client.split)
    batch = run.fed.data.eval[party.task]
    ids, mask, types = batch.input_ids[:8], batch.attention_mask[:8], batch.token_type_ids[:8]
    with torch.no_grad():
        assert torch.equal(half(ids, mask, types), party.model.client(ids, mask, types))
    # above the client's split, the server-half adapters trained for it
    deeper = trained_half(run.fed.backbone, client, client.split + 1)
    with torch.no_grad():
        assert not torch.equal(deeper(ids, mask, types)[:, :1], half(ids, mask, types)[:, :1])


def test_noise_changes_training_and_is_recorded(smoke_run) -> None:
    clean = smoke_run("ablation=fedavg", "fed.rounds=1")
    noisy = smoke_run("ablation=fedavg", "fed.rounds=1", "privacy.activation_noise=1.0")
    summary = json.loads((noisy.dir / "summary.json").read_text())
    assert summary["defenses"]["activation_noise"] == 1.0
    assert json.loads((clean.dir / "summary.json").read_text())["defenses"]["activation_noise"] == 0.0
    losses = [[c["train_loss"] for c in r.records()[0]["clients"].values()] for r in (clean, noisy)]
    assert losses[0] != losses[1]
    # the same bytes cross the split: noise changes values, not sizes
    assert (
        clean.records()[0]["clients"]["0"]["upload_bytes"]
        == noisy.records()[0]["clients"]["0"]["upload_bytes"]
    )


def test_privacy_cli_attacks_a_job_and_scores_the_tradeoff(smoke_run, tmp_path) -> None:
    clean = smoke_run("ablation=fedavg", "fed.rounds=1")
    noisy = smoke_run("ablation=fedavg", "fed.rounds=1", "privacy.activation_noise=1.0")
    out = tmp_path / "privacy"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "atlas_pl.privacy",
            "model=tiny_bert",
            f"target.job_dir={clean.dir}",
            "auxiliary.task=synthetic0",
            "attack=fast",
            "target.samples=12",
            "auxiliary.samples=120",
            "target.splits=[1,2]",
            "attack.names=[vmi,inverter]",
            f"tradeoff.jobs=[{clean.dir},{noisy.dir}]",
            "sketch.shadows=8",
            "sketch.victims=6",
            "sketch.samples_per_client=32",
            f"hydra.run.dir={out}",
        ],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((out / "privacy.json").read_text())
    assert result["complete"] is True
    cases = {(r["knowledge"], r["split"], r["attack"]) for r in result["attacks"]}
    assert cases == {
        (k, s, a) for k in ("white_box", "semi_white_box") for s in (1, 2) for a in ("vmi", "inverter")
    }
    assert all(len(r["examples"]) == 5 and r["sentences"] == 12 for r in result["attacks"])
    points = {p["activation_noise"]: p for p in result["tradeoff"]}
    assert set(points) == {0.0, 1.0}
    assert points[0.0]["dcs"] == pytest.approx(1 / (1 + (0.5 * points[0.0]["ap"] ** 2) ** 0.5))
    assert points[1.0]["ap"] < points[0.0]["ap"]
    assert result["sketch"]["victims"] == 6 and 0.0 <= result["sketch"]["accuracy"] <= 1.0
    assert (out / "ap_by_split.png").is_file() and (out / "tradeoff.png").is_file()
    assert "| white_box | 0 | 1 |" in done.stdout
