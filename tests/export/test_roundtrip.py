"""The PEFT round trip: an exported client loaded with peft gives atlas_pl's logits (fp32, atol 1e-5)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers
from peft import PeftModel
from safetensors.torch import load_file

from atlas_pl.export import export_job, load_head

from ..tiny_models import tiny_family
from .conftest import FakeJob, batch, write_centralized_job, write_job

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


def test_the_exported_last_pooling_head_takes_the_last_real_token_with_left_or_right_padding(
    tmp_path: Path,
) -> None:
    job = write_job(tmp_path / "job", "tiny_gpt2", clients=((2, (4, 2, 8, 2), 2),))
    export_job(job.dir, tmp_path / "out", check=False)
    head = load_head(tmp_path / "out" / "client_0")
    hidden = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(1))
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 0, 0]])  # left-padded, right-padded
    with torch.no_grad():
        want = head.net(torch.stack([hidden[0, 4], hidden[1, 2]]))
        torch.testing.assert_close(head(hidden, mask), want, atol=0, rtol=0)
    assert (
        "left or right padding"
        in json.loads((tmp_path / "out" / "client_0" / "head.json").read_text())["pooling_rule"]
    )


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


def test_roberta_cls_mlp_head_goes_into_modules_to_save(tmp_path: Path) -> None:
    """RoBERTa's classification head (dense + tanh + out_proj on the first token) is atlas_pl's cls/mlp
    head: it goes into the adapter as `classifier` (no pooler, unlike BERT)."""
    folder = tmp_path / "tiny_roberta"
    tiny_family("roberta")[1].save_pretrained(folder)  # a local model directory, as a user would give one
    job = write_job(
        tmp_path / "job",
        str(folder),
        pooling="cls",
        head="mlp",
        clients=((1, (2, 4, 8), 3), (2, (8, 2, 4), 2)),
    )
    written = export_job(job.dir, tmp_path / "out")  # with the export's own check
    assert [w.head_placement for w in written] == ["modules_to_save"] * 2
    ids, mask = batch(job.vocab_size)
    for client, atlas_model in job.models.items():
        client_dir = tmp_path / "out" / f"client_{client}"
        config = json.loads((client_dir / "adapter_config.json").read_text())
        assert config["modules_to_save"] == ["classifier"] and config["task_type"] == "SEQ_CLS"
        assert config["base_model_name_or_path"] == str(folder)  # a local model: its folder
        saved = load_file(client_dir / "adapter_model.safetensors")
        assert {
            "base_model.model.classifier.dense.weight",
            "base_model.model.classifier.out_proj.bias",
        } <= set(saved)
        assert not (client_dir / "head.safetensors").exists()
        base = transformers.AutoModelForSequenceClassification.from_pretrained(
            folder, num_labels=atlas_model.server.head.num_labels
        )
        model = PeftModel.from_pretrained(base, client_dir).eval()
        with torch.no_grad():
            got = model(input_ids=ids, attention_mask=mask).logits
            want = atlas_model(ids, mask)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_a_centralized_job_exports_one_adapter_per_task(tmp_path: Path) -> None:
    """ablation=centralized: the checkpoint's models are one per task (`model/<task>/`), sharing one
    adapter; each exports under the task's name with that task's labels, head and per-task metrics."""
    job = write_centralized_job(tmp_path / "job", {"sst2": 2, "mnli": 3})
    written = export_job(job.dir, tmp_path / "out")  # with the export's own check
    assert [(w.client, w.task) for w in written] == [("mnli", "mnli"), ("sst2", "sst2")]
    _assert_round_trip(job, tmp_path / "out")
    sst2, mnli = (
        load_file(tmp_path / "out" / f"client_{t}" / "adapter_model.safetensors") for t in job.models
    )
    assert sst2.keys() == mnli.keys() and all(torch.equal(sst2[k], mnli[k]) for k in sst2)  # one adapter
    info = json.loads((tmp_path / "out" / "client_mnli" / "atlas_export.json").read_text())
    assert info["ablation"] == "centralized" and info["eta"] is None and info["cluster"] is None
    assert info["labels"] == ["entailment", "neutral", "contradiction"]
    assert info["metrics"] == {"primary": 0.75, "accuracy": 0.75} and info["metrics_round"] == 2
    card = (tmp_path / "out" / "client_mnli" / "README.md").read_text()
    for fact in (
        "# atlas_pl centralized model: mnli",
        "for the centralized baseline (ablation `centralized`)",
        "| split point | none: trained centrally on every client's data, one adapter shared by all tasks |",
        "| primary | 0.7500 |",
    ):
        assert fact in card, fact
