"""Job discovery and status on hand-made job directories (no training): the contract of DESIGN.md §7."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from atlas_pl.reporting import ReportError, aggregate, discover, load_job, load_jobs


def _record(round_: int, primary: float) -> dict:
    return {
        "round": round_,
        "clients": {"0": {"task": "sst2", "primary": primary, "dropped": False}},
        "mean_primary": primary,
        "per_task": {"sst2": {"accuracy": primary, "primary": primary, "worst_primary": primary}},
        "upload_bytes": 10,
        "download_bytes": 5,
        "cumulative_upload_bytes": 10 * round_,
        "cumulative_download_bytes": 5 * round_,
        "round_seconds": 1.0,
    }


def _job(path: Path, rounds: int, *, summary: str | None = None, done: bool = False, seed: int = 0) -> Path:
    path.mkdir(parents=True)
    (path / ".hydra").mkdir()
    (path / ".hydra" / "config.yaml").write_text(
        f"seed: {seed}\nablation:\n  name: fedavg\nfed:\n  eta: 0.1\n  rounds: 3\n"
    )
    lines = [json.dumps(_record(r, 0.5 + r / 10)) for r in range(1, rounds + 1)]
    (path / "metrics.jsonl").write_text("".join(line + "\n" for line in lines))
    if summary is not None:
        config = {"seed": seed, "ablation": {"name": "fedavg"}, "fed": {"eta": 0.1, "rounds": 3}}
        payload = {"status": summary, "ablation": "fedavg", "config": config, "totals": {"seconds": 2.0}}
        (path / "summary.json").write_text(json.dumps(payload))
    if done:
        (path / "done").write_text(json.dumps({"round": rounds}))
    return path


def test_status_follows_the_done_marker_summary_and_failed_json(tmp_path: Path) -> None:
    assert load_job(_job(tmp_path / "old", 3, summary="completed")).status == "completed"
    assert load_job(_job(tmp_path / "marked", 3, summary="completed", done=True)).status == "completed"
    assert load_job(_job(tmp_path / "marker_only", 3, done=True)).status == "completed"
    running = load_job(_job(tmp_path / "running", 2))
    assert (running.status, running.last_round, running.planned_rounds) == ("partial", 2, 3)
    crashed = _job(tmp_path / "crashed", 1)
    (crashed / "failed.json").write_text(json.dumps({"error": "line 1\nValueError: bad"}))
    failed = load_job(crashed)
    assert (failed.status, failed.error, failed.ablation, failed.seed) == (
        "failed",
        "ValueError: bad",
        "fedavg",
        0,
    )
    assert load_job(_job(tmp_path / "started", 0)).status == "partial"


def test_a_torn_last_line_is_skipped_and_noted(tmp_path: Path) -> None:
    job = _job(tmp_path / "killed", 2)
    with (job / "metrics.jsonl").open("a") as fh:
        fh.write('{"round": 3, "clie')
    loaded = load_job(job)
    assert loaded.last_round == 2 and any("line 3" in p for p in loaded.problems)


def test_discovery_finds_jobs_at_any_depth_in_natural_order(tmp_path: Path) -> None:
    for name in ("10_x", "2_x", "1_x"):
        _job(tmp_path / "sweep_a" / name, 3, summary="completed")
    _job(tmp_path / "deeper" / "sweep_b" / "0_y", 3, summary="completed")
    (tmp_path / "sweep_a" / "multirun.yaml").write_text("{}\n")
    (tmp_path / "sweep_a" / "1_x" / "csv").mkdir()  # inside a job: not searched
    found = [str(p.relative_to(tmp_path)) for p in discover(tmp_path)]
    assert found == ["deeper/sweep_b/0_y", "sweep_a/1_x", "sweep_a/2_x", "sweep_a/10_x"]
    single = tmp_path / "sweep_a" / "2_x"
    assert discover(single) == [single]


def test_eta_only_splits_groups_of_ablations_that_use_it(tmp_path: Path) -> None:
    jobs = load_jobs(_job(tmp_path / "a", 3, summary="completed", seed=0))
    jobs += load_jobs(_job(tmp_path / "b", 3, summary="completed", seed=1))
    jobs[1].eta = 0.5  # fedavg ignores eta: still one group
    groups = aggregate(jobs)
    assert [(g.label, g.seeds, g.per_task["sst2"].mean.n) for g in groups] == [("fedavg", [0, 1], 2)]


def test_no_jobs_is_an_error_naming_what_was_looked_for(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match="no job directories under .*metrics.jsonl"):
        load_jobs(tmp_path)
