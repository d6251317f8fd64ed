"""The job-end console table and sweep line, formatted from a hand-made summary.json (fast tier)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from atlas_pl.console import FILE_ONLY, ConsoleFilter, PlainFormatter
from atlas_pl.reporting.job_end import (
    final_table,
    job_line,
    show_job_end,
    sweep_end_text,
    traffic_by_task,
)

OUT = Path("/runs/job7")


def _summary(**extra: object) -> dict:
    return {
        "status": "completed",
        "ablation": "atlas",
        "model": {"name": "minilm"},
        "final": {
            "round": 3,
            "mean_primary": 0.6123,
            "per_task": {
                "cola": {"accuracy": 0.70, "mcc": 0.31, "primary": 0.3125, "worst_primary": 0.2001},
                "sst2": {"accuracy": 0.91, "primary": 0.9120, "worst_primary": 0.8875},
            },
        },
        "totals": {
            "upload_bytes": 3_000_000,
            "download_bytes": 2_500_000,
            "seconds": 83.26,
            "build_seconds": 11.04,
            "round_seconds": [20.0, 25.5, 26.5],
            "sim_seconds": 4.25,
            "resumed_from_round": None,
        },
        "traffic_by_device": {
            "server": {"sent": 2_500_000, "received": 3_000_000},
            "device/0": {"sent": 3_000_000, "received": 2_500_000},
            "coordinator": {"sent": 1_000, "received": 0},
        },
        "traffic_by_task": {"sst2": 3_250_000, "cola": 2_250_000},
        "allocation": [{"client": k} for k in range(6)],
        "tracking": {"logger": "wandb", "mode": "offline", "run_dir": "/runs/job7/wandb/offline-run-x"},
        **extra,
    }


def test_final_table_shows_each_task_the_totals_and_where_to_look() -> None:
    lines = final_table(_summary(), OUT).splitlines()
    assert lines[0] == "atlas_pl: atlas on minilm, 3 rounds, 6 clients (primary metric over clients)"
    rows = [line.split() for line in lines[1:5]]
    assert rows == [
        ["task", "metric", "mean", "worst", "client", "traffic"],
        ["sst2", "accuracy", "0.9120", "0.8875", "3.25", "MB"],  # GLUE order: SST-2 before CoLA
        ["cola", "MCC", "0.3125", "0.2001", "2.25", "MB"],
        ["all", "tasks", "0.6123", "0.2001", "5.50", "MB"],  # the worst client over all tasks
    ]
    assert lines[5:] == [
        "moved   5.50 MB in all (clients sent 3.00 MB, received 2.50 MB)",
        "time    83.3 s (build 11.0 s, 3 rounds 72.0 s, simulated device time 4.2 s)",
        "output  /runs/job7",
        "W&B     wandb sync /runs/job7/wandb/offline-run-x  (uploads the offline run)",
        "report  python -m atlas_pl.report /runs/job7",
    ]


def test_final_table_for_other_trackers_and_a_resumed_job() -> None:
    totals = {**_summary()["totals"], "resumed_from_round": 2}
    url = "https://wandb.ai/u/atlas/runs/ab"
    online = final_table(_summary(tracking={"logger": "wandb", "mode": "online", "url": url}), OUT)
    assert f"W&B     {url}" in online
    csv = final_table(_summary(tracking={"logger": "csv", "metrics_csv": "/runs/job7/csv/metrics.csv"}), OUT)
    assert "CSV     /runs/job7/csv/metrics.csv" in csv
    untracked = final_table(_summary(tracking={"logger": "none"}, totals=totals), OUT)
    assert "W&B" not in untracked and "CSV" not in untracked
    assert "resumed after round 2" in untracked


def test_one_task_has_no_all_tasks_row_and_old_summaries_still_format() -> None:
    summary = _summary()
    summary["final"]["per_task"].pop("cola")
    del summary["traffic_by_task"], summary["tracking"], summary["traffic_by_device"]
    text = final_table(summary, OUT)
    assert "all tasks" not in text
    assert "sst2  accuracy  0.9120  0.8875" in text and text.count("–") == 1  # no per-task bytes recorded
    assert "moved   5.50 MB in all" in text  # clients' upload + download


def test_personal_sets_get_their_own_columns_and_sweep_line() -> None:
    """With personal test sets the table shows both sets side by side, the task's set first."""
    personal = {
        "mean_primary": 0.75,
        "per_task": {
            "cola": {"accuracy": 0.8, "primary": 0.5, "worst_primary": 0.25},
            "sst2": {"accuracy": 0.95, "primary": 0.95, "worst_primary": 0.9},
        },
    }
    summary = _summary()
    summary["final"]["personal"] = personal
    rows = [line.split() for line in final_table(summary, OUT).splitlines()[1:5]]
    assert rows == [
        ["task", "metric", "global", "mean", "worst", "personal", "mean", "worst", "client", "traffic"],
        ["sst2", "accuracy", "0.9120", "0.8875", "0.9500", "0.9000", "3.25", "MB"],
        ["cola", "MCC", "0.3125", "0.2001", "0.5000", "0.2500", "2.25", "MB"],
        ["all", "tasks", "0.6123", "0.2001", "0.7500", "0.2500", "5.50", "MB"],
    ]
    assert job_line(summary, OUT) == (
        "job done: primary mean 0.6123, worst client 0.2001 (personal sets 0.7500, worst 0.2500); "
        "5.50 MB moved; 83.3 s -> /runs/job7"
    )


def test_sweep_job_line_and_sweep_end(tmp_path: Path) -> None:
    assert job_line(_summary(), OUT) == (
        "job done: primary mean 0.6123, worst client 0.2001; 5.50 MB moved; 83.3 s -> /runs/job7"
    )
    for name, done in (("0_seed=0", True), ("1_seed=1", False)):
        (tmp_path / name / ".hydra").mkdir(parents=True)
        if done:
            (tmp_path / name / "summary.json").write_text("{}")
    assert sweep_end_text(tmp_path) == (
        f"sweep: 1 of 2 jobs finished in {tmp_path}\nreport: python -m atlas_pl.report {tmp_path}"
    )


def test_show_job_end_prints_the_table_and_logs_it_for_the_file_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "summary.json").write_text(json.dumps(_summary()))
    with caplog.at_level(logging.INFO, logger="atlas_pl.reporting.job_end"):
        show_job_end(tmp_path, sweep=False)
    assert capsys.readouterr().out == final_table(_summary(), tmp_path) + "\n"
    [record] = caplog.records
    assert record.getMessage() == final_table(_summary(), tmp_path)
    assert not ConsoleFilter().filter(record)  # printed already: the console handler skips it
    show_job_end(tmp_path, sweep=True)
    assert capsys.readouterr().out == job_line(_summary(), tmp_path) + "\n"
    show_job_end(tmp_path / "absent", sweep=False)  # a job that wrote no summary prints nothing
    assert capsys.readouterr().out == ""


def test_traffic_by_task_sums_each_tasks_clients_over_rounds() -> None:
    records = [
        {"clients": {"0": {"task": "sst2", "upload_bytes": 5, "download_bytes": 7}}},
        {
            "clients": {
                "0": {"task": "sst2", "upload_bytes": 1, "download_bytes": 2},
                "1": {"task": "cola", "upload_bytes": 10, "download_bytes": 20},
            }
        },
    ]
    assert traffic_by_task(records) == {"sst2": 15, "cola": 30}


def _record(name: str, level: int, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord(name, level, __file__, 1, "message", None, None)
    record.__dict__.update(extra)
    return record


def test_console_filter_shows_our_lines_and_anybodys_errors_only() -> None:
    keep = ConsoleFilter().filter
    assert keep(_record("atlas_pl.run", logging.INFO))
    assert keep(_record("hydra_plugins.atlas_pl_launcher.fresh_process_launcher", logging.INFO))
    assert keep(_record("transformers.modeling_utils", logging.ERROR))
    assert not keep(_record("transformers.modeling_utils", logging.WARNING))  # the LOAD REPORT
    assert not keep(_record("py.warnings", logging.WARNING))  # warnings.warn, captured
    assert not keep(_record("lightning.pytorch", logging.WARNING))
    assert not keep(_record("atlas_pl.run", logging.INFO, **FILE_ONLY))
    assert not keep(_record("atlas_plus", logging.INFO))  # a prefix is not our package
    show_all = ConsoleFilter(third_party=True).filter  # hydra.job_logging.filters.own_lines.third_party=true
    assert show_all(_record("py.warnings", logging.WARNING))
    assert not show_all(_record("atlas_pl.run", logging.INFO, **FILE_ONLY))


def test_log_file_lines_carry_no_terminal_colour_codes() -> None:
    record = _record("transformers.modeling_utils", logging.WARNING)
    record.msg = "\x1b[1mBertModel LOAD REPORT\x1b[0m from: x"
    assert PlainFormatter("%(message)s").format(record) == "BertModel LOAD REPORT from: x"
