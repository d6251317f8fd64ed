"""What an export reads from a job directory, checked before torch or a model is loaded.

The checkpoint is the source of truth for the clients' adapters: a client exists for the export when
the newest complete round holds its `model/<id>/...` tensors (a client Phase 2 dropped has none), so a
job that is still running, or was killed, exports the state of its last finished round. The resolved
config says how to rebuild the model around those tensors; the round's records add what the model card
reports (task, cluster, metrics), and are optional.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from atlas_pl.errors import AtlasError
from atlas_pl.tracking.job_files import STATE, TENSORS, newest_checkpoint, read_json, tensor_names


class ExportError(AtlasError, ValueError):
    """A job directory, client or output folder the export cannot use; the message says what is valid."""


_MODEL_TENSOR = re.compile(r"model/([^/]+)/")


@dataclass(frozen=True)
class JobModel:
    """The few config keys that rebuild a client's model around its checkpointed tensors."""

    name: str
    pooling: str | None
    head: str
    targets: tuple[str, ...] | None
    alpha: float
    dropout: float
    seed: int
    cache_dir: Path | None

    @classmethod
    def from_config(cls, config: dict[str, Any], source: Path) -> JobModel:
        try:
            model, lora = config["model"], config["lora"]
            targets = model.get("lora_targets")
            cache = (config.get("paths") or {}).get("cache_dir")
            return cls(
                name=str(model["name"]),
                pooling=None if model.get("pooling") is None else str(model["pooling"]),
                head=str(model.get("head", "linear")),
                targets=tuple(str(t) for t in targets) if targets else None,
                alpha=float(lora["alpha"]),
                dropout=float(lora.get("dropout", 0.0)),
                seed=int(config.get("seed", 0)),
                cache_dir=Path(str(cache)) if cache else None,
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ExportError(
                f"{source} lacks the model / lora settings an export needs ({type(err).__name__}: {err})"
            ) from err


@dataclass(frozen=True)
class ExportJob:
    """A job directory as the export sees it: config, newest checkpoint, and the clients it holds."""

    root: Path
    config: dict[str, Any]
    model: JobModel
    checkpoint: Path  # checkpoints/round_NNN
    clients: tuple[str, ...]  # ids with tensors in the checkpoint, in the job's order
    records: dict[str, dict[str, Any]]  # id -> the client's entry in the newest evaluated record
    record_round: int | None  # the round those entries come from

    @property
    def round(self) -> int:
        return int(self.checkpoint.name.removeprefix("round_"))


def _client_order(name: str) -> tuple[int, int | str]:
    return (0, int(name)) if name.isdigit() else (1, name)


def _newest_record(state: dict[str, Any]) -> tuple[dict[str, dict[str, Any]], int | None]:
    """Per-client entries of the last evaluated round in the checkpoint's records (none: empty), and
    per-task ones under the task's name: a centralized job's models are one per task."""
    records = state.get("records") or []
    for record in reversed(records):
        if isinstance(record, dict) and record.get("evaluated", True) and record.get("clients"):
            entries = {str(k): v for k, v in record["clients"].items()}
            for task, metrics in (record.get("per_task") or {}).items():
                entries.setdefault(str(task), {"task": task, **metrics})
            return entries, record.get("round")
    return {}, None


def read_job(job_dir: str | Path) -> ExportJob:
    """The job at `job_dir`, or an ExportError naming what is missing (nothing heavy is loaded)."""
    root = Path(job_dir).expanduser()
    if not root.is_dir():
        raise ExportError(
            f"job directory {root} does not exist; give the output directory of an atlas_pl job"
        )
    config_path = root / "job_config.json"
    if not config_path.is_file():
        raise ExportError(
            f"{root} is not an atlas_pl job directory: it has no job_config.json (a job writes it at start)"
        )
    config = read_json(config_path, "the job's resolved config", ExportError)
    model = JobModel.from_config(config, config_path)
    checkpoint = newest_checkpoint(root, ExportError)
    names = tensor_names(checkpoint / TENSORS, ExportError)
    ids = {m.group(1) for n in names if ".adapter.factors." in n and (m := _MODEL_TENSOR.match(n))}
    if not ids:
        raise ExportError(f"{checkpoint} holds no client adapters (no model/<client>/...adapter tensors)")
    state = read_json(checkpoint / STATE, "the checkpoint's state", ExportError)
    records, record_round = _newest_record(state if isinstance(state, dict) else {})
    return ExportJob(
        root=root,
        config=config,
        model=model,
        checkpoint=checkpoint,
        clients=tuple(sorted(ids, key=_client_order)),
        records=records,
        record_round=record_round,
    )


def pick_clients(job: ExportJob, client: str | None) -> list[str]:
    """All clients, or the one asked for; an unknown one is refused with the valid ids."""
    if client is None:
        return list(job.clients)
    if client in job.clients:
        return [client]
    dropped = sorted((k for k, r in job.records.items() if r.get("dropped")), key=_client_order)
    note = f" (dropped by Phase 2, no adapters: {', '.join(dropped)})" if dropped else ""
    raise ExportError(
        f"--client {client}: {job.checkpoint} holds no client {client}; valid: {', '.join(job.clients)}{note}"
    )


def check_out_dir(out: Path, overwrite: bool, job_root: Path | None = None) -> None:
    """The output folder must be new or empty, unless the user said to replace it; never the job's."""
    if job_root is not None:
        root = job_root.resolve()
        if out.resolve() == root or out.resolve() in root.parents:
            raise ExportError(
                f"--out {out} would replace the job directory {root}; choose a folder outside it"
            )
    for blocker in (out, *out.parents):
        if blocker.exists() and not blocker.is_dir():
            raise ExportError(f"--out {out}: {blocker} is a file, not a directory; choose another --out")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ExportError(
            f"--out {out} exists and is not empty; choose a new or empty folder, or add --overwrite to "
            "replace it"
        )


@dataclass(frozen=True)
class ExportPlan:
    """What an export will do, decided before anything heavy is imported or loaded."""

    job: ExportJob
    clients: list[str]
    out: Path  # absolute


def plan_export(
    job_dir: str | Path, out: str | Path, client: str | int | None = None, overwrite: bool = False
) -> ExportPlan:
    """Check the job directory, the client and the output folder; ExportError names what is valid."""
    job = read_job(job_dir)
    clients = pick_clients(job, None if client is None else str(client))
    target = Path(out).expanduser().absolute()
    check_out_dir(target, overwrite, job.root)
    return ExportPlan(job, clients, target)
