"""Trained clients out as standard PEFT LoRA adapters: `python -m atlas_pl.export JOB_DIR --out DIR`.

Each client becomes `DIR/client_<id>/` with adapter_config.json + adapter_model.safetensors (PEFT's
format, both halves of the split model joined over all blocks, per-module ranks in rank_pattern /
alpha_pattern), its task head, atlas_export.json and a README.md model card. `load_head` and
`load_classifier` load them back; heads.py says where a head goes and why.

Attributes are imported on first use, so the command line refuses a bad job directory before torch,
transformers or peft are imported.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_LAZY = {
    "ExportError": "atlas_pl.export.job",
    "export_job": "atlas_pl.export.writer",
    "ExportedClient": "atlas_pl.export.writer",
    "load_head": "atlas_pl.export.heads",
    "load_classifier": "atlas_pl.export.loader",
    "ExportedClassifier": "atlas_pl.export.loader",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'atlas_pl.export' has no attribute {name!r}")
