"""Whether a job may be continued under the settings it is asked to run with.

Pure and torch-free, so a mismatched `resume=true` is refused in about a second.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from atlas_pl.errors import CheckpointError

# keys that may differ between the run that wrote a checkpoint and the one resuming it
RESUMABLE_DIFFERENCES = (
    "resume",
    "logger",
    "paths",
    "data.glue_dir",  # resolved from paths: a moved checkout or another mount is the same data
    "data.cache_dir",
    "fed.rounds",
    "trainer.num_threads",
    "fed.eval_every",  # scoring reads the models and never changes their training
    "checkpoint",
)
# settings added since checkpoints were first written, with the value that reproduces the older runs: a
# checkpoint without the key was written under that value, and resuming under another one would mix two runs
ADDED_SETTINGS = {
    "data.personal_share": 0.0,
    "ablation.adapters": "shared",
    "clustering.by_task": False,
}


def comparable_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The resolved config minus what may legitimately change on resume (paths, logger, rounds, ...)."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if any(prefix == k or prefix.startswith(k + ".") for k in RESUMABLE_DIFFERENCES):
            return
        if isinstance(value, Mapping):
            for key, sub in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), sub)
        else:
            flat[prefix] = value

    walk("", config)
    return flat


def config_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """'key: saved -> current' for every saved setting that differs (resuming would mix two runs).

    Keys the saved config does not have are settings added to atlas_pl since; their defaults keep the
    old behaviour, so they do not block resuming an older checkpoint, unless the current run sets one
    of them (ADDED_SETTINGS) away from the value the older run had in effect.
    """
    a, b = comparable_config(saved), comparable_config(current)
    for key, old in ADDED_SETTINGS.items():
        if key not in a and key in b:
            a[key] = old
    return [f"{k}: {a[k]!r} -> {b.get(k, '<absent>')!r}" for k in sorted(a) if a[k] != b.get(k, "<absent>")]


def check_settings(current: Mapping[str, Any], saved_config: Mapping[str, Any], source: Path) -> None:
    """Refuse, before any work, to continue a job (from `source`) under settings it was not run with.

    `current` and `saved_config` are resolved configs (Settings.config)."""
    differences = config_differences(saved_config, current)
    if differences:
        shown = "; ".join(differences[:8]) + (
            f"; and {len(differences) - 8} more" if len(differences) > 8 else ""
        )
        raise CheckpointError(
            f"resume=true: {source} was written with different settings ({shown}); resume with the "
            "original settings (only fed.rounds, logger, paths, trainer.num_threads and checkpoint.* may "
            "change), or start a new run in another directory"
        )
