"""`python -m atlas_pl.report` on a real smoke multirun: its numbers against an independent computation from
the jobs' own files, its figures, and how it treats empty directories and jobs that did not complete."""

from __future__ import annotations

import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
from PIL import Image

from atlas_pl.report import main
from atlas_pl.reporting import load_job

from ..conftest import REPO_ROOT

FIGURES = {"convergence", "sim_time", "ablations", "eta_sweep", "adjacency", "ranks", "communication"}


def _job_values(job: Path) -> dict:
    """What the report must aggregate for one job, from metrics.jsonl (and the job's seconds from
    summary.json), computed here from the per-client records rather than through atlas_pl.reporting."""
    records = [json.loads(line) for line in (job / "metrics.jsonl").read_text().splitlines()]
    clients = records[-1]["clients"].values()
    per_task: dict[str, list[float]] = defaultdict(list)
    for client in clients:
        if not client["dropped"]:
            per_task[client["task"]].append(client["primary"])
    summary = json.loads((job / "summary.json").read_text())
    return {
        "eta": summary["config"]["fed"]["eta"],
        "seed": summary["config"]["seed"],
        "per_task": {t: (statistics.fmean(v), min(v)) for t, v in per_task.items()},
        "upload": sum(r["upload_bytes"] for r in records),
        "download": sum(r["download_bytes"] for r in records),
        "seconds": summary["totals"]["seconds"],
    }


def _expected(jobs: list[Path]) -> dict[tuple[str, str], dict[str, float]]:
    """{(group label, task): column -> value}, mean and population std over the jobs of each eta."""
    by_eta: dict[float, list[dict]] = defaultdict(list)
    for job in jobs:
        values = _job_values(job)
        by_eta[values["eta"]].append(values)
    expected = {}
    for eta, seeds in by_eta.items():
        for task in seeds[0]["per_task"]:
            columns = {
                "final_mean_primary": [s["per_task"][task][0] for s in seeds],
                "final_worst_primary": [s["per_task"][task][1] for s in seeds],
                "upload_bytes": [s["upload"] for s in seeds],
                "download_bytes": [s["download"] for s in seeds],
                "seconds": [s["seconds"] for s in seeds],
            }
            row = {
                "n_seeds": len(seeds),
                "seeds": " ".join(str(s["seed"]) for s in sorted(seeds, key=lambda s: s["seed"])),
            }
            for name, values in columns.items():
                row[f"{name}_mean"] = statistics.fmean(values)
                row[f"{name}_std"] = statistics.pstdev(values)
            expected[(f"atlas (eta={eta:g})", task)] = row
    return expected


def _csv(path: Path) -> dict[tuple[str, str], dict[str, str]]:
    with path.open() as fh:
        return {(row["group"], row["task"]): row for row in csv.DictReader(fh)}


def _assert_matches(rows: dict, expected: dict) -> None:
    assert set(rows) == set(expected)
    for key, want in expected.items():
        got = rows[key]
        assert int(got["n_seeds"]) == want["n_seeds"] and got["seeds"] == want["seeds"], key
        for column, value in want.items():
            if column.endswith(("_mean", "_std")):
                assert float(got[column]) == pytest.approx(value, rel=1e-12, abs=1e-12), (key, column)


@pytest.fixture(scope="module")
def smoke_report(smoke_multirun: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The report of the untouched smoke multirun, written once (drawing the figures takes seconds)."""
    out = tmp_path_factory.mktemp("smoke_report")
    assert main([str(smoke_multirun), "--out", str(out)]) == 0
    return out


@pytest.mark.integration
def test_report_numbers_equal_an_independent_computation(smoke_multirun: Path, smoke_report: Path) -> None:
    jobs = sorted(p for p in smoke_multirun.iterdir() if p.is_dir())
    expected = _expected(jobs)
    assert len(expected) == 2 * 3  # 2 etas x 3 synthetic tasks
    _assert_matches(_csv(smoke_report / "report.csv"), expected)

    report = (smoke_report / "report.md").read_text()
    assert "4 job(s): 4 completed, 0 partial, 0 failed" in report
    assert "population standard deviation" in report
    assert "None: every job completed." in report
    for (label, _), want in expected.items():
        cell = f"{want['final_mean_primary_mean']:.3f} ± {want['final_mean_primary_std']:.3f}"
        assert any(line.startswith(f"| {label} |") and cell in line for line in report.splitlines())


@pytest.mark.integration
def test_report_writes_every_figure_as_a_png(smoke_report: Path) -> None:
    pngs = {p.stem: p for p in (smoke_report / "figures").glob("*.png")}
    assert set(pngs) == FIGURES
    report = (smoke_report / "report.md").read_text()
    for name, path in pngs.items():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(path) as image:
            image.verify()
            assert min(image.size) > 200
        assert f"(figures/{name}.png)" in report


def _copy(smoke_multirun: Path, tmp_path: Path) -> tuple[Path, list[Path]]:
    """A writable copy of the shared multirun and its job directories (the fixture stays untouched)."""
    runs = tmp_path / "runs"
    shutil.copytree(smoke_multirun, runs)
    return runs, sorted(p for p in runs.iterdir() if p.is_dir())


@pytest.mark.integration
def test_partial_and_failed_jobs_are_listed_and_left_out_of_the_statistics(
    smoke_multirun: Path, tmp_path: Path
) -> None:
    runs, jobs = _copy(smoke_multirun, tmp_path)
    killed = next(j for j in jobs if _job_values(j)["eta"] == 0.1)
    crashed = next(j for j in jobs if _job_values(j)["eta"] == 0.5)
    for job in (killed, crashed):
        (job / "summary.json").unlink()
        (job / "done").unlink(missing_ok=True)
    (crashed / "failed.json").write_text(json.dumps({"error": "Traceback ...\nRuntimeError: boom"}))
    kept = [j for j in jobs if j not in (killed, crashed)]

    out = tmp_path / "report"
    assert main([str(runs), "--out", str(out)]) == 0
    _assert_matches(_csv(out / "report.csv"), _expected(kept))

    report = (out / "report.md").read_text()
    assert "4 job(s): 2 completed, 1 partial, 1 failed" in report
    lines = report.splitlines()
    killed_line = next(line for line in lines if f"`{killed.name}`" in line)
    crashed_line = next(line for line in lines if f"`{crashed.name}`" in line)
    assert "| partial |" in killed_line and "| 2 of 2 |" in killed_line
    assert "| failed |" in crashed_line and "RuntimeError: boom" in crashed_line


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "atlas_pl.report", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        timeout=300,
    )


def test_empty_directory_fails_clearly(tmp_path: Path) -> None:
    (tmp_path / "empty" / "nothing_here").mkdir(parents=True)
    result = _run_cli(str(tmp_path / "empty"))
    assert result.returncode == 2
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1
    assert message.startswith("atlas_pl.report: no job directories under") and "metrics.jsonl" in message
    assert not (tmp_path / "empty" / "report.md").exists()


def test_missing_directory_fails_clearly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        main([str(tmp_path / "absent")])
    assert stop.value.code == 2
    assert capsys.readouterr().err.startswith(f"atlas_pl.report: {tmp_path / 'absent'}")


def _set_config(job: Path, edit) -> None:
    """Apply `edit` to the config in every file of `job` that records one (summary.json, job_config.json,
    checkpoints' state.json) and to .hydra/config.yaml, as if the job had been run with those settings."""
    from omegaconf import OmegaConf

    for path in [job / "summary.json", job / "job_config.json", *job.glob("checkpoints/round_*/state.json")]:
        if path.is_file():
            payload = json.loads(path.read_text())
            edit(payload if path.name == "job_config.json" else payload["config"])
            path.write_text(json.dumps(payload))
    hydra = OmegaConf.to_container(OmegaConf.load(job / ".hydra" / "config.yaml"))
    edit(hydra)
    (job / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(hydra)))


@pytest.mark.integration
def test_a_job_with_other_settings_forms_its_own_group(smoke_multirun: Path, tmp_path: Path) -> None:
    runs, originals = _copy(smoke_multirun, tmp_path)
    source = next(j for j in originals if _job_values(j)["eta"] == 0.1 and _job_values(j)["seed"] == 0)
    copy = runs / "4_local_epochs_2"
    shutil.copytree(source, copy)
    _set_config(copy, lambda cfg: cfg["fed"].update(local_epochs=2))
    # the copy's numbers differ from its source's, so pooling it would move the source group's mean
    records = [json.loads(line) for line in (copy / "metrics.jsonl").read_text().splitlines()]
    for client in records[-1]["clients"].values():
        client["primary"] = client["primary"] / 2
    for task in records[-1]["per_task"].values():
        task["primary"], task["worst_primary"] = task["primary"] / 2, task["worst_primary"] / 2
    (copy / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))

    out = tmp_path / "report"
    assert main([str(runs), "--out", str(out)]) == 0
    rows = _csv(out / "report.csv")
    # the original groups: the same numbers as without the copy, under labels that say their setting
    expected = {
        (label.replace(")", ", fed.local_epochs=1)"), task): row
        for (label, task), row in _expected(originals).items()
    }
    expected.update(
        {("atlas (eta=0.1, fed.local_epochs=2)", task): row for (_, task), row in _expected([copy]).items()}
    )
    _assert_matches(rows, expected)
    assert {r["settings"] for r in rows.values()} == {"fed.local_epochs=1", "fed.local_epochs=2"}

    report = (out / "report.md").read_text()
    assert "Settings that differ here: `fed.local_epochs`." in report
    assert "more than once" not in report
    assert any(line.startswith("| atlas (eta=0.1, fed.local_epochs=2) | 0 |") for line in report.splitlines())

    # in the figures it keeps atlas's colour family: a shade of the same hue, distinct from its siblings
    from matplotlib.colors import rgb_to_hsv, to_rgb

    from atlas_pl.reporting import aggregate, load_jobs
    from atlas_pl.reporting.figures import ABLATION_COLORS, group_styles

    groups = aggregate(load_jobs(runs))
    colors = [style.color for style in group_styles(groups).values()]
    assert len(set(colors)) == len(groups) == 3
    hue = rgb_to_hsv(to_rgb(ABLATION_COLORS["atlas"]))[0]
    assert all(rgb_to_hsv(to_rgb(c))[0] == pytest.approx(hue, abs=0.01) for c in colors)


@pytest.mark.integration
def test_a_partial_job_is_filed_under_its_job_config_not_a_later_hydra_config(
    smoke_multirun: Path, tmp_path: Path
) -> None:
    runs, jobs = _copy(smoke_multirun, tmp_path)
    killed = next(j for j in jobs if _job_values(j)["eta"] == 0.1)
    config = json.loads((killed / "summary.json").read_text())["config"]
    (killed / "job_config.json").write_text(json.dumps(config))
    for name in ("summary.json", "done"):
        (killed / name).unlink()
    # a later launch into the same directory (refused: it holds a job) rewrote .hydra with another eta
    hydra = (killed / ".hydra" / "config.yaml").read_text()
    assert "eta: 0.1\n" in hydra
    (killed / ".hydra" / "config.yaml").write_text(hydra.replace("eta: 0.1\n", "eta: 0.5\n"))

    loaded = load_job(killed)
    assert (loaded.status, loaded.config_source, loaded.eta) == ("partial", "job_config.json", 0.1)
    out = tmp_path / "report"
    assert main([str(runs), "--out", str(out)]) == 0
    _assert_matches(_csv(out / "report.csv"), _expected([j for j in jobs if j != killed]))
    line = next(line for line in (out / "report.md").read_text().splitlines() if f"`{killed.name}`" in line)
    assert "| partial | atlas (eta=0.1) |" in line and ".hydra" not in line


def test_convergence_series_skip_rounds_nobody_scored() -> None:
    """Under fed.eval_every the unscored rounds are absent from the series, so lines join the scored
    ones instead of breaking at NaN; a seed lacking a scored round is NaN there."""
    from pathlib import Path

    from atlas_pl.reporting.figures import _series, _task_value
    from atlas_pl.reporting.reader import Job

    def record(r: int, value: float | None) -> dict:
        return {"round": r, "per_task": {} if value is None else {"sst2": {"primary": value}}}

    jobs = [
        Job(Path("a"), "done", "atlas", 0.5, 0, {}, [record(1, None), record(2, 0.6), record(3, 0.7)]),
        Job(Path("b"), "done", "atlas", 0.5, 1, {}, [record(1, None), record(2, None), record(3, 0.8)]),
    ]
    rounds, data = _series(jobs, _task_value("sst2", "primary"))
    assert rounds.tolist() == [2, 3]
    assert data[0].tolist() == [0.6, 0.7] and data[1, 1] == 0.8 and data[1, 0] != data[1, 0]  # NaN
