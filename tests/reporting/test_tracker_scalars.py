"""What `Tracker.log_round` sends to W&B / CSV for a metrics.jsonl record (tracking/tracker.py's
`flatten_round`): the global figures as before, and a record with personal test sets adds the same names
under `personal/`. (There was no tracker test file; these need no logger, model or Settings.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from atlas_pl.engines.records import ClientRound, round_record
from atlas_pl.parties.link import TrafficLedger
from atlas_pl.tracking.tracker import Tracker, flatten_round


def _record(personal: bool) -> dict[str, Any]:
    rows = [
        ClientRound(
            client_id=k,
            task=task,
            cluster=0,
            device="cpu",
            split=1,
            metrics={"accuracy": acc, "primary": acc, "loss": 1.0 - acc},
            personal={"accuracy": p, "primary": p, "loss": 1.0 - p} if personal else None,
            train_loss=0.5,
            train_seconds=1.0,
        )
        for k, (task, acc, p) in enumerate((("sst2", 0.75, 0.5), ("sst2", 0.5, 1.0), ("mrpc", 0.25, 0.75)))
    ]
    record = round_record(3, rows, ["sst2", "mrpc"], TrafficLedger())
    record.update(round_seconds=2.0, cumulative_upload_bytes=0, cumulative_download_bytes=0)
    return record


def test_a_record_with_personal_sets_logs_the_personal_figures_beside_the_global_ones() -> None:
    flat = flatten_round(_record(personal=True))
    personal = {k: v for k, v in flat.items() if k.startswith("personal/")}
    assert personal == {
        "personal/mean_accuracy": pytest.approx(0.75),
        "personal/worst_accuracy": 0.5,
        "personal/std_accuracy": pytest.approx(0.2041241452),
        "personal/mean_primary": pytest.approx(0.75),
        "personal/task/sst2/accuracy": 0.75,
        "personal/task/sst2/primary": 0.75,
        "personal/task/sst2/worst_primary": 0.5,
        "personal/task/mrpc/accuracy": 0.75,
        "personal/task/mrpc/primary": 0.75,
        "personal/task/mrpc/worst_primary": 0.75,
        **{
            f"personal/client/{k}/{name}": value
            for k, p in enumerate((0.5, 1.0, 0.75))
            for name, value in (("accuracy", p), ("primary", p), ("loss", 1.0 - p))
        },
    }
    # the global names are unchanged and carry the global numbers; a client's nested blocks are not logged
    assert flat["mean_primary"] == pytest.approx(0.5) and flat["worst_accuracy"] == 0.25
    assert flat["task/sst2/primary"] == 0.625 and flat["task/sst2/worst_primary"] == 0.5
    assert flat["client/1/accuracy"] == 0.5 and flat["round"] == 3
    assert not any("/global" in k or k.startswith("client/0/personal") for k in flat)
    assert flatten_round(_record(personal=False)) == {
        k: v for k, v in flat.items() if not k.startswith("personal/")
    }


class _Experiment:
    def __init__(self) -> None:
        self.logged: list[dict[str, float]] = []

    def log(self, flat: dict[str, float]) -> None:
        self.logged.append(flat)


class _Logger:
    def __init__(self) -> None:
        self.experiment = _Experiment()


def test_log_round_sends_the_personal_scalars_to_wandb(tmp_path: Path) -> None:
    tracker = Tracker.__new__(Tracker)  # a W&B tracker without W&B: only what log_round touches
    tracker.kind, tracker.logger, tracker.metrics_path = "wandb", _Logger(), tmp_path / "metrics.jsonl"
    record = _record(personal=True)
    tracker.log_round(record)
    (logged,) = tracker.logger.experiment.logged
    assert logged == flatten_round(record)
    assert {"personal/mean_primary", "personal/worst_accuracy", "personal/task/mrpc/worst_primary"} <= set(
        logged
    )
    assert (tmp_path / "metrics.jsonl").read_text().count("\n") == 1
