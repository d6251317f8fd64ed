"""Job discovery and status on hand-made job directories (no training): the contract of DESIGN.md §7."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from atlas_pl.reporting import ReportError, aggregate, discover, load_job, load_jobs
from atlas_pl.reporting.split import find_split
from atlas_pl.reporting.tables import csv_rows, incomplete_rows, split_note


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


def _configured_job(path: Path, config: dict, *, completed: bool = True) -> Path:
    """A job whose summary.json (completed) or job_config.json (partial) holds `config`."""
    path.mkdir(parents=True)
    (path / "metrics.jsonl").write_text(json.dumps(_record(1, 0.5 + config.get("seed", 0) / 10)) + "\n")
    if completed:
        summary = {"status": "completed", "ablation": config["ablation"]["name"], "config": config}
        (path / "summary.json").write_text(json.dumps(summary))
        (path / "done").write_text(json.dumps({"round": 1}))
    else:
        (path / "job_config.json").write_text(json.dumps(config))
    return path


def _config(name: str = "fedavg", seed: int = 0, **sections: dict) -> dict:
    """A config as a job records it: run plumbing (paths, logger) differs per seed, as in a real sweep."""
    config = {
        "seed": seed,
        "experiment_name": f"run{seed}",
        "resume": False,
        "paths": {"output_dir": f"/out/{name}/{seed}", "root_dir": "/repo"},
        "logger": {"name": "csv"},
        "trainer": {"num_threads": seed, "precision": "32-true"},
        "data": {"cache_dir": f"/cache{seed}", "samples_per_client": 128},
        "ablation": {"name": name, "importance": {"atlas": "cluster"}.get(name, "global")},
        "model": {"name": "tiny_bert", "split_point": 2},
        "fed": {"eta": 0.1 * (seed + 1), "rounds": 1, "local_epochs": 1},
    }
    for section, values in sections.items():
        config[section] = {**config.get(section, {}), **values}
    return config


def _labels(jobs: list) -> list[tuple[str, list]]:
    return [(g.label, g.seeds) for g in aggregate(jobs)]


def test_only_ablation_eta_and_seed_differing_keeps_the_plain_labels(tmp_path: Path) -> None:
    for seed in (0, 1):
        _configured_job(tmp_path / f"f{seed}", _config("fedavg", seed))
        _configured_job(tmp_path / f"a{seed}", _config("atlas", seed, fed={"eta": 0.5}))
    jobs = load_jobs(tmp_path)
    assert _labels(jobs) == [("fedavg", [0, 1]), ("atlas (eta=0.5)", [0, 1])]
    assert not find_split(jobs) and find_split(jobs).describe() is None
    assert not any("more than once" in n for g in aggregate(jobs) for n in g.notes)


def test_a_setting_that_differs_splits_groups_with_labels_naming_it(tmp_path: Path) -> None:
    for seed in (0, 1):
        _configured_job(tmp_path / f"e1_{seed}", _config(seed=seed))
    _configured_job(tmp_path / "e2_0", _config(seed=0, fed={"local_epochs": 2}))
    _configured_job(tmp_path / "e10_0", _config(seed=0, fed={"local_epochs": 10}))
    _configured_job(tmp_path / "atlas", _config("atlas", fed={"local_epochs": 2}))
    jobs = load_jobs(tmp_path)
    assert _labels(jobs) == [
        ("fedavg (fed.local_epochs=1)", [0, 1]),
        ("fedavg (fed.local_epochs=2)", [0]),
        ("fedavg (fed.local_epochs=10)", [0]),
        ("atlas (eta=0.1, fed.local_epochs=2)", [0]),
    ]
    groups = aggregate(jobs)
    assert groups[0].per_task["sst2"].mean.mean == pytest.approx(0.55)  # seeds 0 and 1 only
    assert not any("more than once" in n for g in groups for n in g.notes)
    assert find_split(jobs).describe() == "`fed.local_epochs`"
    note = split_note(jobs)
    assert note is not None and "fed.local_epochs" in note
    assert [r["settings"] for r in csv_rows(groups)] == [
        "fed.local_epochs=1",
        "fed.local_epochs=2",
        "fed.local_epochs=10",
        "fed.local_epochs=2",
    ]


def test_a_config_group_sweep_shows_as_its_name(tmp_path: Path) -> None:
    _configured_job(tmp_path / "a", _config(seed=0))
    _configured_job(tmp_path / "b", _config(seed=0, model={"name": "minilm", "split_point": 3}))
    _configured_job(tmp_path / "c", _config(seed=1, model={"name": "minilm", "split_point": 3}))
    jobs = load_jobs(tmp_path)
    assert _labels(jobs) == [("fedavg (model=minilm)", [0, 1]), ("fedavg (model=tiny_bert)", [0])]
    assert find_split(jobs).describe() == "`model` (model.name, with model.split_point that follows from it)"
    # a setting changed within one model is shown beside it
    _configured_job(tmp_path / "d", _config(seed=1, model={"name": "minilm", "split_point": 4}))
    assert _labels(load_jobs(tmp_path)) == [
        ("fedavg (model=minilm, model.split_point=3)", [0, 1]),
        ("fedavg (model=minilm, model.split_point=4)", [1]),
        ("fedavg (model=tiny_bert, model.split_point=2)", [0]),
    ]


def test_ablation_settings_split_only_within_their_ablation(tmp_path: Path) -> None:
    _configured_job(tmp_path / "f", _config("fedavg"))
    _configured_job(tmp_path / "a0", _config("atlas", 0, fed={"eta": 0.1}))
    _configured_job(tmp_path / "a1", _config("atlas", 1, fed={"eta": 0.1}, ablation={"importance": "client"}))
    _configured_job(tmp_path / "c", _config("centralized") | {"ablation": {"name": "centralized"}})
    jobs = load_jobs(tmp_path)
    assert _labels(jobs) == [
        ("fedavg", [0]),
        ("atlas (eta=0.1, ablation.importance=client)", [1]),
        ("atlas (eta=0.1, ablation.importance=cluster)", [0]),
        ("centralized", [0]),
    ]
    assert find_split(jobs).describe() == "`ablation.importance` (atlas only)"


def test_settings_a_job_lacks_or_left_unresolved_do_not_split(tmp_path: Path) -> None:
    _configured_job(tmp_path / "new", _config(seed=0, fed={"added_later": 3}))
    _configured_job(tmp_path / "old", _config(seed=1))
    partial = _job(tmp_path / "partial", 1, seed=2)  # config from .hydra/config.yaml, with an interpolation
    (partial / ".hydra" / "config.yaml").write_text(
        "seed: 2\nablation:\n  name: fedavg\nfed:\n  eta: 0.1\n  rounds: 1\n  local_epochs: 1\n"
        "model:\n  name: tiny_bert\n  split_point: ${oc.env:SPLIT,2}\n"
    )
    jobs = load_jobs(tmp_path)
    assert _labels(jobs) == [("fedavg", [0, 1])]
    row = incomplete_rows(jobs)[0]
    assert row["group"] == "fedavg" and ".hydra/config.yaml" in row["detail"]


def test_a_setting_added_since_an_older_job_ran_takes_the_value_it_ran_under(tmp_path: Path) -> None:
    """An older job (no clustering.by_task) ran with discovered clusters: grouped with new jobs that have
    by_task false, split from the oracle's (compatibility.ADDED_SETTINGS)."""
    _configured_job(tmp_path / "old", _config("atlas", 0, fed={"eta": 0.5}))
    _configured_job(tmp_path / "new", _config("atlas", 1, fed={"eta": 0.5}, clustering={"by_task": False}))
    assert _labels(load_jobs(tmp_path)) == [("atlas (eta=0.5)", [0, 1])]
    _configured_job(tmp_path / "oracle", _config("atlas", 0, fed={"eta": 0.5}, clustering={"by_task": True}))
    assert _labels(load_jobs(tmp_path)) == [
        ("atlas (eta=0.5, clustering.by_task=false)", [0, 1]),
        ("atlas (eta=0.5, clustering.by_task=true)", [0]),
    ]


def test_config_is_read_from_summary_then_job_config_then_checkpoint_then_hydra(tmp_path: Path) -> None:
    job = _job(tmp_path / "job", 2)  # .hydra/config.yaml: eta 0.1 (fedavg)
    for name, eta in (("round_001", 0.2), ("round_002", 0.3), (".round_003.tmp-7", 0.9)):
        (job / "checkpoints" / name).mkdir(parents=True)
        state = {"round": 1, "config": {"seed": 0, "ablation": {"name": "atlas"}, "fed": {"eta": eta}}}
        (job / "checkpoints" / name / "state.json").write_text(json.dumps(state))
    (job / "job_config.json").write_text(
        json.dumps({"seed": 0, "ablation": {"name": "atlas"}, "fed": {"eta": 0.4, "rounds": 3}})
    )
    summary = {
        "status": "completed",
        "config": {"seed": 0, "ablation": {"name": "atlas"}, "fed": {"eta": 0.5}},
    }
    (job / "summary.json").write_text(json.dumps(summary))

    def source() -> tuple[str | None, float | None]:
        loaded = load_job(job)
        return loaded.config_source, loaded.eta

    assert source() == ("summary.json", 0.5)
    (job / "summary.json").unlink()
    assert source() == ("job_config.json", 0.4)
    (job / "job_config.json").unlink()
    assert source() == ("checkpoints/round_002/state.json", 0.3)
    shutil.rmtree(job / "checkpoints" / "round_002")
    assert source() == ("checkpoints/round_001/state.json", 0.2)
    shutil.rmtree(job / "checkpoints")
    assert source() == (".hydra/config.yaml", 0.1)
