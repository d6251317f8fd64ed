"""Per-round tracking: metrics.jsonl always, plus W&B (offline by default), CSV, or nothing.

W&B runs go through Lightning's WandbLogger so users get the usual integration; one job is one W&B run
(group = experiment, job_type = ablation, tags with eta and seed) and `round` is the step metric.
`close()` always finishes the run, also when the job fails, so multirun jobs never merge.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from atlas_pl.settings import Settings
from atlas_pl.tracking.results import append_jsonl, write_jsonl

log = logging.getLogger(__name__)


SUMMARY_SCALARS = ("mean_accuracy", "worst_accuracy", "std_accuracy", "mean_primary")
PERSONAL_PREFIX = "personal/"  # the same names on the clients' personal test sets (data.personal_share)


def flatten_round(record: dict[str, Any]) -> dict[str, float]:
    """One metrics.jsonl record -> flat scalar keys (client/<id>/..., task/<task>/...).

    A record with personal test sets adds the same names for its `personal` block and each client's
    `personal` scores, prefixed `personal/`: personal/mean_primary, personal/task/<task>/worst_primary,
    personal/client/<id>/accuracy. A client's `global` scores repeat its top-level ones and are not logged
    twice."""
    flat: dict[str, float] = {"round": record["round"]}
    for key in (
        *SUMMARY_SCALARS,
        "round_seconds",
        "upload_bytes",
        "download_bytes",
        "cumulative_upload_bytes",
        "cumulative_download_bytes",
    ):
        if key in record:
            flat[key] = record[key]
    flat.update(_summary_scalars(record, prefix=""))
    personal = record.get("personal")
    if isinstance(personal, dict):
        flat.update({PERSONAL_PREFIX + k: personal[k] for k in SUMMARY_SCALARS if k in personal})
        flat.update(_summary_scalars(personal, prefix=PERSONAL_PREFIX))
    for cid, values in record.get("clients", {}).items():
        flat.update(_scalars(values, f"client/{cid}/"))
        if isinstance(values.get("personal"), dict):
            flat.update(_scalars(values["personal"], f"{PERSONAL_PREFIX}client/{cid}/"))
    return flat


def _summary_scalars(summary: dict[str, Any], prefix: str) -> dict[str, float]:
    """`<prefix>task/<task>/<name>` for each per-task figure of a record or of its personal block."""
    return {
        f"{prefix}task/{task}/{name}": value
        for task, values in summary.get("per_task", {}).items()
        for name, value in values.items()
    }


def _scalars(values: dict[str, Any], prefix: str) -> dict[str, float]:
    """The numbers among `values` (not bools, lists or nested blocks), under `prefix`."""
    return {
        f"{prefix}{name}": value
        for name, value in values.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool)
    }


def _sweep_tag() -> list[str]:
    """`sweep=<sweep dir name>` for multirun jobs, so one sweep's runs can be filtered out of a group."""
    try:
        from hydra.core.hydra_config import HydraConfig

        hydra_cfg = HydraConfig.get()
    except (ImportError, ValueError):  # not inside a Hydra app (tests, notebooks)
        return []
    if "MULTIRUN" not in str(hydra_cfg.mode):
        return []
    return [f"sweep={Path(str(hydra_cfg.sweep.dir)).name}"]


def _model_tag(name: str) -> str:
    """`model=<name>`; a long one (a local model directory) by its last part: W&B refuses tags over 64
    characters."""
    tag = f"model={name}"
    return tag if len(tag) <= 64 else f"model={Path(name).name or name}"[:64]


def _quiet_wandb() -> dict[str, Any]:
    """W&B's `quiet` setting (its start lines stay, its closing history/summary block goes: the job's own
    final table replaces it), unless the user chose with WANDB_QUIET or WANDB_SILENT."""
    if "WANDB_QUIET" in os.environ or "WANDB_SILENT" in os.environ:
        return {}
    import wandb

    return {"settings": wandb.Settings(quiet=True)}


class Tracker:
    """Writes metrics.jsonl and forwards each round to the configured logger."""

    def __init__(self, settings: Settings, out_dir: Path, wandb_id: str | None = None) -> None:
        """`wandb_id`: the W&B run a resumed job continues (None starts a new run)."""
        self.out_dir = out_dir
        self.metrics_path = out_dir / "metrics.jsonl"
        self.kind = settings.logger.name
        self.logger: Any = None
        self.wandb_id: str | None = None
        if self.kind == "wandb":
            self._start_wandb(settings, wandb_id)
        elif self.kind == "csv":
            from lightning.pytorch.loggers import CSVLogger

            self.logger = CSVLogger(save_dir=str(out_dir), name="csv", version="")

    def _start_wandb(self, settings: Settings, wandb_id: str | None) -> None:
        from lightning.pytorch.loggers import WandbLogger

        lg = settings.logger
        mode = str(lg.mode or os.environ.get("WANDB_MODE", "offline"))
        tags = [
            f"eta={settings.config['fed']['eta']:g}",  # as typed on the command line: 0 (not 0.0), 0.5
            f"seed={settings.seed}",
            _model_tag(settings.model.name),
            *lg.tags,
            *_sweep_tag(),
        ]
        resume: dict[str, Any] = {"id": wandb_id, "resume": "allow"} if wandb_id else {}
        self.logger = WandbLogger(
            project=lg.project,
            entity=lg.entity,
            group=str(lg.group or settings.experiment_name),
            job_type=settings.ablation.name,
            tags=tags,
            save_dir=str(self.out_dir),
            mode=mode,
            config=settings.config,
            reinit="finish_previous",
            **resume,
            **_quiet_wandb(),
        )
        # Lightning passes anonymous=None, which W&B warns about ("has no effect") although nobody set it
        getattr(self.logger, "_wandb_init", {}).pop("anonymous", None)
        run = self.logger.experiment
        self.wandb_id = run.id
        run.define_metric("round")
        run.define_metric("*", step_metric="round")

    def links(self) -> dict[str, Any]:
        """Where the tracked run can be opened (summary.json `tracking`, the final console table)."""
        if self.kind == "wandb" and self.logger is not None:
            run = self.logger.experiment
            if getattr(run, "disabled", False):  # WANDB_MODE=disabled: nothing was recorded
                return {"logger": "wandb", "mode": "disabled"}
            if run.offline:
                return {"logger": "wandb", "mode": "offline", "run_dir": str(run.settings.sync_dir)}
            return {"logger": "wandb", "mode": "online", "url": run.url}
        if self.kind == "csv" and self.logger is not None:
            return {"logger": "csv", "metrics_csv": str(Path(self.logger.log_dir) / "metrics.csv")}
        return {"logger": self.kind}

    def restore(self, records: list[dict[str, Any]]) -> None:
        """A resumed job: metrics.jsonl holds exactly the checkpointed rounds (a round the killed process
        logged after its last checkpoint is dropped, it will be run again). CSV gets them again too, as its
        file is rewritten from memory; W&B already has them in the resumed run."""
        write_jsonl(self.metrics_path, records)
        if self.kind == "csv" and self.logger is not None:
            for record in records:
                self.logger.log_metrics(flatten_round(record), step=int(record["round"]))
            self.logger.save()

    def log_round(self, record: dict[str, Any]) -> None:
        append_jsonl(self.metrics_path, record)
        if self.logger is None:
            return
        flat = flatten_round(record)
        if self.kind == "wandb":
            self.logger.experiment.log(flat)
        else:
            self.logger.log_metrics(flat, step=int(record["round"]))
            self.logger.save()

    def log_table(self, name: str, columns: list[str], rows: list[list[Any]], *, round_index: int) -> None:
        """A W&B table (k-search, rank heatmap) at the round it was computed for; other loggers skip it."""
        if self.kind == "wandb":
            import wandb

            header: list[str | int] = list(columns)  # wandb's annotation: list[str | int] (invariant)
            self.logger.experiment.log({"round": round_index, name: wandb.Table(columns=header, data=rows)})

    def close(self, failed: bool = False) -> None:
        if self.kind == "wandb" and self.logger is not None:
            import wandb

            wandb.finish(exit_code=1 if failed else 0)
        elif self.kind == "csv" and self.logger is not None:
            self.logger.finalize("failed" if failed else "success")
