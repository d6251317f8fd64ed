"""Which evaluation set a report shows: the task's validation set (`global`) or the clients' own held-out
rows (`personal`, DESIGN.md §13).

A metrics.jsonl record keeps its global figures at the top level (`mean_accuracy`, ..., `per_task`, each
client's `accuracy`/`primary`/`loss`); a job with personal test sets (`data.personal_share` > 0) adds the
same figures on those sets in `record["personal"]` and each scored client's `["personal"]`. `view_record`
moves the personal figures into the top-level places, so every table, figure, CSV column and the
convergence computation read either set without knowing which one it is.

Under `personal`, a record that was scored but has no personal figures counts as not scored
(`evaluated: false`, no metric keys, as `engines.records.round_record` writes an unscored round), and a
client without personal figures as not scored: a global number never stands in for a personal one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from atlas_pl.reporting.reader import Job

GLOBAL, PERSONAL = "global", "personal"
EVAL_SETS = (GLOBAL, PERSONAL)
DESCRIPTIONS = {
    GLOBAL: "the task's validation set, the same for every client",
    PERSONAL: "each client's own held-out rows (`data.personal_share`), with the same label mix as its "
    "training data",
}
# A record's summary over its scored clients (engines.records._summary), global or personal.
SUMMARY_KEYS = ("mean_accuracy", "worst_accuracy", "std_accuracy", "mean_primary", "per_task")
# A client's scores on one evaluation set (engines.records._scores).
CLIENT_KEYS = ("accuracy", "primary", "loss", "f1", "mcc")
VIEW_KEY = "eval_set"  # set on a viewed record, so viewing it again changes nothing
NO_PERSONAL = (
    "its last round has no personal-set scores (run without personal test sets, data.personal_share = 0): "
    "left out of the personal-set statistics"
)


def check_eval_set(eval_set: str) -> str:
    """`eval_set`, or a ValueError naming the valid ones (a typo must not silently mean `global`)."""
    if eval_set not in EVAL_SETS:
        raise ValueError(f"eval_set must be one of {', '.join(EVAL_SETS)}, not {eval_set!r}")
    return eval_set


def has_personal(records: Sequence[Mapping[str, Any]]) -> bool:
    """Whether any record holds personal-set figures (or is already a personal-set view)."""
    return any("personal" in r or r.get(VIEW_KEY) == PERSONAL for r in records)


def view_client(entry: Mapping[str, Any], eval_set: str) -> dict[str, Any]:
    """A client entry whose accuracy/primary/loss (f1/mcc) are on `eval_set`; under `personal`, one
    without personal scores keeps no metric keys (not scored on that set). A dropped client is unchanged
    (its metrics are None on every set)."""
    if check_eval_set(eval_set) == GLOBAL or entry.get("dropped"):
        return dict(entry)
    scores = entry.get(PERSONAL)
    out = {k: v for k, v in entry.items() if k not in CLIENT_KEYS and k not in (GLOBAL, PERSONAL)}
    if isinstance(scores, Mapping):
        out.update({k: scores[k] for k in CLIENT_KEYS if k in scores})
    return out


def view_record(record: Mapping[str, Any], eval_set: str) -> dict[str, Any]:
    """`record` with its summary and its clients' scores on `eval_set` (a new dict; `record` is not
    changed). `global` returns the record as written; `personal` takes `record["personal"]` and each
    client's personal scores, and makes a scored record without a personal block an unscored one."""
    if check_eval_set(eval_set) == GLOBAL or record.get(VIEW_KEY) == PERSONAL:
        return dict(record)
    out = {k: v for k, v in record.items() if k not in SUMMARY_KEYS and k != PERSONAL}
    if "clients" in record:
        out["clients"] = {cid: view_client(c, eval_set) for cid, c in record["clients"].items()}
    summary = record.get(PERSONAL)
    if record.get("evaluated", True) and isinstance(summary, Mapping):
        out.update({k: summary[k] for k in SUMMARY_KEYS if k in summary})
        out["per_task"] = {task: dict(v) for task, v in summary.get("per_task", {}).items()}
        out["evaluated"] = True
    else:
        out.update(evaluated=False, per_task={})
    out[VIEW_KEY] = PERSONAL
    return out


def view_records(records: Sequence[Mapping[str, Any]], eval_set: str) -> list[dict[str, Any]]:
    """A job's records on `eval_set`, as new dicts: the job as loaded stays as written."""
    return [view_record(r, eval_set) for r in records]


def with_eval_set(jobs: Sequence[Job], eval_set: str) -> list[Job]:
    """The jobs as seen on `eval_set`: `global` returns them as they are; `personal` returns copies whose
    records are personal-set views (`view_record`). A job whose last round has global scores but no
    personal ones (run without personal test sets) is kept, so group labels and the excluded list agree
    with the global report, but it is noted in `problems` and, its last round being unscored on this set,
    stays out of the statistics (`Job.in_statistics`)."""
    if check_eval_set(eval_set) == GLOBAL:
        return list(jobs)
    viewed = []
    for job in jobs:
        records = view_records(job.records, eval_set)
        problems = list(job.problems)
        if records and job.records[-1].get("evaluated", True) and not records[-1]["evaluated"]:
            problems.append(NO_PERSONAL)
        viewed.append(dataclasses.replace(job, records=records, problems=problems))
    return viewed
