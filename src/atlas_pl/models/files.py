"""What a model directory must hold, checked from the file system alone (no torch, no transformers).

A missing or truncated weights file otherwise surfaces minutes later as a traceback from deep inside
transformers or safetensors. The safetensors format is simple enough to check for truncation without
reading the tensors: 8 bytes of header length, a JSON header whose offsets say how long the data is.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from atlas_pl.models.catalog import ModelSpec, package_dir

WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "vocab.json",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
)
_REPAIR = "re-install the model package or re-save the model (save_pretrained)"
_MAX_HEADER = 100 * 2**20  # safetensors' own limit on the JSON header

# Hugging Face config defaults the memory model reads, for config.json files that leave them out
# (the random tiny models are described by a few keys only)
_FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    "bert": {"type_vocab_size": 2, "hidden_act": "gelu"},
    "roberta": {"type_vocab_size": 2, "hidden_act": "gelu"},
    "distilbert": {"activation": "gelu"},
    "gpt2": {"activation_function": "gelu_new", "n_inner": None},
    "llama": {"hidden_act": "silu", "attention_bias": False, "mlp_bias": False},
}
_ROBERTA_POSITION_OFFSET = 2  # RoBERTa's positions start after padding_idx (1): 514 -> 512 tokens


def model_dir(spec: ModelSpec) -> Path | None:
    """The directory transformers will load from, when it is on this machine (None: hub or random)."""
    if spec.source == "local":
        return Path(spec.location)
    if spec.source == "package":
        root = package_dir(spec.location)
        return None if root is None else root / "model"
    return None


def model_config(spec: ModelSpec) -> SimpleNamespace | None:
    """The model's structural config as attributes (as a transformers config offers them), or None
    when it is not on this machine (hub models). A packaged GGUF model is described by its registry
    entry, so its checks run before the first conversion too."""
    if spec.source == "random":
        values: dict[str, Any] = dict(spec.tiny_config)
    elif spec.source == "gguf_package":
        values = dict(spec.known_config)
    else:
        directory = model_dir(spec)
        if directory is None or not (directory / "config.json").is_file():
            return None
        try:
            values = json.loads((directory / "config.json").read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return None  # reported by check_model_files
        if not isinstance(values, dict):
            return None
    return SimpleNamespace(**{**_FAMILY_DEFAULTS.get(spec.family, {}), **values})


def max_tokens(spec: ModelSpec, config: SimpleNamespace) -> int | None:
    """The longest input (tokens) the model's position embeddings allow; None if it does not say."""
    positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if not isinstance(positions, int):
        return None
    return positions - _ROBERTA_POSITION_OFFSET if spec.family == "roberta" else positions


def check_model_files(spec: ModelSpec) -> list[str]:
    """Problems with the model directory's config, weights and tokenizer files (empty when fine)."""
    directory = model_dir(spec)
    if directory is None or not directory.is_dir():
        return []  # hub / random models; a missing package is reported by the loader with its pip line
    problems = []
    config = directory / "config.json"
    try:
        if not isinstance(json.loads(config.read_text(encoding="utf-8")), dict):
            problems.append(f"{config} is not a JSON object; expected a Hugging Face model config")
    except FileNotFoundError:
        problems.append(f"model directory {directory} has no config.json")
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        problems.append(f"{config} is not valid JSON ({err}); expected a Hugging Face model config")
    present = [directory / name for name in WEIGHT_FILES if (directory / name).is_file()]
    if not present:
        problems.append(
            f"model directory {directory} has no weights; expected one of {', '.join(WEIGHT_FILES)}"
        )
    for path in present:
        if path.name == "model.safetensors":
            problem = safetensors_problem(path)
            if problem:
                problems.append(problem)
    if not any((directory / name).is_file() for name in TOKENIZER_FILES):
        problems.append(
            f"model directory {directory} has no tokenizer; expected one of {', '.join(TOKENIZER_FILES)}"
        )
    return problems


def safetensors_problem(path: Path) -> str | None:
    """Why `path` is not a complete safetensors file (truncated, or not safetensors at all), or None."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return f"{path} is truncated or empty ({size} bytes); expected a safetensors file"
        (header_len,) = struct.unpack("<Q", head)
        if header_len == 0 or header_len > min(_MAX_HEADER, size - 8):
            return f"{path} is corrupted: not a safetensors file (bad header length); {_REPAIR}"
        try:
            header = json.loads(f.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return f"{path} is corrupted: its safetensors header is not JSON; {_REPAIR}"
    if not isinstance(header, dict):
        return f"{path} is corrupted: its safetensors header is not a mapping; {_REPAIR}"
    ends = [
        entry["data_offsets"][1]
        for name, entry in header.items()
        if name != "__metadata__" and isinstance(entry, dict) and len(entry.get("data_offsets", ())) == 2
    ]
    needed = 8 + header_len + max(ends, default=0)
    if size < needed:
        return (
            f"{path} is truncated: {size} bytes, its header describes {needed}; re-install or re-save "
            "the model"
        )
    return None
