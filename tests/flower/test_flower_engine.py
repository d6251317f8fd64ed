"""engine=flower end to end: the Ray simulation a CLI job starts gives the in-process engine's job.

Equality is exact at equal thread counts (trainer.num_threads=1 here; a ClientApp gets one CPU by
default): at 2 threads in-process against 1 per ClientApp, fp32 reductions add in another order and the
metrics differ in the 7th significant digit (README, Flower).
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from ..conftest import run_module
from .compare import assert_same_job

pytest.importorskip("flwr")

pytestmark = pytest.mark.integration

SMOKE = ["+experiment=smoke", "trainer.num_threads=1"]


def run_cli(job, *overrides: str, ok: bool = True) -> subprocess.CompletedProcess:
    result = run_module("atlas_pl", *overrides, f"paths.output_dir={job}", f"hydra.run.dir={job}")
    if ok:
        assert result.returncode == 0, result.stderr[-4000:]
    return result


@pytest.mark.parametrize(
    "job",
    [
        ["ablation=fedavg_cluster"],
        # atlas re-clustering in round 3 (the client fingerprints its trained model, after the updates it
        # was sent) and scoring only rounds 2 and 3 (updates wait for the next train message); every
        # client also scores its own personal test set, on its node
        ["ablation=atlas", "fingerprint.recluster_every=2", "fed.eval_every=2", "data.personal_share=0.25"],
    ],
    ids=["fedavg_cluster", "atlas"],
)
def test_flower_simulation_writes_the_in_process_jobs_metrics(tmp_path, job) -> None:
    run_cli(tmp_path / "inprocess", *SMOKE, *job)
    result = run_cli(tmp_path / "flower", *SMOKE, *job, "engine=flower")
    assert_same_job(tmp_path / "inprocess", tmp_path / "flower")
    flower_records = [json.loads(x) for x in (tmp_path / "flower" / "metrics.jsonl").read_text().splitlines()]
    if "fed.eval_every=2" in job:
        assert [r["evaluated"] for r in flower_records] == [False, True, True]
        assert len(json.loads((tmp_path / "flower" / "clustering.json").read_text())["history"]) == 2
        assert all("personal" in c for c in flower_records[-1]["clients"].values())
    summary = json.loads((tmp_path / "flower" / "summary.json").read_text())
    assert summary["config"]["engine"]["name"] == "flower"
    # Flower's own time is measured per round and in all; the ClientApps' processes are counted
    records = [json.loads(line) for line in (tmp_path / "flower" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["flower_seconds"] >= 0 for r in records)
    assert 0 < summary["overhead"]["flower_fraction"] < 1
    assert summary["peak_memory"]["client_processes"] >= 1
    assert summary["peak_memory"]["client_max_rss_mib"] > 50
    assert "DEPRECATED" not in result.stderr + result.stdout  # Flower's console lines go to the log file
    assert "DEPRECATED" in (tmp_path / "flower" / "atlas_pl.log").read_text()


def test_a_client_that_does_not_answer_fails_the_job_by_name(tmp_path) -> None:
    started = time.monotonic()
    result = run_cli(tmp_path, *SMOKE, "engine=flower", "engine.reply_timeout=0.5", ok=False)
    assert result.returncode != 0
    assert time.monotonic() - started < 120
    failed = json.loads((tmp_path / "failed.json").read_text())
    assert "did not answer query.setup within engine.reply_timeout=0.5 s" in failed["error"]
    assert "did not answer query.setup" in result.stderr


def test_a_flower_job_exports_and_its_dropout_does_not_depend_on_ray(tmp_path) -> None:
    """Each client carries its own RNG stream: dropout draws are the same whichever worker runs it."""
    dropout = [*SMOKE, "ablation=fedavg", "fed.rounds=2", "lora.dropout=0.1", "engine=flower"]
    dropout.append("devices.scale=0.002")  # dropout's masks need memory smoke's budgets do not leave
    run_cli(tmp_path / "a", *dropout)
    run_cli(tmp_path / "b", *dropout, "engine.client_cpus=2")  # one worker instead of two
    assert_same_job(tmp_path / "a", tmp_path / "b")
    exported = run_module("atlas_pl.export", str(tmp_path / "a"), "--out", str(tmp_path / "peft"))
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert len(list((tmp_path / "peft").glob("*/adapter_model.safetensors"))) == 9
