"""`python -m atlas_pl.export` on bad input: one line naming what is valid, exit 2, nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from atlas_pl.export import peft_files
from atlas_pl.export.__main__ import main
from atlas_pl.export.job import ExportError
from atlas_pl.export.writer import export_job

from .conftest import FakeJob, write_job


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> FakeJob:
    return write_job(tmp_path_factory.mktemp("export_cli") / "job")


def _refused(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_missing_job_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = _refused(capsys, [str(tmp_path / "nope"), "--out", str(tmp_path / "out")])
    assert "does not exist" in err and "nope" in err
    assert not (tmp_path / "out").exists()


def test_not_a_job_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = _refused(capsys, [str(tmp_path), "--out", str(tmp_path / "out")])
    assert "job_config.json" in err
    assert not (tmp_path / "out").exists()


def test_job_without_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "job").mkdir()
    (tmp_path / "job" / "job_config.json").write_text(
        json.dumps({"model": {"name": "tiny_bert"}, "lora": {"alpha": 16}})
    )
    err = _refused(capsys, [str(tmp_path / "job"), "--out", str(tmp_path / "out")])
    assert "checkpoints/round_NNN" in err and "checkpoint.enabled=false" in err
    assert not (tmp_path / "out").exists()


def test_unknown_client_lists_the_valid_ones(job: FakeJob, tmp_path: Path, capsys) -> None:
    err = _refused(capsys, [str(job.dir), "--out", str(tmp_path / "out"), "--client", "7"])
    assert "--client 7" in err and "valid: 0, 1" in err
    assert not (tmp_path / "out").exists()


def test_non_empty_out_needs_overwrite(job: FakeJob, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    err = _refused(capsys, [str(job.dir), "--out", str(out)])
    assert "--overwrite" in err and "not empty" in err
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def test_out_must_not_be_the_job_dir(job: FakeJob, capsys) -> None:
    err = _refused(capsys, [str(job.dir), "--out", str(job.dir), "--overwrite"])
    assert "would replace the job directory" in err
    assert (job.dir / "job_config.json").is_file()


def test_overwrite_replaces_out_and_the_check_passes(job: FakeJob, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    assert main([str(job.dir), "--out", str(out), "--client", "1", "--overwrite"]) == 0
    printed = capsys.readouterr().out
    assert "client 1 (synthetic1; head in head.safetensors, checked: max |logit diff|" in printed
    assert sorted(p.name for p in out.iterdir()) == ["base", "client_1"]
    card = (out / "client_1" / "README.md").read_text()
    for fact in (
        "synthetic1",
        "| split point | 3:",
        "16, 2, 4, 8 (alpha 16)",
        "| cluster | 1 |",
        "| accuracy | 0.7500 |",
    ):
        assert fact in card, fact


def test_a_wrong_export_is_caught_by_the_check_and_nothing_is_written(
    job: FakeJob, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = peft_files.lora_pieces

    def halved_alpha(*args, **kwargs):
        tensors, ranks, alphas = real(*args, **kwargs)
        return tensors, ranks, {name: alpha / 2 for name, alpha in alphas.items()}

    monkeypatch.setattr("atlas_pl.export.writer.lora_pieces", halved_alpha)
    with pytest.raises(ExportError, match="away from atlas_pl's model"):
        export_job(job.dir, tmp_path / "out", client="0")
    assert list(tmp_path.iterdir()) == []
