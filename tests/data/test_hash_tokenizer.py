from __future__ import annotations

import os
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch

from atlas_pl.data import DataError, HashTokenizer

SRC = Path(__file__).resolve().parents[2] / "src"


def test_attributes_and_word_ids():
    tok = HashTokenizer(vocab_size=256)
    assert (tok.pad_token_id, tok.vocab_size, tok.name_or_path) == (0, 256, "hash-256")
    assert tok.tokenize("Hello, WORLD!don't") == ["hello", ",", "world", "!", "don", "'", "t"]
    assert tok.token_id("hello") == 4 + zlib.crc32(b"hello") % 252
    ids = tok.encode("Hello hello HELLO")
    assert ids[0] == 1 and ids[-1] == 2 and len(set(ids[1:-1])) == 1
    assert all(4 <= i < 256 for i in ids[1:-1])


def test_same_ids_in_a_fresh_process_with_another_hash_seed():
    text = "A stable hash must not depend on PYTHONHASHSEED ."
    here = HashTokenizer(1000)(text, max_length=16)["input_ids"].tolist()
    code = (
        "from atlas_pl.data.hash_tokenizer import HashTokenizer;"
        f"print(HashTokenizer(1000)({text!r}, max_length=16)['input_ids'].tolist())"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(SRC)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(here)


def test_single_batch_padding_and_truncation():
    tok = HashTokenizer(128)
    enc = tok(["one two three", "a b c d e f g h i j k l"], max_length=8)
    assert set(enc) == {"input_ids", "attention_mask", "token_type_ids"}
    assert all(v.dtype == torch.long and v.shape == (2, 8) for v in enc.values())
    assert enc["attention_mask"].tolist() == [[1] * 5 + [0] * 3, [1] * 8]
    assert enc["input_ids"][0, 5:].tolist() == [0, 0, 0]
    assert enc["input_ids"][1, -1].item() == 2  # [SEP] survives truncation
    longest = tok(["one two three", "one"], max_length=8, padding="longest")
    assert longest["input_ids"].shape == (2, 5)
    single = tok("one two", max_length=6)
    assert single["input_ids"].shape == (1, 6)


def test_pair_encoding_with_token_type_ids():
    tok = HashTokenizer(128)
    enc = tok("the cat", "sat down here", max_length=10)
    a, b = tok.convert_tokens_to_ids(["the", "cat"]), tok.convert_tokens_to_ids(["sat", "down", "here"])
    assert enc["input_ids"][0].tolist() == [1, *a, 2, *b, 2, 0, 0]
    assert enc["token_type_ids"][0].tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 0, 0]
    assert enc["attention_mask"][0].tolist() == [1] * 8 + [0] * 2
    # longest_first truncation keeps both segments and both separators
    short = tok("w " * 20, "v " * 3, max_length=10)["input_ids"][0].tolist()
    assert short.count(2) == 2 and short[-2:] == [*tok.convert_tokens_to_ids(["v"]), 2]
    assert len(short) == 10 and 0 not in short


def test_errors():
    with pytest.raises(DataError):
        HashTokenizer(4)
    with pytest.raises(DataError, match="max_length"):
        HashTokenizer(64)("x")
