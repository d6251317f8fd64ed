"""What the console shows when a job ends: a compact table of what it achieved, and where to look next.

Everything is formatted from the job's summary.json, so the table says exactly what the file says (and a
finished job asked to run again with resume=true shows the same table). A single run prints the table; a
sweep prints one line per job, since thirty jobs of ten lines each would bury the sweep's progress, and
comparing jobs over seeds is what `python -m atlas_pl.report <sweep dir>` is for (its command is printed
when the sweep ends, hydra_callbacks.SweepEnd).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from atlas_pl.console import FILE_ONLY
from atlas_pl.reporting.names import metric_name, task_sort_key

log = logging.getLogger(__name__)

MB = 1e6
REPORT_COMMAND = "python -m atlas_pl.report"


def traffic_by_task(records: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Bytes each task's clients sent and received over the job (summary.json `traffic_by_task`)."""
    out: dict[str, int] = {}
    for record in records:
        for client in record.get("clients", {}).values():
            moved = int(client.get("upload_bytes", 0)) + int(client.get("download_bytes", 0))
            out[client["task"]] = out.get(client["task"], 0) + moved
    return dict(sorted(out.items(), key=lambda item: task_sort_key(item[0])))


def _mb(value: float) -> str:
    return f"{value / MB:.2f} MB"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _seconds(value: float) -> str:
    return f"{value:.1f} s"


def total_bytes(summary: Mapping[str, Any]) -> int:
    """Every byte on the wire once: what all parties sent (clients, server, coordinator, relays)."""
    by_device = summary.get("traffic_by_device") or {}
    if by_device:
        return sum(int(d["sent"]) for d in by_device.values())
    totals = summary.get("totals") or {}
    return int(totals.get("upload_bytes", 0)) + int(totals.get("download_bytes", 0))


def worst_primary(summary: Mapping[str, Any]) -> float:
    """The worst client's primary metric over all tasks."""
    per_task = summary["final"]["per_task"]
    return min(v.get("worst_primary", v["primary"]) for v in per_task.values())


def tracking_line(tracking: Mapping[str, Any] | None) -> tuple[str, str] | None:
    """(label, how to open it) for the job's tracked run, or None when nothing was tracked."""
    tracking = tracking or {}
    if tracking.get("logger") == "wandb":
        if tracking.get("mode") == "offline" and tracking.get("run_dir"):
            return "W&B", f"wandb sync {tracking['run_dir']}  (uploads the offline run)"
        if tracking.get("url"):
            return "W&B", str(tracking["url"])
    if tracking.get("logger") == "csv" and tracking.get("metrics_csv"):
        return "CSV", str(tracking["metrics_csv"])
    return None


def _personal_cells(personal: Mapping[str, Any] | None, task: str | None) -> list[str]:
    """Mean and worst client on the personal test sets (data.personal_share), for a task or all tasks."""
    if personal is None:
        return []
    if task is None:
        worst = min(v["worst_primary"] for v in personal["per_task"].values())
        return [f"{personal['mean_primary']:.4f}", f"{worst:.4f}"]
    values = personal["per_task"].get(task)
    return [f"{values['primary']:.4f}", f"{values['worst_primary']:.4f}"] if values else ["–", "–"]


def _task_rows(summary: Mapping[str, Any]) -> list[list[str]]:
    per_task = summary["final"]["per_task"]
    personal = summary["final"].get("personal")
    traffic = summary.get("traffic_by_task") or {}
    rows = [["task", "metric", "mean", "worst", "client traffic"]]
    if personal is not None:  # the task's set, then each client's own held-out rows
        rows[0][2:4] = ["global mean", "worst"]
        rows[0][4:4] = ["personal mean", "worst"]
    for task in sorted(per_task, key=task_sort_key):
        values = per_task[task]
        moved = _mb(traffic[task]) if task in traffic else "–"
        worst = values.get("worst_primary", values["primary"])
        own = _personal_cells(personal, task)
        rows.append([task, metric_name(task), f"{values['primary']:.4f}", f"{worst:.4f}", *own, moved])
    if len(per_task) > 1:
        moved = _mb(sum(traffic.values())) if traffic else "–"
        mean = summary["final"]["mean_primary"]
        own = _personal_cells(personal, None)
        rows.append(["all tasks", "", f"{mean:.4f}", f"{worst_primary(summary):.4f}", *own, moved])
    return rows


def _aligned(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    right = set(range(2, len(rows[0])))  # numbers line up on the right
    cells = [
        [cell.rjust(w) if i in right else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths))]
        for row in rows
    ]
    return ["  ".join(row).rstrip() for row in cells]


def _time_text(totals: Mapping[str, Any]) -> str:
    rounds = totals.get("round_seconds") or []
    parts = [f"build {_seconds(totals.get('build_seconds', 0.0))}"]
    parts.append(f"{_count(len(rounds), 'round')} {_seconds(sum(rounds))}")
    if totals.get("sim_seconds") is not None:
        parts.append(f"simulated device time {_seconds(totals['sim_seconds'])}")
    if totals.get("resumed_from_round") is not None:
        parts.append(f"resumed after round {totals['resumed_from_round']}")
    return f"{_seconds(totals['seconds'])} ({', '.join(parts)})"


def final_table(summary: Mapping[str, Any], out_dir: Path | str) -> str:
    """The job's result as the console shows it at the end: per task the clients' mean and worst primary
    metric and the bytes their clients moved, then traffic, time, and where the results are."""
    final, totals = summary["final"], summary.get("totals") or {}
    model = (summary.get("model") or {}).get("name", "?")
    clients = len(summary.get("allocation") or [])
    title = (
        f"atlas_pl: {summary.get('ablation', '?')} on {model}, {_count(final['round'], 'round')}"
        + (f", {_count(clients, 'client')}" if clients else "")
        + " (primary metric over clients)"
    )
    lines = [title, *_aligned(_task_rows(summary))]
    up, down = int(totals.get("upload_bytes", 0)), int(totals.get("download_bytes", 0))
    info = [
        ("moved", f"{_mb(total_bytes(summary))} in all (clients sent {_mb(up)}, received {_mb(down)})"),
        ("time", _time_text(totals)),
        ("output", str(out_dir)),
    ]
    tracked = tracking_line(summary.get("tracking"))
    if tracked is not None:
        info.append(tracked)
    info.append(("report", f"{REPORT_COMMAND} {out_dir}"))
    width = max(len(label) for label, _ in info)
    lines += [f"{label.ljust(width)}  {text}" for label, text in info]
    return "\n".join(lines)


def job_line(summary: Mapping[str, Any], out_dir: Path | str) -> str:
    """One sweep job in one line: mean / worst primary, bytes, seconds, directory."""
    final, totals = summary["final"], summary.get("totals") or {}
    personal = _personal_cells(final.get("personal"), None)
    own = f" (personal sets {personal[0]}, worst {personal[1]})" if personal else ""
    return (
        f"job done: primary mean {final['mean_primary']:.4f}, worst client {worst_primary(summary):.4f}"
        f"{own}; "
        f"{_mb(total_bytes(summary))} moved; {_seconds(totals.get('seconds', 0.0))} -> {out_dir}"
    )


def sweep_end_text(sweep_dir: Path) -> str:
    """What a sweep prints last: how many of its jobs finished, where, and how to compare them."""
    found = sweep_dir.iterdir() if sweep_dir.is_dir() else iter(())
    jobs = [p for p in found if p.is_dir() and (p / ".hydra").is_dir()]
    done = sum((p / "summary.json").is_file() for p in jobs)
    return f"sweep: {done} of {len(jobs)} jobs finished in {sweep_dir}\nreport: {REPORT_COMMAND} {sweep_dir}"


def in_sweep() -> bool:
    """Whether this job is one of a Hydra multirun's (False outside a Hydra app)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return "MULTIRUN" in str(HydraConfig.get().mode)
    except ValueError:  # HydraConfig not set: not inside a Hydra app
        return False


def show_job_end(out_dir: Path, *, sweep: bool) -> None:
    """Print the job's final table (a sweep job: its one line) after everything else the job printed, W&B's
    closing lines included; the log file gets it too."""
    path = out_dir / "summary.json"
    if not path.is_file():  # nothing finished (the job raised before): nothing to show
        return
    summary = json.loads(path.read_text())
    text = job_line(summary, out_dir) if sweep else final_table(summary, out_dir)
    print(text, flush=True)
    log.info("%s", text, extra=FILE_ONLY)
