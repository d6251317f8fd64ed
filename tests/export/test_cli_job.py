"""The export command on a real smoke job's output directory (integration: two subprocesses)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from atlas_pl.export import load_classifier
from atlas_pl.export.writer import client_model, probe_batch
from atlas_pl.models.catalog import resolve_model_spec
from atlas_pl.models.loading import load_base
from atlas_pl.models.split import SharedBackbone
from atlas_pl.tracking.checkpoint import latest_checkpoint

from ..conftest import run_module

pytestmark = pytest.mark.integration


def test_smoke_job_exports_every_client_as_a_peft_adapter(tmp_path: Path) -> None:
    job = tmp_path / "job"
    ran = run_module("atlas_pl", "+experiment=smoke", "fed.rounds=2", f"hydra.run.dir={job}")
    assert ran.returncode == 0, ran.stderr[-3000:]
    out = tmp_path / "export"
    exported = run_module("atlas_pl.export", str(job), "--out", str(out))
    assert exported.returncode == 0, exported.stderr[-3000:]
    lines = exported.stdout.strip().splitlines()
    assert len(lines) == 10 and lines[-1].startswith("9 adapter(s) in"), exported.stdout
    assert all("checked: max |logit diff|" in line for line in lines[:9])
    assert exported.stderr.strip() == ""  # no third-party warnings on a normal export
    assert sorted(p.name for p in out.iterdir()) == ["base", *(f"client_{k}" for k in range(9))]

    # the exported adapters, loaded through PEFT, are the job's models as its checkpoint holds them
    config = json.loads((job / "job_config.json").read_text())
    spec = resolve_model_spec(config["model"]["name"])
    base, _ = load_base(spec, seed=config["seed"])
    backbone = SharedBackbone(spec, base, targets=config["model"]["lora_targets"], pooling="mean")
    checkpoint = latest_checkpoint(job / "checkpoints")
    assert checkpoint is not None and checkpoint.round == 2
    ids, mask = probe_batch(int(base.config.vocab_size), seed=3)
    allocation = json.loads((job / "allocation.json").read_text())["clients"]
    for client in ("0", "8"):
        info = json.loads((out / f"client_{client}" / "atlas_export.json").read_text())
        assert info["split"] == allocation[int(client)]["built_split"]
        assert info["ranks"] == allocation[int(client)]["built_ranks"]
        atlas_model = client_model(backbone, checkpoint.tensors, client, config["lora"]["alpha"], job)
        with torch.no_grad():
            torch.testing.assert_close(
                load_classifier(out / f"client_{client}")(ids, mask),
                atlas_model(ids, mask),
                atol=1e-5,
                rtol=0,
            )

    again = run_module("atlas_pl.export", str(job), "--out", str(out), "--client", "3")
    assert again.returncode == 2 and "--overwrite" in again.stderr
