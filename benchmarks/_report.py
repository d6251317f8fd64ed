"""What every benchmark shares: composing an experiment's config offline, and writing its JSON report."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

import atlas_pl.__main__ as app
from atlas_pl.settings import Settings, build_settings


def experiment_config(overrides: list[str]) -> DictConfig:
    """The job config the CLI would compose for `overrides`, writable, with outputs in a temp directory."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with initialize_config_dir(config_dir=str(app.CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["logger=none", *overrides])
    OmegaConf.set_struct(cfg, False)
    cfg.paths.output_dir = tempfile.mkdtemp()
    return cfg


def experiment_settings(overrides: list[str]) -> Settings:
    """`experiment_config`, validated and typed as the CLI would (outputs in a temp directory)."""
    return build_settings(experiment_config(overrides))


def write_report(out_dir: str | Path, name: str, report: dict[str, Any], *, echo: bool = True) -> Path:
    """Write `report` to out_dir/name.json (and print it when `echo`): results are read, not asserted."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    text = json.dumps(report, indent=2)
    path.write_text(text + "\n")
    if echo:
        print(text)
    print(f"wrote {path}")
    return path
