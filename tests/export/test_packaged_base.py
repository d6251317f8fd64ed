"""A packaged model's export names its public hub id as the base (adapter_config.json, the card's
`base_model:` and loading lines) and records the folder its weights were loaded from on this machine.

The real packaged models take seconds to load, so a tiny_bert saved to a folder stands in for a package:
the registry entry is a copy of tiny_bert's with source "package", a hub id and a note.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers

from atlas_pl.export import export_job, load_classifier
from atlas_pl.export.loader import _base_path
from atlas_pl.models import loading
from atlas_pl.models.catalog import REGISTRY

from .conftest import batch, write_job

HUB_ID = "example-org/tiny-bert"
NOTE = "Trained on de-quantized weights: the hub's will not reproduce the logits exactly."


def test_packaged_models_name_their_public_hub_id() -> None:
    assert REGISTRY["minilm"].public_id == "sentence-transformers/all-MiniLM-L6-v2"
    assert REGISTRY["smollm2"].public_id == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert "Q4_1" in REGISTRY["smollm2"].base_note and "bf16" in REGISTRY["smollm2"].base_note
    assert REGISTRY["bert"].public_id == "bert-base-uncased" and REGISTRY["tiny_bert"].public_id is None


def test_a_packaged_base_is_named_by_its_hub_id_and_loaded_from_its_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = write_job(tmp_path / "job", "tiny_bert", pooling="mean", clients=((2, (4, 8, 2, 4), 2),))
    folder = tmp_path / "site-packages" / "tiny_pkg" / "model"
    loading.load_base(REGISTRY["tiny_bert"], seed=0)[0].save_pretrained(folder)  # the job's base weights
    packaged = dataclasses.replace(
        REGISTRY["tiny_bert"], source="package", location="tiny_pkg", hub_id=HUB_ID, base_note=NOTE
    )

    def from_package(spec: Any, **kwargs: Any) -> tuple[Any, None]:
        model = transformers.AutoModel.from_pretrained(folder, dtype=torch.float32)
        return model.eval().requires_grad_(False), None

    monkeypatch.setattr("atlas_pl.export.writer.resolve_model_spec", lambda name: packaged)
    monkeypatch.setattr(loading, "load_base", from_package)
    written = export_job(job.dir, tmp_path / "out")  # the check loads the base from the folder
    assert written[0].max_diff is not None and not (tmp_path / "out" / "base").exists()

    client_dir = tmp_path / "out" / "client_0"
    config = json.loads((client_dir / "adapter_config.json").read_text())
    info = json.loads((client_dir / "atlas_export.json").read_text())
    assert config["base_model_name_or_path"] == HUB_ID
    assert info["base"] == str(folder) and info["base_hub_id"] == HUB_ID and info["base_note"] == NOTE
    card = (client_dir / "README.md").read_text()
    for fact in (
        f"base_model: {HUB_ID}\n",
        f'AutoModel.from_pretrained("{HUB_ID}")',
        f"| base model | tiny_bert: {HUB_ID} (weights loaded from `{folder}` on the exporting machine) |",
        NOTE,
    ):
        assert fact in card, fact

    ids, mask = batch(job.vocab_size)
    with torch.no_grad():  # load_classifier takes the exact weights from the folder while it exists
        torch.testing.assert_close(load_classifier(client_dir)(ids, mask), job.models["0"](ids, mask))
    shutil.rmtree(folder)  # elsewhere (no package): the hub id
    assert _base_path(client_dir, info, None) == HUB_ID
