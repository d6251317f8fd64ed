"""Round checkpoints: safetensors for tensors, JSON for everything else, no pickle (DESIGN.md §7).

A checkpoint is the directory `checkpoints/round_NNN/` holding `tensors.safetensors` and `state.json`.
It is written into a temporary sibling and renamed into place, and `state.json` carries the SHA-256 of
the tensor file, so a crash mid-write leaves no `round_NNN` at all and a damaged file is recognised
instead of being loaded. What the next round needs to continue exactly where an uninterrupted job
would be: every client's trainable parameters, the optimizers' moments, the global and per-loader RNG
states, the orchestrator's groups and mixing matrix, the records and byte counters so far. The file
names and the finding of complete rounds live in job_files.py, without torch, because the export and
the privacy evaluation read job directories before they import it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from atlas_pl.errors import CheckpointError
from atlas_pl.tracking.compatibility import (  # noqa: F401  (re-exported: tests and resume import them here)
    RESUMABLE_DIFFERENCES,
    comparable_config,
    config_differences,
)
from atlas_pl.tracking.job_files import STATE, TENSORS, complete_rounds, round_dir

log = logging.getLogger(__name__)

FORMAT = 2  # 2: engine state as ledger + coordinator (parties/engines redesign)


@dataclass
class Checkpoint:
    """One complete round checkpoint as loaded: its directory, JSON state and tensors."""

    path: Path
    state: dict[str, Any]
    tensors: dict[str, torch.Tensor]

    @property
    def round(self) -> int:
        return int(self.state["round"])


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(
    root: Path, round_index: int, state: dict[str, Any], tensors: Mapping[str, torch.Tensor], keep: int = 2
) -> Path:
    """Write round `round_index` atomically and keep only the newest `keep` rounds (0 = keep all)."""
    root.mkdir(parents=True, exist_ok=True)
    final = round_dir(root, round_index)
    for stale in root.glob(".round_*.tmp-*"):  # left by a process killed mid-write (one writer per job)
        shutil.rmtree(stale, ignore_errors=True)
    tmp = root / f".{final.name}.tmp-{os.getpid()}"
    tmp.mkdir()
    cpu = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    save_file(cpu, str(tmp / TENSORS))
    _fsync(tmp / TENSORS)
    payload = {"format": FORMAT, "round": round_index, "tensors_sha256": _sha256(tmp / TENSORS), **state}
    (tmp / STATE).write_text(json.dumps(payload, default=_json_default) + "\n")
    _fsync(tmp / STATE)
    if final.exists():  # a round re-done after resuming from an earlier one
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync(root)
    if keep > 0:
        for old in complete_rounds(root)[:-keep]:
            shutil.rmtree(round_dir(root, old), ignore_errors=True)
    return final


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot serialise {type(obj).__name__} into a checkpoint")


def load_checkpoint(path: Path) -> Checkpoint:
    """Load and verify one checkpoint directory; a clear CheckpointError if it is not a valid one."""
    state_path, tensor_path = path / STATE, path / TENSORS
    if not state_path.is_file() or not tensor_path.is_file():
        raise CheckpointError(f"{path} is not a checkpoint: it needs {STATE} and {TENSORS}")
    try:
        state = json.loads(state_path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{state_path} is not valid JSON ({err})") from err
    if state.get("format") != FORMAT:
        raise CheckpointError(
            f"{state_path} has checkpoint format {state.get('format')!r}; this atlas_pl reads format {FORMAT}"
        )
    if _sha256(tensor_path) != state.get("tensors_sha256"):
        raise CheckpointError(f"{tensor_path} does not match the SHA-256 recorded in {STATE}: damaged")
    return Checkpoint(path, state, load_file(str(tensor_path)))


def latest_checkpoint(root: Path) -> Checkpoint | None:
    """The newest checkpoint that verifies; damaged newer ones are reported and passed over."""
    for round_index in reversed(complete_rounds(root)):
        try:
            return load_checkpoint(round_dir(root, round_index))
        except CheckpointError as err:
            log.warning("skipping checkpoint: %s", err)
    return None


# ---- what goes in: RNG states, optimizer moments, module parameters ----


def rng_state() -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Python, NumPy and torch global RNG states as (JSON part, tensor part).

    On a GPU run, the current CUDA device's generator too (only when CUDA is already in use: asking for
    the state would otherwise start CUDA on every visible GPU for a CPU job).
    """
    version, internal, gauss = random.getstate()
    # the legacy tuple form (numpy's stubs type get_state() as a union with the dict form)
    name, keys, pos, has_gauss, cached = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state())
    json_part = {
        "python": [version, list(internal), gauss],
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
    }
    tensors = {"rng/torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["rng/cuda"] = torch.cuda.get_rng_state()
    return json_part, tensors


def restore_rng(json_part: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> None:
    version, internal, gauss = json_part["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = json_part["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["rng/torch"])
    if "rng/cuda" in tensors:
        if torch.cuda.is_available():
            torch.cuda.set_rng_state(tensors["rng/cuda"])
        else:
            log.warning("the checkpoint comes from a GPU run; resumed on CPU it will not repeat it exactly")


def optimizer_tensors(prefix: str, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """Per-parameter state (AdamW: step, exp_avg, exp_avg_sq) keyed by the parameter's position."""
    out: dict[str, torch.Tensor] = {}
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for index, param in enumerate(params):
        for key, value in optimizer.state.get(param, {}).items():
            tensor = value if isinstance(value, torch.Tensor) else torch.tensor(value, dtype=torch.float64)
            out[f"{prefix}/{index}/{key}"] = tensor
    return out


def restore_optimizer(
    prefix: str, optimizer: torch.optim.Optimizer, tensors: Mapping[str, torch.Tensor]
) -> None:
    """Give `optimizer` back the state `optimizer_tensors` saved (parameters matched by position)."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    optimizer.state.clear()
    for name, tensor in tensors.items():
        if not name.startswith(prefix + "/"):
            continue
        index_text, key = name[len(prefix) + 1 :].split("/", 1)
        index = int(index_text)
        if index >= len(params):
            raise CheckpointError(
                f"{name}: the checkpoint's optimizer has more parameters than this run's ({len(params)})"
            )
        param = params[index]
        optimizer.state.setdefault(param, {})[key] = tensor.to(param.device) if key != "step" else tensor


def module_tensors(prefix: str, module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The trainable parameters only: the frozen base is rebuilt from the model package, not saved."""
    return {f"{prefix}/{n}": p for n, p in module.named_parameters() if p.requires_grad}


@torch.no_grad()
def restore_module(prefix: str, module: torch.nn.Module, tensors: Mapping[str, torch.Tensor]) -> None:
    """Copy saved values into the existing parameters (identity kept, so optimizers still point at them)."""
    expected = dict(module_tensors(prefix, module))
    saved = {k: v for k, v in tensors.items() if k.startswith(prefix + "/")}
    if set(expected) != set(saved):
        missing = sorted(set(expected) - set(saved))[:3]
        extra = sorted(set(saved) - set(expected))[:3]
        raise CheckpointError(
            f"{prefix}: the checkpoint's parameters do not match this run's model "
            f"(missing {missing}, unexpected {extra})"
        )
    for name, param in expected.items():
        value = saved[name]
        if tuple(value.shape) != tuple(param.shape):
            raise CheckpointError(
                f"{name}: shape {tuple(value.shape)} in the checkpoint, {tuple(param.shape)} in this run"
            )
        param.copy_(value.to(param.device, param.dtype))


def generator_tensors(prefix: str, generators: Iterable[torch.Generator]) -> dict[str, torch.Tensor]:
    return {f"{prefix}/{i}": g.get_state() for i, g in enumerate(generators)}


def restore_generators(
    prefix: str, generators: Iterable[torch.Generator], tensors: Mapping[str, torch.Tensor]
) -> None:
    for i, g in enumerate(generators):
        g.set_state(tensors[f"{prefix}/{i}"])
