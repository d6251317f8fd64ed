"""Tokenize text splits once and keep the ids on disk.

Tokenizing SST-2 train takes seconds to minutes per model, and every run of a sweep needs the same ids,
so they are cached as safetensors (no pickle: a cache file is data, never code). A cache entry is keyed
by (model_key, task, split, max_len) and stamped with a fingerprint of the source text, so an edited file
re-tokenizes instead of serving stale ids; a corrupt entry is rebuilt rather than crashing the run.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from atlas_pl.data.errors import DataError
from atlas_pl.data.glue import TextExamples
from atlas_pl.data.tokenized import KEYS, TokenizedExamples

log = logging.getLogger(__name__)

CACHE_FORMAT = "atlas-tokens-v1"


def _pad_id(tokenizer: Any) -> int:
    """The id to right-pad with: the pad token, else EOS (GPT-2 style tokenizers have no pad token)."""
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:
        pad = getattr(tokenizer, "eos_token_id", None)
    if pad is None:
        raise DataError(
            f"tokenizer {type(tokenizer).__name__} has neither a pad nor an eos token id to pad with"
        )
    return int(pad)


def tokenize_examples(
    tokenizer: Any, examples: TextExamples, max_len: int, batch_size: int = 1024
) -> TokenizedExamples:
    """Tokenize to right-padded `[N, max_len]` tensors with any HF-style tokenizer.

    The tokenizer is asked for unpadded, truncated ids and padding is done here, so tokenizers without a
    pad token (GPT-2) work without being mutated (setting `pad_token` would leak into other users).
    """
    if max_len < 1:
        raise DataError(f"max_len must be >= 1, got {max_len}")
    if batch_size < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}")
    pad = _pad_id(tokenizer)
    n = len(examples)
    ids = np.full((n, max_len), pad, dtype=np.int64)
    mask = np.zeros((n, max_len), dtype=np.int64)
    types = np.zeros((n, max_len), dtype=np.int64)
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        text_a = examples.text_a[start:stop]
        text_b = None if examples.text_b is None else examples.text_b[start:stop]
        enc = tokenizer(
            text_a, text_b, truncation=True, max_length=max_len, padding=False, return_tensors=None
        )
        rows_types = enc.get("token_type_ids")
        rows_mask = enc.get("attention_mask")
        for j, row in enumerate(enc["input_ids"]):
            length = min(len(row), max_len)
            i = start + j
            ids[i, :length] = row[:length]
            mask[i, :length] = rows_mask[j][:length] if rows_mask is not None else 1
            if rows_types is not None:
                types[i, :length] = rows_types[j][:length]
    return TokenizedExamples(
        input_ids=torch.from_numpy(ids),
        attention_mask=torch.from_numpy(mask),
        token_type_ids=torch.from_numpy(types),
        labels=torch.from_numpy(np.asarray(examples.labels, dtype=np.int64).copy()),
    )


def fingerprint_examples(examples: TextExamples) -> str:
    """sha256 of the texts and labels: identifies the source whatever it came from (file or hub)."""
    h = hashlib.sha256()
    h.update(f"{len(examples)}:{examples.text_b is not None}\0".encode())
    for i, a in enumerate(examples.text_a):
        h.update(a.encode("utf-8", "surrogatepass"))
        h.update(b"\0")
        if examples.text_b is not None:
            h.update(examples.text_b[i].encode("utf-8", "surrogatepass"))
        h.update(b"\1")
    h.update(np.ascontiguousarray(examples.labels, dtype=np.int64).tobytes())
    return h.hexdigest()


def file_fingerprint(path: str | Path) -> str:
    """sha256 of a file's bytes (use when the file is the whole source)."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "_"


def _tokenizer_descriptor(tokenizer: Any) -> str:
    """Cheap identity of the tokenizer, stored so a different tokenizer under one model_key is noticed."""
    size = getattr(tokenizer, "vocab_size", None)
    return f"{type(tokenizer).__name__}:{size}:{_pad_id(tokenizer)}"


def cache_path(cache_dir: Path, model_key: str, task: str, split: str, max_len: int) -> Path:
    """Where the entry for (model_key, task, split, max_len) lives."""
    return (
        Path(cache_dir)
        / _safe_name(model_key)
        / f"{_safe_name(task)}-{_safe_name(split)}-len{int(max_len)}.safetensors"
    )


def cached_tokenize(
    tokenizer: Any,
    examples: TextExamples,
    *,
    cache_dir: Path,
    model_key: str,
    task: str,
    split: str,
    max_len: int,
    source_fingerprint: str,
) -> TokenizedExamples:
    """`tokenize_examples` with an on-disk cache; returns the cached ids only if the source is unchanged."""
    path = cache_path(cache_dir, model_key, task, split, max_len)
    meta = {
        "format": CACHE_FORMAT,
        "model_key": str(model_key),
        "task": str(task),
        "split": str(split),
        "max_len": str(int(max_len)),
        "source_fingerprint": str(source_fingerprint),
        "tokenizer": _tokenizer_descriptor(tokenizer),
    }
    if path.is_file():
        loaded = _load_entry(path, meta, examples, max_len)
        if loaded is not None:
            log.debug("tokenized %s/%s from cache %s", task, split, path)
            return loaded
    tokenized = tokenize_examples(tokenizer, examples, max_len)
    try:
        _save_atomic(path, tokenized, meta)
    except OSError as err:  # a read-only or full cache dir must not stop the run
        log.warning("could not write token cache %s: %s", path, err)
    return tokenized


def _load_entry(
    path: Path, meta: dict[str, str], examples: TextExamples, max_len: int
) -> TokenizedExamples | None:
    """The cached tensors if the entry is readable and matches `meta` and the examples, else None."""
    try:
        with safe_open(str(path), framework="pt") as f:
            stored = f.metadata() or {}
        if stored != meta:
            log.info("token cache %s is stale (source or tokenizer changed); re-tokenizing", path)
            return None
        tensors = load_file(str(path))
        out = TokenizedExamples(**{key: tensors[key] for key in KEYS})
        if out.seq_len != max_len or not torch.equal(
            out.labels, torch.from_numpy(np.asarray(examples.labels))
        ):
            log.warning("token cache %s does not match its examples; re-tokenizing", path)
            return None
        return out
    except Exception as err:  # corrupt, truncated or foreign file: rebuild it
        log.warning("token cache %s is unreadable (%s: %s); re-tokenizing", path, type(err).__name__, err)
        return None


def _save_atomic(path: Path, tokenized: TokenizedExamples, meta: dict[str, str]) -> None:
    """Write to a temp file in the same directory, then rename: readers never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file({k: v.contiguous() for k, v in tokenized.as_dict().items()}, tmp, metadata=meta)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
