"""Collect the evidence study (benchmarks/evidence_study.py) into JSON, markdown tables and reports.

Everything is read through atlas_pl.reporting, the reader, statistics and convergence-speed code of
`python -m atlas_pl.report`, on each evaluation set a setting has (reporting.views, EVAL_SETS): setting (a)
on the global set, every other setting on the personal test sets and on the global set. Only completed
jobs count; the stages' completeness is recorded next to the numbers, so a partial study says exactly
what it holds.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

from atlas_pl.report import build_report
from atlas_pl.reporting import Group, aggregate, load_jobs
from atlas_pl.reporting.reader import ReportError
from atlas_pl.reporting.tables import Speed, mean_std, speeds
from atlas_pl.reporting.views import GLOBAL, PERSONAL

EVAL_SETS = {
    "b": (PERSONAL, GLOBAL),
    "a": (GLOBAL,),
    "p2p": (PERSONAL, GLOBAL),
    "p2p_ref": (PERSONAL, GLOBAL),
    "b_by_task": (PERSONAL, GLOBAL),
    "b_lr": (PERSONAL, GLOBAL),
    "a_lr": (GLOBAL,),
}
DESCRIPTION = {
    "b": "Dirichlet label skew alpha=0.3, personal test sets (data.personal_share=0.2)",
    "a": "iid partitions, the task's global validation set",
    "p2p": "setting (b) under topology=p2p with faults.drop=0.2 (devices at 2x quick's memory)",
    "p2p_ref": "setting (b), server hosting, no faults, the allocation p2p implies (reference for p2p)",
    "b_by_task": "setting (b) with the known tasks as Phase 1's clusters (clustering.by_task, an oracle)",
    "b_lr": "setting (b), the centralized bounds at fed.lr=1e-3 (a third of quick's adapter lr)",
    "a_lr": "setting (a), the centralized bounds at fed.lr=1e-3 (a third of quick's adapter lr)",
}


def _speed(speed: Speed) -> dict[str, Any]:
    return {
        "target": speed.target,
        "rounds": speed.rounds.as_dict() if speed.rounds else None,
        "sim_seconds": speed.sim_seconds.as_dict() if speed.sim_seconds else None,
        "reached": speed.reached,
        "n": speed.n,
    }


def _sim_seconds(group: Group) -> dict[str, float] | None:
    """The jobs' total simulated seconds (the last record's cumulative figure), mean ± std."""
    totals = [j.records[-1].get("cumulative_sim_seconds") for j in group.jobs]
    values = [float(t) for t in totals if t is not None]
    return mean_std(values).as_dict() if values else None


def _accuracy(group: Group, task: str) -> dict[str, dict[str, float]]:
    """The task's last-round accuracy over its clients (mean and worst client), mean ± std over seeds.

    Accuracy is reported beside the primary metric because it stays defined on a personal set that holds
    a single class, where F1 and MCC are 0 whatever the model predicts (README, Evaluation protocol)."""
    means, worsts = [], []
    for job in group.jobs:
        scores = [c["accuracy"] for c in job.records[-1]["clients"].values() if c.get("task") == task]
        scores = [float(a) for a in scores if a is not None]
        if scores:
            means.append(sum(scores) / len(scores))
            worsts.append(min(scores))
    if not means:
        return {}
    return {"mean": mean_std(means).as_dict(), "worst": mean_std(worsts).as_dict()}


def _pooled(group: Group, task: str) -> dict[str, dict[str, float]]:
    """The task's last-round pooled personal score (all its clients' personal rows scored together,
    engines.records), mean ± std over the seeds whose records have it; {} for jobs run before it existed
    or on the global set."""
    found = {"primary": [], "accuracy": []}
    for job in group.jobs:
        task_scores = job.records[-1].get("per_task", {}).get(task, {})
        if "pooled_primary" in task_scores:
            found["primary"].append(float(task_scores["pooled_primary"]))
            found["accuracy"].append(float(task_scores["pooled_accuracy"]))
    return {k: mean_std(v).as_dict() for k, v in found.items() if v}


def _purity(job: Any) -> dict[str, Any] | None:
    """Phase 1's clusters against the clients' tasks: purity (share of clients in their cluster's majority
    task) and the number of clusters, from clustering.json's last entry; None without clustering."""
    from collections import Counter

    history = (job.clustering or {}).get("history") or [job.clustering or {}]
    labels = history[-1].get("labels")
    if not labels:
        return None
    tasks = [c["task"] for c in job.records[-1]["clients"].values()]
    members = [Counter(t for t, c in zip(tasks, labels) if c == cluster) for cluster in set(labels)]
    majority = sum(count.most_common(1)[0][1] for count in members)
    return {"k": len(set(labels)), "purity": majority / len(labels), "labels": list(labels)}


def _mean_accuracy(group: Group) -> dict[str, float]:
    """The last round's accuracy averaged over all clients, mean ± std over seeds."""
    return mean_std([float(j.records[-1]["mean_accuracy"]) for j in group.jobs]).as_dict()


def group_row(group: Group, speed: dict[str, dict[str, Speed]]) -> dict[str, Any]:
    return {
        "seeds": group.seeds,
        "clusters": [_purity(j) for j in group.jobs],
        "rounds": group.rounds,
        "mean_primary": group.mean_primary.as_dict(),
        "mean_accuracy": _mean_accuracy(group),
        "by_seed": {
            str(j.seed): {
                "mean_primary": j.records[-1]["mean_primary"],
                "mean_accuracy": j.records[-1]["mean_accuracy"],
            }
            for j in group.jobs
        },
        "per_task": {
            t: {
                "mean": ts.mean.as_dict(),
                "worst": ts.worst.as_dict(),
                "accuracy": _accuracy(group, t),
                "pooled": _pooled(group, t),
                "to_target": _speed(speed[t][group.label]) if group.label in speed.get(t, {}) else None,
            }
            for t, ts in group.per_task.items()
        },
        "bytes": group.bytes.as_dict(),
        "wall_seconds": group.seconds.as_dict(),
        "sim_seconds": _sim_seconds(group),
    }


def setting_table(root: Path, eval_set: str) -> dict[str, Any]:
    """One row per group of kept records, with one convergence target per task over all of them."""
    groups = aggregate(load_jobs(root, eval_set=eval_set))
    speed = speeds(groups)
    return {g.label: group_row(g, speed) for g in groups}


def _commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip()


def collect(root: Path, out: Path, reports: Path | None = None) -> dict[str, Any]:
    """Results of every setting found under `root` (JSON to `out`), a report per setting under
    <reports or root>/<setting>/report, and markdown tables printed."""
    from evidence_study import SEEDS, status

    result: dict[str, Any] = {
        "experiment": "quick, fed.rounds=20, fed.eval_every=2, seeds 0-2",
        "code": _commit(),
        "stages": status(root, SEEDS),
        "settings": {},
    }
    for setting, eval_sets in EVAL_SETS.items():
        where = root / setting
        if not where.is_dir():
            continue
        try:
            tables = {e: setting_table(where, e) for e in eval_sets}
        except ReportError as exc:
            print(f"{setting}: {exc}")
            continue
        result["settings"][setting] = {"description": DESCRIPTION[setting], "eval_sets": tables}
        report_dir = (reports or root) / setting / "report"
        report = build_report(where, report_dir)
        print(f"{setting}: report {report.markdown}")
        _keep_figures(report_dir, setting, out.parent / "evidence_figures")
        for eval_set, table in tables.items():
            print(f"\n### setting ({setting}), {eval_set} evaluation\n")
            print(markdown(table, accuracy=eval_set == PERSONAL))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nwrote {out}")
    return result


KEPT_FIGURES = ("convergence.png", "ablations.png", "eta_sweep.png")


def _keep_figures(report_dir: Path, setting: str, into: Path) -> None:
    """The report's convergence and comparison figures, copied where git keeps them (multirun/ is not)."""
    import shutil

    into.mkdir(parents=True, exist_ok=True)
    for eval_set, folder in ((GLOBAL, report_dir), (PERSONAL, report_dir / "personal")):
        for name in KEPT_FIGURES:
            figure = folder / "figures" / name
            if figure.is_file():
                shutil.copyfile(figure, into / f"{setting}_{eval_set}_{name}")


def _cell(stat: dict[str, float]) -> str:
    return f"{stat['mean']:.3f} ± {stat['std']:.3f}"


def _target_cell(row: dict[str, Any]) -> str:
    """Rounds to target per task (mean over the seeds that reach it, n/N) and simulated seconds."""
    parts = []
    for task, cell in row["per_task"].items():
        speed = cell["to_target"]
        if speed is None:
            continue
        rounds = "never" if speed["rounds"] is None else f"{speed['rounds']['mean']:.1f}"
        seconds = "" if speed["sim_seconds"] is None else f" / {speed['sim_seconds']['mean']:.0f} s"
        parts.append(f"{task} {rounds}{seconds} ({speed['reached']}/{speed['n']})")
    return "; ".join(parts)


def markdown(table: dict[str, Any], *, accuracy: bool = False) -> str:
    """One row per group; `accuracy` adds each task's accuracy (mean / worst client) after its primary."""
    if not table:
        return "(no completed jobs)"
    tasks = list(next(iter(table.values()))["per_task"])
    columns = [f"{t} mean / worst" for t in tasks]
    if accuracy:
        columns = [
            c for t in tasks for c in (f"{t} mean / worst", f"{t} accuracy mean / worst", f"{t} pooled")
        ]
    head = ["method", "seeds", *columns, "mean over clients"]
    head += ["accuracy over clients", "GB"] if accuracy else ["GB"]
    head.append("rounds / sim s to target")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, row in table.items():
        cells = [label, ",".join(map(str, row["seeds"]))]
        for t in tasks:
            task = row["per_task"].get(t)
            cells.append(f"{_cell(task['mean'])} / {_cell(task['worst'])}" if task else "–")
            if accuracy:
                acc = (task or {}).get("accuracy")
                cells.append(f"{_cell(acc['mean'])} / {_cell(acc['worst'])}" if acc else "–")
                pooled = (task or {}).get("pooled", {}).get("primary")
                cells.append(_cell(pooled) if pooled else "–")
        cells.append(_cell(row["mean_primary"]))
        if accuracy:
            cells.append(_cell(row["mean_accuracy"]))
        cells += [f"{row['bytes']['mean'] / 1e9:.2f}", _target_cell(row)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def seed_table(setting: dict[str, Any]) -> str:
    """Seed by seed, each row's personal accuracy and global primary metric over clients: the table that
    shows whether an ordering of the means holds on every seed."""
    personal, global_ = setting["eval_sets"][PERSONAL], setting["eval_sets"][GLOBAL]
    seeds = sorted({s for row in personal.values() for s in row["by_seed"]}, key=int)
    lines = ["| seed | " + " | ".join(personal) + " |", "|" + "---|" * (len(personal) + 1)]
    for seed in seeds:
        cells = []
        for label, row in personal.items():
            p, g = row["by_seed"].get(seed), global_.get(label, {}).get("by_seed", {}).get(seed)
            cells.append(f"{p['mean_accuracy']:.3f} / {g['mean_primary']:.3f}" if p and g else "–")
        lines.append(f"| {seed} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def readme_tables(result: dict[str, Any]) -> dict[str, str]:
    """{marker: markdown} for README's evidence section: `<setting>:<eval set>` per table, and
    `<setting>:seeds` for each setting with personal sets."""
    tables = {}
    for setting, body in result["settings"].items():
        for eval_set, table in body["eval_sets"].items():
            tables[f"{setting}:{eval_set}"] = markdown(table, accuracy=eval_set == PERSONAL)
        if PERSONAL in body["eval_sets"]:
            tables[f"{setting}:seeds"] = seed_table(body)
    return tables


def fill_readme(text: str, tables: dict[str, str]) -> tuple[str, list[str], list[str]]:
    """`text` with the body between each `<!-- evidence:KEY -->` and `<!-- /evidence:KEY -->` line replaced
    by tables[KEY]; also the keys that have no markers, and the marked blocks no table fills (left stale).

    Markers count only on lines of their own, so a marker quoted in prose or code is never taken for one,
    and a key marked twice is refused: everything outside the markers is the author's text and is kept.
    """
    missing = []
    for key, table in tables.items():
        start, end = f"<!-- evidence:{key} -->", f"<!-- /evidence:{key} -->"
        if len(re.findall(rf"^{re.escape(start)}$", text, re.M)) > 1:  # every block opens with one
            raise ValueError(f"README marks evidence:{key} more than once; valid: one block per table")
        block = re.compile(rf"^{re.escape(start)}\n.*?^{re.escape(end)}$", re.M | re.S)
        if not block.search(text):
            missing.append(key)
            continue
        filled = f"{start}\n{table}\n{end}"
        text = block.sub(lambda _, filled=filled: filled, text)  # a function: no escapes read in the table
    marked = re.findall(r"^<!-- evidence:(\S+) -->$", text, re.M)
    return text, missing, [key for key in marked if key not in tables]
