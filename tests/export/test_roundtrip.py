"""The PEFT round trip: an exported client loaded with peft gives atlas_pl's logits (fp32, atol 1e-5)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers
from peft import PeftModel

from atlas_pl.export import export_job, load_head

from .conftest import FakeJob, batch, write_job

SMOKE_TARGETS = ("query", "value", "intermediate.dense", "output.dense")


def _peft_logits(client_dir: Path, base: Path, ids: torch.Tensor, mask: torch.Tensor) -> tuple:
    """(logits with the adapter, logits with it disabled) through AutoModel + PeftModel + load_head."""
    model = PeftModel.from_pretrained(transformers.AutoModel.from_pretrained(base), client_dir).eval()
    head = load_head(client_dir)
    with torch.no_grad():
        logits = head(model(input_ids=ids, attention_mask=mask).last_hidden_state, mask)
        with model.disable_adapter():
            bare = head(model(input_ids=ids, attention_mask=mask).last_hidden_state, mask)
    return model, logits, bare


def _assert_round_trip(job: FakeJob, out: Path) -> None:
    ids, mask = batch(job.vocab_size)
    for client, atlas_model in job.models.items():
        client_dir = out / f"client_{client}"
        model, logits, bare = _peft_logits(client_dir, out / "base", ids, mask)
        with torch.no_grad():
            want = atlas_model(ids, mask)
        torch.testing.assert_close(logits, want, atol=1e-5, rtol=0)
        assert (bare - want).abs().max() > 1e-2  # the adapter, not the base, makes the match
        # every block has the client's rank for that block, and PEFT's scale is atlas_pl's alpha / r
        for block, name in _hosts(atlas_model):
            layer = model.base_model.model.get_submodule(name)
            assert layer.r["default"] == atlas_model.ranks[block], name
            assert layer.scaling["default"] == pytest.approx(16.0 / atlas_model.ranks[block]), name


def _hosts(atlas_model) -> list[tuple[int, str]]:
    """(block, Hugging Face module name) of every adapted projection."""
    backbone = atlas_model.client.backbone
    container = "h" if backbone.spec.family == "gpt2" else "encoder.layer"
    return [(b, f"{container}.{b}.{p}") for (b, p) in backbone.hosts]


def test_tiny_bert_round_trip_joins_both_halves_with_per_block_ranks(tmp_path: Path) -> None:
    job = write_job(tmp_path / "job", "tiny_bert", pooling="mean", targets=SMOKE_TARGETS)
    written = export_job(job.dir, tmp_path / "out", check=False)
    assert [w.client for w in written] == ["0", "1"]
    _assert_round_trip(job, tmp_path / "out")
    config = json.loads((tmp_path / "out" / "client_0" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["task_type"] == "FEATURE_EXTRACTION"
    assert sorted(config["target_modules"]) == sorted(
        [
            "attention.self.query",
            "attention.self.value",
            "intermediate.dense",
            "output.dense",
            "attention.output.dense",
        ]
    )
    assert config["rank_pattern"]["encoder.layer.1.attention.self.query"] == 8
    assert config["alpha_pattern"]["encoder.layer.1.attention.self.query"] == 16.0
    assert config["base_model_name_or_path"] == str(tmp_path / "out" / "base")


def test_tiny_gpt2_round_trip_conv1d(tmp_path: Path) -> None:
    job = write_job(tmp_path / "job", "tiny_gpt2", clients=((2, (4, 2, 8, 2), 2),))
    export_job(job.dir, tmp_path / "out", check=False)
    _assert_round_trip(job, tmp_path / "out")
    config = json.loads((tmp_path / "out" / "client_0" / "adapter_config.json").read_text())
    assert config["fan_in_fan_out"] is True and config["target_modules"] == ["attn.c_attn"]


def test_bert_cls_mlp_head_goes_into_modules_to_save(tmp_path: Path) -> None:
    """BERT's pooler + classifier is atlas_pl's cls/mlp head: AutoModelForSequenceClassification + PEFT
    give the logits with no atlas_pl code."""
    job = write_job(tmp_path / "job", "tiny_bert", pooling="cls", head="mlp", clients=((2, (2, 4, 8, 2), 3),))
    written = export_job(job.dir, tmp_path / "out", check=False)
    assert written[0].head_placement == "modules_to_save"
    client_dir = tmp_path / "out" / "client_0"
    assert not (client_dir / "head.safetensors").exists()
    base = transformers.AutoModelForSequenceClassification.from_pretrained(
        tmp_path / "out" / "base", num_labels=3
    )
    model = PeftModel.from_pretrained(base, client_dir).eval()
    ids, mask = batch(job.vocab_size)
    with torch.no_grad():
        got = model(input_ids=ids, attention_mask=mask).logits
        want = job.models["0"](ids, mask)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
