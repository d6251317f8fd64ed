"""The job directory: can it be written, does it already hold a job, and what state is that job in.

Everything here runs before the model, the data or even torch is loaded (torch only when a checkpoint has
to be read), so a refusal costs about a second and leaves every file already in the directory as it was.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from atlas_pl.errors import CheckpointError, JobDirectoryError

if TYPE_CHECKING:
    from atlas_pl.settings import Settings
    from atlas_pl.tracking.checkpoint import Checkpoint

log = logging.getLogger(__name__)

DONE = "done"
FAILED = "failed.json"
JOB_FILES = ("job_config.json", "metrics.jsonl", "summary.json", DONE, FAILED, "checkpoints")
_MARKER_KEYS = ("final_mean_primary", "round")


def check_writable(
    directory: Path, what: str = "the output directory", setting: str = "hydra.run.dir / hydra.sweep.dir"
) -> None:
    """Create `directory` (Hydra would, a moment later) and prove a file can be written in it.

    Run before Hydra configures logging into it, where a failure would be a traceback. Trying is the
    only reliable test: permission bits say nothing for root, read-only mounts or /proc."""
    directory = Path(directory).absolute()
    for blocker in (directory, *directory.parents):
        if blocker.exists() and not blocker.is_dir():
            raise JobDirectoryError(
                f"{what} {directory} cannot be created: {blocker} is a file, not a directory; "
                f"choose another {setting}"
            )
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as err:
        raise JobDirectoryError(
            f"{what} {directory} cannot be created or written ({err.strerror or err}); "
            f"choose a writable {setting}"
        ) from err


def lock(out_dir: Path) -> int:
    """Hold `out_dir/.lock` for the job's lifetime: a second process (a sweep re-run started while the
    first still runs) is refused instead of writing the same checkpoints and metrics concurrently."""
    fd = os.open(out_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as err:
        os.close(fd)
        raise JobDirectoryError(f"{out_dir} is in use by another running atlas_pl process") from err
    return fd


def read_done_marker(path: Path) -> dict[str, Any]:
    """The `done` marker's content; a damaged one is refused rather than guessed at."""
    try:
        marker = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(
            f"resume=true: {path} is damaged (not valid JSON: {err}); if the job had finished, its "
            f"summary.json is still there; delete {path} and run again with resume=true to continue "
            "from the job's last checkpoint"
        ) from err
    missing = [key for key in _MARKER_KEYS if not isinstance(marker, dict) or key not in marker]
    if missing:
        raise CheckpointError(
            f"resume=true: {path} lacks {', '.join(missing)}; delete it and run again with resume=true "
            "to continue from the job's last checkpoint"
        )
    return marker


@dataclass
class JobStart:
    """How this process starts the job: skipped (finished), from a checkpoint, and whether it extends
    a done job (its `done` marker is removed only once the expensive setup has succeeded)."""

    finished: float | None = None
    checkpoint: Checkpoint | None = None
    extends_done: bool = False


def prepare(settings: Settings, out_dir: Path) -> JobStart:
    """Decide, before any real work, what this process does with `out_dir`."""
    if not settings.resume:
        present = [name for name in JOB_FILES if (out_dir / name).exists()]
        if present:
            raise JobDirectoryError(
                f"{out_dir} already holds a job ({', '.join(present)}); resume=true continues it (or skips "
                "it if it is done); to start over choose another hydra.run.dir / hydra.sweep.dir"
            )
        return JobStart()
    done = out_dir / DONE
    if done.exists():
        return _prepare_done(settings, out_dir, read_done_marker(done))
    from atlas_pl.tracking.checkpoint import complete_rounds, latest_checkpoint
    from atlas_pl.tracking.resume import check_resumable, checkpoint_root

    root = checkpoint_root(out_dir)
    checkpoint = latest_checkpoint(root)
    if checkpoint is None and complete_rounds(root):
        raise CheckpointError(
            f"resume=true: no checkpoint in {root} can be resumed from (each failed verification; the "
            "log says why); restarting would overwrite the job's history, so move the directory away "
            "or choose another hydra.run.dir to start over"
        )
    if checkpoint is None:
        log.info("resume=true: no checkpoint in %s; starting from round 1", out_dir)
        return JobStart()
    check_resumable(settings, checkpoint)
    return JobStart(checkpoint=checkpoint)


def _prepare_done(settings: Settings, out_dir: Path, marker: dict[str, Any]) -> JobStart:
    """A done job: skipped when asked for the rounds it ran, extended when asked for more (from the
    checkpoint of its last round), refused when asked for fewer or under other settings."""
    from atlas_pl.tracking.compatibility import check_settings

    if "config" in marker:
        check_settings(settings.config, marker["config"], out_dir / DONE)
    rounds, finished_round = settings.fed.rounds, int(marker["round"])
    if rounds == finished_round:
        value = marker["final_mean_primary"]  # strict JSON: null when it was not a finite number
        metric = float("nan") if value is None else float(value)
        log.info("resume=true: %s is done (final mean primary %.4f); skipped", out_dir, metric)
        return JobStart(finished=metric)
    if rounds < finished_round:
        raise CheckpointError(
            f"resume=true: {out_dir} is done after {finished_round} rounds, fed.rounds={rounds} asks "
            f"for fewer; valid: fed.rounds >= {finished_round} (more rounds extend the job)"
        )
    from atlas_pl.tracking.checkpoint import latest_checkpoint
    from atlas_pl.tracking.resume import check_resumable, checkpoint_root

    checkpoint = latest_checkpoint(checkpoint_root(out_dir))
    if checkpoint is None or checkpoint.round != finished_round:
        raise CheckpointError(
            f"resume=true: cannot extend {out_dir} to {rounds} rounds: no checkpoint of its last round "
            f"{finished_round} (checkpoint.enabled was false?)"
        )
    check_resumable(settings, checkpoint)
    log.info("resume=true: extending %s from %d to %d rounds", out_dir, finished_round, rounds)
    return JobStart(checkpoint=checkpoint, extends_done=True)
