"""Round checkpoints and resume: a job killed mid-round and resumed ends exactly like one never stopped."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from atlas_pl.tracking.checkpoint import (
    CheckpointError,
    complete_rounds,
    config_differences,
    latest_checkpoint,
    load_checkpoint,
    optimizer_tensors,
    restore_optimizer,
    round_dir,
    save_checkpoint,
)
from atlas_pl.tracking.wandb_offline import read_offline_run

from ..conftest import REPO_ROOT, cli_env

SMOKE = ["+experiment=smoke", "ablation=atlas", "fed.eta=0.5", "fed.rounds=2", "checkpoint.keep=0"]
TIMING = ("round_seconds", "orchestration_seconds", "evaluation_seconds", "fingerprint_seconds")
CLIENT_TIMING = ("train_seconds",)

# Runs the app, but SIGKILLs itself at the second training step of client 1 in round 2 (after round 1's
# checkpoint, before round 2's): the hook lives here, not in the package.
KILLER = textwrap.dedent(
    """
    import os, signal, sys
    from atlas_pl.lightning import modules

    original = modules.ClientModule.training_step

    def step(self, batch, batch_idx):
        if self.trainer.current_epoch == 1 and self.client_id == 1 and batch_idx == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        return original(self, batch, batch_idx)

    modules.ClientModule.training_step = step
    from atlas_pl.__main__ import main
    sys.argv = ["atlas_pl", *sys.argv[1:]]
    main()
    """
)


def _cli(tmp_path: Path, run_dir: Path, *overrides: str, script: str | None = None):
    cmd = [sys.executable, "-c", script] if script else [sys.executable, "-m", "atlas_pl"]
    return subprocess.run(
        [*cmd, *overrides, f"hydra.run.dir={run_dir}"],
        capture_output=True,
        text=True,
        env=cli_env(),
        cwd=REPO_ROOT,
        timeout=1800,
    )


def _metrics(run_dir: Path) -> list[dict]:
    """metrics.jsonl without the wall-clock fields (the only ones allowed to differ)."""
    records = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        for key in TIMING:
            record.pop(key, None)  # the centralized engine records fewer timings
        for client in record["clients"].values():
            for key in CLIENT_TIMING:
                client.pop(key)
        records.append(record)
    return records


def _results(run_dir: Path) -> dict[Path, int]:
    """The job's files and checkpoints with their mtimes; not Hydra's .hydra/ and log, which Hydra rewrites
    whenever anything is launched into the directory (job_config.json keeps the job's own settings)."""
    return {
        p: p.stat().st_mtime_ns
        for p in run_dir.rglob("*")
        if p.is_file() and ".hydra" not in p.parts and p.name != "atlas_pl.log"
    }


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("uninterrupted")
    run_dir = tmp / "run"
    result = _cli(tmp, run_dir, *SMOKE, "logger=csv")
    assert result.returncode == 0, result.stderr[-4000:]
    return run_dir


@pytest.mark.integration
def test_sigkill_in_round_2_then_resume_ends_with_identical_metrics(uninterrupted, tmp_path) -> None:
    run_dir = tmp_path / "run"
    killed = _cli(tmp_path, run_dir, *SMOKE, "logger=wandb", script=KILLER)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert complete_rounds(run_dir / "checkpoints") == [1]  # round 2 never completed
    assert not (run_dir / "done").exists() and not (run_dir / "summary.json").exists()
    assert [r["round"] for r in _metrics(run_dir)] == [1]

    resumed = _cli(tmp_path, run_dir, *SMOKE, "logger=wandb", "resume=true")
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "continuing at round 2" in resumed.stdout + resumed.stderr

    assert _metrics(run_dir) == _metrics(uninterrupted)  # every accuracy, loss, byte, rank, cluster
    for name in ("clustering.json", "allocation.json"):  # Phase 1 ran once; only its timing may differ
        ours, theirs = (json.loads((d / name).read_text()) for d in (run_dir, uninterrupted))
        ours.pop("seconds", None), theirs.pop("seconds", None)
        assert ours == theirs
    summary = json.loads((run_dir / "summary.json").read_text())
    reference = json.loads((uninterrupted / "summary.json").read_text())
    assert summary["final"] == reference["final"]
    assert summary["totals"]["upload_bytes"] == reference["totals"]["upload_bytes"]
    assert summary["totals"]["resumed_from_round"] == 1
    assert (
        json.loads((run_dir / "done").read_text())["final_mean_primary"] == summary["final"]["mean_primary"]
    )
    # the resumed process continued the same W&B run (same id), logging only the rounds it ran
    runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 2
    assert len({r.name.rsplit("-", 1)[1] for r in runs}) == 1  # offline-run-<time>-<run id>
    second = read_offline_run(runs[1])  # (the killed one's file may end mid-record)
    assert second["id"] == runs[0].name.rsplit("-", 1)[1]
    assert [row["round"] for row in second["history"] if "mean_accuracy" in row] == [2]


@pytest.mark.integration
def test_resume_skips_a_done_job_without_touching_it(uninterrupted, tmp_path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(uninterrupted, run_dir)
    before = _results(run_dir)
    result = _cli(tmp_path, run_dir, *SMOKE, "logger=csv", "resume=true")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "is done" in result.stdout + result.stderr
    assert _results(run_dir) == before


@pytest.mark.integration
def test_a_directory_holding_a_job_is_refused_without_resume(uninterrupted, tmp_path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(uninterrupted, run_dir)
    before = (run_dir / "metrics.jsonl").read_bytes()
    result = _cli(tmp_path, run_dir, *SMOKE, "logger=csv")
    assert result.returncode == 2
    assert "already holds a job" in result.stderr and "resume=true" in result.stderr
    assert (run_dir / "metrics.jsonl").read_bytes() == before


@pytest.mark.integration
def test_resume_under_different_settings_is_refused_naming_them(uninterrupted, tmp_path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(uninterrupted, run_dir)
    (run_dir / "done").unlink()
    result = _cli(tmp_path, run_dir, *SMOKE, "logger=csv", "resume=true", "fed.lr=0.5")
    assert result.returncode == 2
    assert "fed.lr: 0.01 -> 0.5" in result.stderr, result.stderr[-2000:]
    assert not (run_dir / "done").exists()


@pytest.mark.integration
def test_a_done_job_is_extended_by_more_rounds_and_refuses_fewer_or_other_settings(
    uninterrupted, tmp_path
) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(uninterrupted, run_dir)
    base = [o for o in SMOKE if not o.startswith("fed.rounds")]
    fewer = _cli(tmp_path, run_dir, *base, "fed.rounds=1", "logger=csv", "resume=true")
    assert fewer.returncode == 2 and "fed.rounds >= 2" in fewer.stderr, fewer.stderr[-2000:]
    other_eta = [o for o in SMOKE if not o.startswith("fed.eta")]
    other = _cli(tmp_path, run_dir, *other_eta, "fed.eta=0.3", "logger=csv", "resume=true")
    assert other.returncode == 2 and "fed.eta: 0.5 -> 0.3" in other.stderr, other.stderr[-2000:]
    assert json.loads((run_dir / "done").read_text())["round"] == 2  # both refusals left the job as it was

    more = _cli(tmp_path, run_dir, *base, "fed.rounds=3", "logger=csv", "resume=true")
    assert more.returncode == 0, more.stderr[-4000:]
    assert "extending" in more.stdout + more.stderr
    records = _metrics(run_dir)
    assert [r["round"] for r in records] == [1, 2, 3]
    assert records[:2] == _metrics(uninterrupted)
    assert json.loads((run_dir / "done").read_text())["round"] == 3
    assert json.loads((run_dir / "summary.json").read_text())["overhead"]["fit_calls"] == 3 * 9


@pytest.mark.integration
def test_a_job_directory_in_use_is_refused(uninterrupted, tmp_path) -> None:
    import fcntl

    run_dir = tmp_path / "run"
    shutil.copytree(uninterrupted, run_dir)
    (run_dir / "done").unlink()
    with (run_dir / ".lock").open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        result = _cli(tmp_path, run_dir, *SMOKE, "logger=csv", "resume=true")
    assert result.returncode == 2 and "in use by another running atlas_pl process" in result.stderr


def test_settings_check_ignores_paths_and_keys_newer_than_the_checkpoint() -> None:
    saved = {
        "fed": {"lr": 0.01, "rounds": 2},
        "data": {"glue_dir": "/a/glue", "max_len": 32},
        "paths": {"x": 1},
    }
    current = {
        "fed": {"lr": 0.01, "rounds": 5, "new_setting": 1},
        "data": {"glue_dir": "/b/glue", "max_len": 32},
        "paths": {"x": 2},
    }
    assert config_differences(saved, current) == []
    current["data"]["max_len"] = 64
    assert config_differences(saved, current) == ["data.max_len: 32 -> 64"]


def test_a_setting_added_since_the_checkpoint_may_not_be_turned_on_when_resuming() -> None:
    """A checkpoint from before personal test sets trained on all of each client's rows: resuming it with
    data.personal_share > 0 would continue on other rows, so it is refused; the old value is accepted.
    The same for every setting added since (ablation.adapters, clustering.by_task)."""
    saved = {"data": {"max_len": 32}, "ablation": {"name": "centralized"}, "clustering": {"k_min": 2}}
    same = {
        "data": {"max_len": 32, "personal_share": 0.0},
        "ablation": {"name": "centralized", "adapters": "shared"},
        "clustering": {"k_min": 2, "by_task": False},
    }
    assert config_differences(saved, same) == []
    other = {
        "data": {"max_len": 32, "personal_share": 0.2},
        "ablation": {"name": "centralized", "adapters": "per_task"},
        "clustering": {"k_min": 2, "by_task": True},
    }
    assert config_differences(saved, other) == [
        "ablation.adapters: 'shared' -> 'per_task'",
        "clustering.by_task: False -> True",
        "data.personal_share: 0.0 -> 0.2",
    ]


def _cut_after_round_1_and_resumed(tmp_path: Path, overrides: list[str]) -> tuple[Path, Path]:
    """A finished 2-round job, and a copy cut back to its round-1 checkpoint and resumed."""
    full = tmp_path / "full"
    assert _cli(tmp_path, full, *overrides).returncode == 0
    cut = tmp_path / "cut"
    shutil.copytree(full, cut)
    for name in ("done", "summary.json"):
        (cut / name).unlink()
    shutil.rmtree(round_dir(cut / "checkpoints", 2))
    result = _cli(tmp_path, cut, *overrides, "resume=true")
    assert result.returncode == 0, result.stderr[-4000:]
    assert "continuing at round 2" in result.stdout + result.stderr
    return full, cut


@pytest.mark.integration
def test_centralized_resumes_exactly_too(tmp_path) -> None:
    """The centralized pipeline: shared adapter, heads, AdamW moments, loader orders and RNGs come back."""
    overrides = [
        "+experiment=smoke",
        "ablation=centralized",
        "fed.rounds=2",
        "checkpoint.keep=0",
        "logger=csv",
    ]
    full, cut = _cut_after_round_1_and_resumed(tmp_path, overrides)
    assert _metrics(cut) == _metrics(full)


@pytest.mark.integration
def test_a_job_with_activation_noise_resumes_exactly(tmp_path) -> None:
    """The defense's training noise comes from the checkpointed global RNG, its scoring noise from a
    seeded generator: a job cut after round 1 and resumed draws the same noise as one never stopped.
    With personal test sets: the resumed job rebuilds the same sets and scores them the same."""
    full, cut = _cut_after_round_1_and_resumed(
        tmp_path, [*SMOKE, "privacy.activation_noise=0.5", "data.personal_share=0.25", "logger=csv"]
    )
    assert _metrics(cut) == _metrics(full)
    assert all("personal" in c for c in _metrics(cut)[-1]["clients"].values())
    assert json.loads((cut / "summary.json").read_text())["defenses"]["activation_noise"] == 0.5


@pytest.mark.integration
def test_sweep_rerun_skips_finished_jobs_and_resumes_the_others(tmp_path) -> None:
    sweep = tmp_path / "sweep"
    args = [
        "-m",
        "+experiment=smoke",
        "fed.rounds=2",
        "checkpoint.keep=0",
        "seed=0,1",
        f"hydra.sweep.dir={sweep}",
    ]

    def multirun(*extra: str):
        return subprocess.run(
            [sys.executable, "-m", "atlas_pl", *args, *extra],
            capture_output=True,
            text=True,
            env=cli_env(),
            cwd=REPO_ROOT,
            timeout=1800,
        )

    assert multirun().returncode == 0
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert [j.name for j in jobs] == [
        f"{i}_+experiment=smoke,fed.rounds=2,seed={i}"
        for i in (0, 1)  # checkpoint.* is not in names
    ]
    finished, killed = jobs
    reference = _metrics(killed)
    # job 1 as a kill after round 1 would leave it: no done marker, no summary, round 1's checkpoint
    for name in ("done", "summary.json"):
        (killed / name).unlink()
    shutil.rmtree(round_dir(killed / "checkpoints", 2))
    untouched = _results(finished)

    rerun = multirun("resume=true")
    assert rerun.returncode == 0, rerun.stderr[-4000:]
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir() and not p.name.startswith(".")) == [
        j.name for j in jobs
    ]  # resume is not part of the job directory names
    assert {
        p: p.stat().st_mtime_ns for p in finished.rglob("*") if p.is_file() and p in untouched
    } == untouched
    assert (killed / "done").is_file()
    assert json.loads((killed / "summary.json").read_text())["totals"]["resumed_from_round"] == 1
    assert _metrics(killed) == reference


# ---- the file format itself ----


def test_a_crash_while_writing_leaves_the_previous_checkpoint(tmp_path, monkeypatch) -> None:
    root = tmp_path / "checkpoints"
    save_checkpoint(root, 1, {"records": [1]}, {"w": torch.ones(3)})

    def crash(*args, **kwargs):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr("atlas_pl.tracking.checkpoint.os.replace", crash)
    with pytest.raises(OSError, match="simulated"):
        save_checkpoint(root, 2, {"records": [1, 2]}, {"w": torch.full((3,), 2.0)})
    assert complete_rounds(root) == [1]
    latest = latest_checkpoint(root)
    assert latest is not None and latest.round == 1 and torch.equal(latest.tensors["w"], torch.ones(3))


def test_a_damaged_tensor_file_is_detected_and_passed_over(tmp_path) -> None:
    root = tmp_path / "checkpoints"
    save_checkpoint(root, 1, {}, {"w": torch.ones(4)}, keep=0)
    save_checkpoint(root, 2, {}, {"w": torch.full((4,), 2.0)}, keep=0)
    tensors = round_dir(root, 2) / "tensors.safetensors"
    data = bytearray(tensors.read_bytes())
    data[-1] ^= 0xFF
    tensors.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="damaged"):
        load_checkpoint(round_dir(root, 2))
    latest = latest_checkpoint(root)
    assert latest is not None and latest.round == 1


def test_keep_prunes_old_rounds(tmp_path) -> None:
    root = tmp_path / "checkpoints"
    for r in range(1, 5):
        save_checkpoint(root, r, {}, {"w": torch.ones(1) * r}, keep=2)
    assert complete_rounds(root) == [3, 4]


def test_adamw_state_round_trips_through_tensors() -> None:
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(3, 2)), torch.nn.Parameter(torch.randn(2))]
    opt = torch.optim.AdamW(params, lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        sum((p**2).sum() for p in params).backward()
        opt.step()
    saved = optimizer_tensors("o", opt)
    fresh = torch.optim.AdamW(params, lr=0.1)
    restore_optimizer("o", fresh, saved)
    for p in params:
        for key in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(fresh.state[p][key], opt.state[p][key])
