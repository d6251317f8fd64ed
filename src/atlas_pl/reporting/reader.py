"""Find the jobs under a run or multirun directory and load each job's result files.

Everything that reads results (`python -m atlas_pl.report`, `benchmarks/bench_ablations.py`, the analysis
notebook) goes through `load_jobs`, so they agree on which jobs count. A job's status follows the contract
of DESIGN.md §7: *completed* (a `done` marker, or summary.json `status: completed` for runs older than the
marker), *failed* (`failed.json`), otherwise *partial* (killed or still running). Only completed jobs enter
the statistics; the others are kept and listed so nothing disappears silently.

A job's settings come from, in order: summary.json `config` (a completed job), `job_config.json` (the
resolved config the job writes at its first start), the newest `checkpoints/round_*/state.json` `config`,
and last `.hydra/config.yaml`, which Hydra rewrites whenever anything is launched into the directory (a
later relaunch, even one the job refused, so it may not describe the job). `load_jobs` then sets each
job's `settings`: the config settings besides ablation, eta and seed that differ between the jobs
(`reporting.split`), which keep a sweep over them from being pooled as if its runs were seeds.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from atlas_pl.errors import AtlasError
from atlas_pl.reporting.names import GroupKey, Settings, group_key, group_label, natural_key
from atlas_pl.reporting.split import assign_settings
from atlas_pl.reporting.views import GLOBAL, check_eval_set, with_eval_set

COMPLETED, PARTIAL, FAILED = "completed", "partial", "failed"
# Any of these makes a directory a job directory (a Hydra job writes .hydra/ before anything else).
JOB_MARKERS = (
    "metrics.jsonl",
    "summary.json",
    "job_config.json",
    "done",
    "failed.json",
    "checkpoints",
    ".hydra",
)
HYDRA_CONFIG = ".hydra/config.yaml"
# Subdirectories that never hold jobs: skipping them keeps the walk cheap on large output trees.
_SKIP_DIRS = {"wandb", "checkpoints", "csv", "figures", "__pycache__", "node_modules"}


class ReportError(AtlasError):
    """A directory that cannot be reported on (missing, or no job directories in it)."""


@dataclass
class Job:
    """One Hydra job's results; `records` are the metrics.jsonl rounds, in round order, one per round."""

    path: Path
    status: str
    ablation: str
    eta: float | None
    seed: int | None
    config: dict[str, Any]
    records: list[dict[str, Any]]
    summary: dict[str, Any] | None = None
    clustering: dict[str, Any] | None = None
    allocation: dict[str, Any] | None = None
    error: str | None = None
    problems: list[str] = field(default_factory=list)
    config_source: str | None = None  # the file `config` was read from, relative to the job directory
    settings: Settings = ()  # the settings that split groups (reporting.split), set by load_jobs/aggregate

    @property
    def key(self) -> GroupKey:
        """The group this job's seed belongs to: (ablation, eta, settings), eta only for ablations that use
        it, settings the other config settings that differ between the jobs reported (usually none)."""
        return group_key(self.ablation, self.eta, self.settings)

    @property
    def label(self) -> str:
        return group_label(self.key)

    @property
    def in_statistics(self) -> bool:
        """Completed with its last round scored: a job that enters the statistics. A completed job's last
        round always is scored; in the personal-set view (`views.with_eval_set`) a job run without personal
        test sets is not, and stays out."""
        return (
            self.status == COMPLETED and bool(self.records) and bool(self.records[-1].get("evaluated", True))
        )

    @property
    def last_round(self) -> int:
        """The last round whose metrics were written in full (0 before the first one)."""
        return int(self.records[-1]["round"]) if self.records else 0

    @property
    def planned_rounds(self) -> int | None:
        rounds = self.config.get("fed", {}).get("rounds")
        return int(rounds) if isinstance(rounds, int) else None

    @property
    def experiment(self) -> str | None:
        return self.config.get("experiment_name")

    @property
    def tasks(self) -> list[str]:
        return list(self.records[-1].get("per_task", {})) if self.records else []


def discover(root: Path | str) -> list[Path]:
    """Job directories under `root`: `root` itself when it is one, else every one below it (any depth).

    A job directory is not descended into (its csv/, wandb/, checkpoints/ hold no jobs); symbolic links
    are followed. Sorted naturally, so multirun job `10_...` comes after `2_...`.
    """
    root = Path(root)
    if not root.is_dir():
        raise ReportError(f"{root} is not a directory")
    found: list[Path] = []
    seen: set[Path] = set()
    # symlinked multiruns are followed (a report folder may link several); `seen` stops link cycles
    for dirpath, dirnames, _ in os.walk(root, followlinks=True):
        path = Path(dirpath)
        real = path.resolve()
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        if is_job_dir(path):
            found.append(path)
            dirnames[:] = []
            continue
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and d not in _SKIP_DIRS]
    return sorted(found, key=lambda p: natural_key(str(p.relative_to(root))))


def is_job_dir(path: Path) -> bool:
    return any((path / marker).exists() for marker in JOB_MARKERS)


def load_jobs(*roots: Path | str, eval_set: str = GLOBAL) -> list[Job]:
    """Every job under each root, loaded, with its group settings set from all of them (`settings`);
    raises ReportError when the roots hold no job directory. `eval_set="personal"`: the jobs' records as
    seen on the clients' personal test sets (`views.with_eval_set`); the default is the global set."""
    check_eval_set(eval_set)
    paths: list[Path] = []
    seen: set[Path] = set()
    for root in roots:
        for path in discover(root):
            if path.resolve() not in seen:
                seen.add(path.resolve())
                paths.append(path)
    if not paths:
        where = ", ".join(str(r) for r in roots)
        raise ReportError(
            f"no job directories under {where} (looked for directories containing "
            f"{', '.join(JOB_MARKERS)}; point it at a Hydra run or multirun directory)"
        )
    jobs = [load_job(p) for p in paths]
    assign_settings(jobs)
    return with_eval_set(jobs, eval_set)


def load_job(path: Path | str) -> Job:
    """Load one job directory; unreadable files are noted in `problems` rather than raised."""
    path = Path(path)
    problems: list[str] = []
    summary = _read_json(path / "summary.json", problems)
    done = (path / "done").exists()
    failed = _read_json(path / "failed.json", problems)
    records = _read_records(path / "metrics.jsonl", problems)
    config, config_source = _read_config(path, summary, problems)
    register_job_tasks(config)

    if done or (summary or {}).get("status") == COMPLETED:
        status = COMPLETED
    elif failed is not None or (path / "failed.json").exists():
        status = FAILED
    else:
        status = PARTIAL
    if status == COMPLETED and not records:
        problems.append("marked completed but metrics.jsonl has no rounds")
        status = PARTIAL
    error = _error_line(failed) if status == FAILED else None

    ablation = (summary or {}).get("ablation") or _get(config, "ablation", "name") or "unknown"
    eta = _get(config, "fed", "eta")
    seed = config.get("seed")
    return Job(
        path=path,
        status=status,
        ablation=str(ablation),
        eta=float(eta) if isinstance(eta, (int, float)) else None,
        seed=int(seed) if isinstance(seed, int) else None,
        config=config,
        records=records,
        summary=summary,
        clustering=_read_json(path / "clustering.json", problems),
        allocation=_read_json(path / "allocation.json", problems),
        error=error,
        problems=problems,
        config_source=config_source,
    )


def register_job_tasks(config: dict[str, Any]) -> None:
    """Make the job's own tasks (task.custom, data/custom.py) known by name, so the report titles them
    with their metric as the job did; a definition that no longer parses is titled `primary metric`."""
    from atlas_pl.data.custom import custom_task_from_dict
    from atlas_pl.data.tasks import register_custom_tasks

    custom = _get(config, "task", "custom")
    for name, raw in custom.items() if isinstance(custom, dict) else ():
        try:
            register_custom_tasks([custom_task_from_dict(str(name), raw).spec])
        except (AtlasError, KeyError, TypeError, ValueError):
            continue


def _error_line(failed: Any) -> str:
    """The last line of the recorded error (a traceback's last line names the exception)."""
    text = failed.get("error") if isinstance(failed, dict) else None
    lines = str(text).strip().splitlines() if text else []
    return lines[-1] if lines else "no error message recorded"


def _read_json(path: Path, problems: list[str]) -> Any:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text() or "null")
    except (OSError, ValueError) as exc:
        problems.append(f"{path.name} unreadable: {exc}")
        return None


def _read_records(path: Path, problems: list[str]) -> list[dict[str, Any]]:
    """metrics.jsonl rounds in order; a torn last line (a job killed mid-write) is skipped and noted.

    A resumed job may write a round again; the last record of a round wins.
    """
    if not path.is_file():
        return []
    by_round: dict[int, dict[str, Any]] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            by_round[int(record["round"])] = record
        except (ValueError, KeyError, TypeError):
            problems.append(f"metrics.jsonl line {number} unreadable (skipped)")
    return [by_round[r] for r in sorted(by_round)]


def _read_config(path: Path, summary: Any, problems: list[str]) -> tuple[dict[str, Any], str | None]:
    """(config, the file it came from): summary.json, job_config.json, the newest checkpoint's state.json,
    .hydra/config.yaml, the first that has one; ({}, None) when none does."""
    config = summary.get("config") if isinstance(summary, dict) else None
    if isinstance(config, dict) and config:
        return config, "summary.json"
    config = _read_json(path / "job_config.json", problems)
    if isinstance(config, dict) and config:
        return config, "job_config.json"
    for state_path in _checkpoint_states(path / "checkpoints"):
        state = _read_json(state_path, problems)
        config = state.get("config") if isinstance(state, dict) else None
        if isinstance(config, dict) and config:
            return config, str(state_path.relative_to(path))
    config = _read_hydra_config(path, problems)
    return (config, HYDRA_CONFIG) if config else ({}, None)


def _checkpoint_states(root: Path) -> list[Path]:
    """checkpoints/round_NNN/state.json, newest round first (temporary `.round_*.tmp-*` dirs are not
    checkpoints)."""
    if not root.is_dir():
        return []
    rounds = [
        (int(m.group(1)), d / "state.json")
        for d in root.iterdir()
        if (m := re.fullmatch(r"round_(\d+)", d.name)) and (d / "state.json").is_file()
    ]
    return [state for _, state in sorted(rounds, reverse=True)]


def _read_hydra_config(path: Path, problems: list[str]) -> dict[str, Any]:
    """The composed config Hydra saved, unresolved (interpolations need Hydra's runtime to resolve)."""
    cfg_path = path / HYDRA_CONFIG
    if not cfg_path.is_file():
        return {}
    from omegaconf import OmegaConf

    try:
        cfg = OmegaConf.to_container(OmegaConf.load(cfg_path), resolve=False)
    except Exception as exc:  # any parse error: note it, keep the job listed
        problems.append(f"{HYDRA_CONFIG} unreadable: {exc}")
        return {}
    # a YAML mapping's keys: strings, for a config Hydra composed
    return cast(dict[str, Any], cfg) if isinstance(cfg, dict) else {}


def _get(config: dict[str, Any], *keys: str) -> Any:
    value: Any = config
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value
