"""A job directory's files as the tools that read a job after the fact see them, without torch.

The export and the privacy evaluation refuse a bad job directory in about a second, before torch or a
model is imported, so what they need from a job (its JSON files, its newest complete checkpoint, the
tensor names in it) is read here with the standard library only. Each caller passes its own error
class, so a refusal reaches the user as that tool's one-line error. checkpoint.py writes and loads
the checkpoints these functions find.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from atlas_pl.errors import AtlasError

TENSORS = "tensors.safetensors"
STATE = "state.json"


def read_json(path: Path, what: str, error: type[AtlasError]) -> Any:
    """`path` parsed, or `error` naming the file and what it should have held."""
    if not path.is_file():
        raise error(f"{path.parent} has no {path.name} ({what}); is it an atlas_pl job directory?")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise error(f"{path} ({what}) is not valid JSON: {err}") from err


def round_dir(root: Path, round_index: int) -> Path:
    return root / f"round_{round_index:03d}"


def complete_rounds(root: Path) -> list[int]:
    """Rounds with a renamed-into-place checkpoint directory, oldest first (temporaries are ignored)."""
    if not root.is_dir():
        return []
    rounds = []
    for path in root.glob("round_*"):
        suffix = path.name.removeprefix("round_")
        if path.is_dir() and suffix.isdigit() and (path / STATE).is_file():
            rounds.append(int(suffix))
    return sorted(rounds)


def newest_checkpoint(job_dir: Path, error: type[AtlasError]) -> Path:
    """The newest round directory with both checkpoint files: a job still running, or killed, is read
    as of its last finished round."""
    root = job_dir / "checkpoints"
    rounds = [r for r in complete_rounds(root) if (round_dir(root, r) / TENSORS).is_file()]
    if not rounds:
        raise error(
            f"job dir {job_dir} holds no adapters: no complete checkpoints/round_NNN/ with "
            f"{TENSORS} (was it run with checkpoint.enabled=false, or did it stop before its first round?)"
        )
    return round_dir(root, rounds[-1])


def tensor_names(path: Path, error: type[AtlasError]) -> list[str]:
    """The tensor names in a safetensors file, from its JSON header: no torch, no tensor is read."""
    try:
        with path.open("rb") as fh:
            size = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(size))
    except (OSError, ValueError) as err:
        raise error(f"{path} is not a readable safetensors file ({err})") from err
    return [k for k in header if k != "__metadata__"]
