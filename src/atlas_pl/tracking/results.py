"""Result files of a job (DESIGN.md §7), written atomically so a crash never leaves half a file."""

from __future__ import annotations

import json
import math
import os
import platform
import resource
import sys
from pathlib import Path
from typing import Any


def write_json(path: Path, payload: Any) -> None:
    """Write JSON via a temp file + rename: readers see the old file or the new one, never a torn one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(_dumps(payload, indent=2) + "\n")
    os.replace(tmp, path)


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    """Replace a JSON-lines file atomically (temp file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(_dumps(r) + "\n" for r in records))
    os.replace(tmp, path)


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fh.write(_dumps(record) + "\n")


def strict(obj: Any) -> Any:
    """`obj` with NaN and infinities as None: Python's json writes them as bare NaN / Infinity tokens,
    which strict JSON parsers (jq, JavaScript, most other languages) reject."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {key: strict(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict(value) for value in obj]
    if hasattr(obj, "item") and getattr(obj, "ndim", 0) == 0:
        return strict(obj.item())
    if hasattr(obj, "tolist"):
        return strict(obj.tolist())
    return obj


def _dumps(payload: Any, indent: int | None = None) -> str:
    return json.dumps(strict(payload), indent=indent, default=_default, allow_nan=False)


def _default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__}")


def versions() -> dict[str, str]:
    """Versions of everything that can change a result, for summary.json (read from metadata, no imports)."""
    from importlib import metadata

    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for dist in (
        "atlas-pl",
        "torch",
        "transformers",
        "lightning",
        "hydra-core",
        "omegaconf",
        "peft",
        "numpy",
        "scikit-learn",
        "wandb",
        "safetensors",
    ):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out


def peak_memory() -> dict[str, float]:
    """Peak resident memory of this process (and of the GPU when one was used), in MiB."""
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = {"cpu_max_rss_mib": rss_kib / 1024.0}
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        out["gpu_max_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out
