"""Per-group statistics over seeds, and the report.md / report.csv that show them.

A group is one configuration: (ablation, eta, settings), the settings being every other config setting that
differs between the jobs (`reporting.split`; none in a plain ablation or eta sweep); its seeds are its
completed jobs. For every task the statistic is taken
over seeds of the last round's value: the mean over the task's clients and the worst client, each as
mean ± population standard deviation (`statistics.pstdev`: the seeds run are the whole population being
described, and it is 0 rather than undefined for a single seed).
"""

from __future__ import annotations

import csv
import statistics
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from atlas_pl.reporting.convergence import TARGET_SHARE, reached, target_of
from atlas_pl.reporting.names import (
    ETA_ABLATIONS,
    GroupKey,
    Settings,
    group_label,
    group_sort_key,
    metric_name,
    settings_text,
    task_metric_title,
    task_sort_key,
)
from atlas_pl.reporting.reader import COMPLETED, HYDRA_CONFIG, PARTIAL, Job
from atlas_pl.reporting.split import assign_settings

MB = 1e6


@dataclass(frozen=True)
class Stat:
    """mean ± population std over n seeds."""

    mean: float
    std: float
    n: int

    def as_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "std": self.std, "n": self.n}

    def fmt(self, digits: int = 3, scale: float = 1.0) -> str:
        return f"{self.mean / scale:.{digits}f} ± {self.std / scale:.{digits}f}"


def mean_std(values: Sequence[float]) -> Stat:
    """Mean and population std (0 for one value) of `values`."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("mean_std of no values")
    return Stat(statistics.fmean(values), statistics.pstdev(values) if len(values) > 1 else 0.0, len(values))


@dataclass(frozen=True)
class TaskStats:
    mean: Stat  # last-round primary metric averaged over the task's clients
    worst: Stat  # last-round primary metric of the task's worst client


@dataclass
class Group:
    """One (ablation, eta, settings) over its completed seeds: the numbers of a table row and the data of
    figures."""

    key: GroupKey
    jobs: list[Job]
    per_task: dict[str, TaskStats]
    mean_primary: Stat
    upload_bytes: Stat
    download_bytes: Stat
    seconds: Stat
    notes: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return group_label(self.key)

    @property
    def ablation(self) -> str:
        return self.key[0]

    @property
    def eta(self) -> float | None:
        return self.key[1]

    @property
    def settings(self) -> Settings:
        return self.key[2]

    @property
    def seeds(self) -> list[int | None]:
        return sorted((j.seed for j in self.jobs), key=lambda s: (s is None, s or 0))

    @property
    def rounds(self) -> int:
        return max(j.last_round for j in self.jobs)

    @property
    def bytes(self) -> Stat:
        return mean_std([job_bytes(j)[0] + job_bytes(j)[1] for j in self.jobs])


def job_bytes(job: Job) -> tuple[float, float]:
    """Total (upload, download) bytes of a job: the last round's cumulative counters (= summary totals)."""
    last = job.records[-1]
    if "cumulative_upload_bytes" in last:
        return float(last["cumulative_upload_bytes"]), float(last["cumulative_download_bytes"])
    totals = (job.summary or {}).get("totals", {})
    return float(totals.get("upload_bytes", 0)), float(totals.get("download_bytes", 0))


def job_seconds(job: Job) -> float:
    """Wall-clock seconds of the whole job (build + rounds) from summary.json, else the rounds' sum."""
    totals = (job.summary or {}).get("totals", {})
    if "seconds" in totals:
        return float(totals["seconds"])
    return float(sum(r.get("round_seconds", 0.0) for r in job.records))


def aggregate(jobs: Sequence[Job]) -> list[Group]:
    """Groups of the completed jobs, in report order (ABLATION_ORDER, then eta, then settings).

    Pass every job (not only the completed ones): the settings that split groups are found over all of
    them and set on each (`split.assign_settings`), as `load_jobs` does, so labels agree everywhere.
    """
    assign_settings(jobs)
    by_key: dict[GroupKey, list[Job]] = defaultdict(list)
    for job in jobs:
        if job.in_statistics:  # completed (and, in the personal-set view, scored on personal sets)
            by_key[job.key].append(job)
    return [
        _group(key, sorted(by_key[key], key=lambda j: (j.seed is None, j.seed or 0)))
        for key in sorted(by_key, key=group_sort_key)
    ]


def _group(key: GroupKey, jobs: list[Job]) -> Group:
    tasks = sorted({t for j in jobs for t in j.tasks}, key=task_sort_key)
    per_task = {}
    for task in tasks:
        finals = [j.records[-1]["per_task"][task] for j in jobs if task in j.records[-1].get("per_task", {})]
        per_task[task] = TaskStats(
            mean=mean_std([f["primary"] for f in finals]),
            worst=mean_std([f.get("worst_primary", f["primary"]) for f in finals]),
        )
    return Group(
        key=key,
        jobs=jobs,
        per_task=per_task,
        mean_primary=mean_std([j.records[-1]["mean_primary"] for j in jobs]),
        upload_bytes=mean_std([job_bytes(j)[0] for j in jobs]),
        download_bytes=mean_std([job_bytes(j)[1] for j in jobs]),
        seconds=mean_std([job_seconds(j) for j in jobs]),
        notes=_consistency_notes(jobs),
    )


def _consistency_notes(jobs: list[Job]) -> list[str]:
    """What makes a group's seeds not comparable: the reader should know before trusting its ± ."""
    notes = []
    seeds = [j.seed for j in jobs]
    repeated = sorted({s for s in seeds if seeds.count(s) > 1}, key=lambda s: (s is None, s or 0))
    if repeated:
        notes.append(f"seed(s) {', '.join(map(str, repeated))} appear more than once; each job counts")
    for name, values in (
        ("rounds", {j.last_round for j in jobs}),
        ("experiment", {str(j.experiment) for j in jobs}),
        ("tasks", {",".join(j.tasks) for j in jobs}),
    ):
        if len(values) > 1:
            notes.append(f"seeds differ in {name}: {', '.join(sorted(map(str, values)))}")
    return notes


def all_tasks(groups: Sequence[Group]) -> list[str]:
    return sorted({t for g in groups for t in g.per_task}, key=task_sort_key)


CSV_COLUMNS = (
    "group",
    "ablation",
    "eta",
    "settings",
    "task",
    "metric",
    "n_seeds",
    "seeds",
    "rounds",
    "final_mean_primary_mean",
    "final_mean_primary_std",
    "final_worst_primary_mean",
    "final_worst_primary_std",
    "upload_bytes_mean",
    "upload_bytes_std",
    "download_bytes_mean",
    "download_bytes_std",
    "seconds_mean",
    "seconds_std",
    "target",
    "rounds_to_target_mean",
    "rounds_to_target_std",
    "sim_seconds_to_target_mean",
    "sim_seconds_to_target_std",
    "seeds_reaching_target",
)


@dataclass(frozen=True)
class Speed:
    """How fast a group's seeds reach a common target: rounds and simulated seconds over the seeds that
    reach it (`reached` of `n`); None where no seed does (or, for seconds, without device profiles)."""

    target: float
    rounds: Stat | None
    sim_seconds: Stat | None
    reached: int
    n: int

    def fmt_rounds(self) -> str:
        tail = "" if self.reached == self.n else f" ({self.reached}/{self.n})"
        return ("never" if self.rounds is None else self.rounds.fmt(1)) + tail

    def fmt_seconds(self) -> str:
        return "–" if self.sim_seconds is None else self.sim_seconds.fmt(1)


def speeds(groups: Sequence[Group]) -> dict[str, dict[str, Speed]]:
    """Per task and group: rounds and simulated seconds to TARGET_SHARE of the best final mean metric
    of any group (one target per task, so the rows compare). The final mean of a group is its seeds' mean
    of the last round's per-task mean primary metric (`per_task[task]["primary"]`, the mean over the task's
    clients); a seed reaches the target at the first scored round at or above it (`convergence.reached`),
    with that round's `cumulative_sim_seconds`. Rounds and seconds are mean ± population std over the
    seeds that reach it (seconds: those of them with simulated time); `reached` of `n` seeds do."""
    out: dict[str, dict[str, Speed]] = {}
    for task in all_tasks(groups):
        finals = [g.per_task[task].mean.mean for g in groups if task in g.per_task]
        if not finals:
            continue
        target = target_of(max(finals))
        out[task] = {}
        for g in groups:
            hits = [reached(j.records, task, target) for j in g.jobs]
            hit = [h for h in hits if h is not None]
            seconds = [h.sim_seconds for h in hit if h.sim_seconds is not None]
            out[task][g.label] = Speed(
                target,
                mean_std([h.round for h in hit]) if hit else None,
                mean_std(seconds) if seconds else None,
                len(hit),
                len(hits),
            )
    return out


def fault_rows(groups: Sequence[Group]) -> list[list[str]]:
    """Per group with faults or simulated time: what the faults did and what the job cost in time."""
    rows = []
    for g in groups:
        faults = [[r.get("faults") or {} for r in j.records] for j in g.jobs]
        sims = [j.records[-1].get("cumulative_sim_seconds") for j in g.jobs]
        if not any(any(f) for f in faults) and all(s is None for s in sims):
            continue
        per_job = [
            (
                sum(len(f.get("absent_clients", [])) for f in fs) / max(1, len(fs)),
                sum(len(f.get("late_clients", [])) for f in fs),
                sum(f.get("repairings", 0) + f.get("fallbacks", 0) for f in fs),
                sum(sum(f.get("lost_steps", {}).values()) for f in fs),
                float(((j.summary or {}).get("totals") or {}).get("moved_bytes", 0)),
            )
            for fs, j in zip(faults, g.jobs)
        ]
        cols = list(zip(*per_job))
        rows.append(
            [g.label, ", ".join(map(str, g.seeds))]
            + [mean_std(c).fmt(1) for c in cols[:4]]
            + [mean_std(cols[4]).fmt(2, MB)]
            + [
                mean_std([s for s in sims if s is not None]).fmt(1)
                if any(s is not None for s in sims)
                else "–"
            ]
        )
    return rows


def csv_rows(groups: Sequence[Group]) -> list[dict[str, Any]]:
    """One row per group and task (bytes and seconds are per job, so repeated across a group's tasks)."""
    rows = []
    speed_of = speeds(groups)
    for g in groups:
        for task, ts in g.per_task.items():
            speed = speed_of.get(task, {}).get(g.label)
            rows.append(
                {
                    "group": g.label,
                    "ablation": g.ablation,
                    "eta": "" if g.eta is None else g.eta,
                    "settings": settings_text(g.settings),
                    "task": task,
                    "metric": metric_name(task),
                    "n_seeds": len(g.jobs),
                    "seeds": " ".join(map(str, g.seeds)),
                    "rounds": g.rounds,
                    "final_mean_primary_mean": ts.mean.mean,
                    "final_mean_primary_std": ts.mean.std,
                    "final_worst_primary_mean": ts.worst.mean,
                    "final_worst_primary_std": ts.worst.std,
                    "upload_bytes_mean": g.upload_bytes.mean,
                    "upload_bytes_std": g.upload_bytes.std,
                    "download_bytes_mean": g.download_bytes.mean,
                    "download_bytes_std": g.download_bytes.std,
                    "seconds_mean": g.seconds.mean,
                    "seconds_std": g.seconds.std,
                    **_speed_columns(speed),
                }
            )
    return rows


def _speed_columns(speed: Speed | None) -> dict[str, Any]:
    if speed is None:
        return {}
    return {
        "target": speed.target,
        "rounds_to_target_mean": "" if speed.rounds is None else speed.rounds.mean,
        "rounds_to_target_std": "" if speed.rounds is None else speed.rounds.std,
        "sim_seconds_to_target_mean": "" if speed.sim_seconds is None else speed.sim_seconds.mean,
        "sim_seconds_to_target_std": "" if speed.sim_seconds is None else speed.sim_seconds.std,
        "seeds_reaching_target": f"{speed.reached}/{speed.n}",
    }


def write_csv(groups: Sequence[Group], path: Path) -> Path:
    """report.csv: full-precision numbers (repr), one row per group and task, for pandas or a spreadsheet."""
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(csv_rows(groups))
    return path


def incomplete_rows(jobs: Sequence[Job], root: Path | None = None) -> list[dict[str, Any]]:
    """Partial and failed jobs (and any job with unreadable files), for the report's exclusion list; `jobs`
    are all the jobs, as for `aggregate` (their group labels depend on each other)."""
    assign_settings(jobs)
    rows = []
    for j in jobs:
        if j.in_statistics and not j.problems:
            continue
        planned = j.planned_rounds
        detail = [j.error] if j.error else []
        detail += j.problems
        if j.status == COMPLETED and not j.in_statistics and not j.problems:
            detail.append("its last round was not scored: left out of the statistics")
        if j.status == PARTIAL and not detail:
            detail.append("no done marker or completed summary.json: killed or still running")
        if j.status != COMPLETED and (j.path / "checkpoints").is_dir():
            detail.append("has checkpoints/ (resume=true continues it)")
        if j.config_source == HYDRA_CONFIG:
            detail.append(
                f"settings from {HYDRA_CONFIG}: the last launch into the directory, maybe not this job's"
            )
        rows.append(
            {
                "job": _relative(j.path, root),
                "status": j.status,
                "group": j.label,
                "seed": j.seed,
                "last_round": f"{j.last_round} of {planned}" if planned else str(j.last_round),
                "detail": "; ".join(detail),
            }
        )
    return rows


def _relative(path: Path, root: Path | None) -> str:
    if root is not None:
        try:
            rel = path.resolve().relative_to(Path(root).resolve())
            return str(rel) if str(rel) != "." else "."
        except ValueError:
            pass
    return str(path)


def markdown(
    jobs: Sequence[Job],
    groups: Sequence[Group],
    root: Path,
    figures: Mapping[str, str] | None = None,
    *,
    title_suffix: str = "",
    intro: Sequence[str] = (),
) -> str:
    """The report.md text: counts, the metric table, bytes and time, excluded jobs, notes, and the figures
    (`figures`: file stem under figures/ -> caption). `title_suffix` follows the title, `intro` paragraphs
    come right under it (which evaluation set the report is on, where the other one is)."""
    counts = {s: sum(j.status == s for j in jobs) for s in ("completed", "partial", "failed")}
    tasks = all_tasks(groups)
    split = split_note(jobs)
    out = [
        f"# Report: {root}{title_suffix}",
        "",
        *(line for paragraph in intro for line in (paragraph, "")),
        f"{len(jobs)} job(s): {counts['completed']} completed, {counts['partial']} partial, "
        f"{counts['failed']} failed. Only completed jobs enter the statistics; the others are listed below.",
        "",
        "Each number is mean ± std over the group's seeds of the last round's value; std is the population "
        "standard deviation (`statistics.pstdev`, 0 for a single seed). Per task: *mean* is the task's "
        "clients averaged, *worst* the task's worst client."
        + (f" Primary metric: {', '.join(task_metric_title(t) for t in tasks)}." if tasks else ""),
        "",
        *([split, ""] if split else []),
        "## Final primary metric per task",
        "",
    ]
    if groups:
        head = ["group", "seeds", "rounds"]
        for t in tasks:
            head += [f"{task_metric_title(t)} mean", f"{task_metric_title(t)} worst"]
        out += _md_table(
            head,
            [
                [g.label, ", ".join(map(str, g.seeds)), str(g.rounds)]
                + [
                    cell
                    for t in tasks
                    for cell in (
                        (g.per_task[t].mean.fmt(), g.per_task[t].worst.fmt())
                        if t in g.per_task
                        else ("–", "–")
                    )
                ]
                for g in groups
            ],
        )
        out += ["", "## Communication and time (per job)", ""]
        out += _md_table(
            ["group", "seeds", "upload MB", "download MB", "total MB", "seconds"],
            [
                [
                    g.label,
                    ", ".join(map(str, g.seeds)),
                    g.upload_bytes.fmt(1, MB),
                    g.download_bytes.fmt(1, MB),
                    g.bytes.fmt(1, MB),
                    g.seconds.fmt(0),
                ]
                for g in groups
            ],
        )
        out.append("")
        out.append(
            "MB = 10^6 bytes, counted from the tensors sent (evaluation traffic excluded); "
            "seconds = the job's wall clock."
        )
        out += _speed_section(groups)
        out += _faults_section(groups)
    else:
        out.append("No completed job: nothing to aggregate.")
    out += ["", "## Jobs excluded from the statistics", ""]
    incomplete = incomplete_rows(jobs, root)
    if incomplete:
        out += _md_table(
            ["job", "status", "group", "seed", "last complete round", "detail"],
            [
                [f"`{r['job']}`", r["status"], r["group"], str(r["seed"]), r["last_round"], r["detail"]]
                for r in incomplete
            ],
        )
    else:
        out.append("None: every job completed.")
    notes = [f"{g.label}: {n}" for g in groups for n in g.notes]
    if notes:
        out += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    if figures:
        out += ["", "## Figures", ""]
        for name, caption in figures.items():
            out += [f"![{name}](figures/{name}.png)", "", caption, ""]
    return "\n".join(out).rstrip() + "\n"


def _speed_section(groups: Sequence[Group]) -> list[str]:
    table = speeds(groups)
    if not table:
        return []
    out = ["", "## Convergence speed", ""]
    head = ["group"]
    for task in table:
        head += [f"{task_metric_title(task)} rounds", f"{task_metric_title(task)} sim s"]
    out += _md_table(
        head,
        [
            [g.label]
            + [
                c
                for task in table
                for c in (table[task][g.label].fmt_rounds(), table[task][g.label].fmt_seconds())
            ]
            for g in groups
        ],
    )
    out += ["", speed_text(table)]
    return out


def speed_text(table: Mapping[str, Mapping[str, Speed]]) -> str:
    """What the convergence-speed table counts, with each task's target (`speeds`' table)."""
    targets = ", ".join(
        f"{task_metric_title(t)} {next(iter(v.values())).target:.3f}" for t, v in table.items()
    )
    return (
        f"Rounds and simulated seconds to reach {TARGET_SHARE:.0%} of the best final mean primary metric "
        "of any group, per task: the target is that share of the highest, over the groups, of the "
        "last-round mean over the task's clients averaged over the group's seeds (for a negative best, "
        f"such as an MCC, the best minus {1 - TARGET_SHARE:.0%} of its size): {targets}. A seed reaches it "
        "at the first scored round whose mean over the task's clients is at or above the target; its "
        "simulated seconds are the cumulative simulated time at that round. Mean ± std over the seeds "
        "that reach it; (k/n) when only k of the group's n seeds do, never (0/n) when none does. Simulated "
        "seconds price every step on the device profiles (phases/simtime.py); – where no seed that "
        "reaches the target has them."
    )


def _faults_section(groups: Sequence[Group]) -> list[str]:
    rows = fault_rows(groups)
    if not rows:
        return []
    out = ["", "## Faults and simulated time (per job)", ""]
    out += _md_table(
        ["group", "seeds", "absent / round", "late", "re-pairings", "lost steps", "moved MB", "sim seconds"],
        rows,
    )
    return out + [
        "",
        "Absent clients per round, clients left out for the deadline, server halves moved to another host "
        "(within or outside the cluster), training steps lost with absent hosts, bytes of the moves, and "
        "the job's simulated seconds (conf/faults, phases/availability.py).",
    ]


def split_note(jobs: Sequence[Job]) -> str | None:
    """The sentence saying which settings split the groups besides ablation and eta; None when none do."""
    described = assign_settings(jobs).describe()
    if described is None:
        return None
    return (
        f"Groups are split by ablation, by eta for {', '.join(ETA_ABLATIONS)}, and by every other "
        "setting whose value differs between the jobs (seed and run plumbing such as paths, logger and "
        f"checkpoint settings aside), so each group's ± is over seeds only. Settings that differ here: "
        f"{described}."
    )


def _md_table(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + [
        "| " + " | ".join(r) + " |" for r in rows
    ]
