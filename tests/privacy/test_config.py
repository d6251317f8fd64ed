"""Bad privacy requests are refused before any model loads, naming what is wrong and what is valid."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import atlas_pl.__main__  # noqa: F401  (registers the atlas_root resolver)
from atlas_pl.models.split import SharedBackbone
from atlas_pl.privacy.app import check_invertible
from atlas_pl.privacy.config import privacy_settings
from atlas_pl.privacy.errors import PrivacyConfigError

from ..conftest import REPO_ROOT


def _settings(tmp_path, *overrides: str):
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            config_name="privacy",
            overrides=["model=tiny_bert", "task=synthetic3", "auxiliary.task=synthetic0", *overrides],
        )
    OmegaConf.set_struct(cfg, False)
    cfg.out_dir = cfg.paths.output_dir = str(tmp_path / "out")
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(resolved, dict)
    return privacy_settings({str(k): v for k, v in resolved.items()})


def test_defaults_compose_to_every_split(tmp_path) -> None:
    s = _settings(tmp_path)
    assert s.splits == (1, 2, 3) and s.noises == (0.0,) and s.victim is None
    assert s.attack.names == ("vmi", "rmi", "inverter", "bisr")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("target.splits=[0]", r"target.splits=\[0\]; valid: integers in 1..3 \(the model has 4 blocks\)"),
        ("target.splits=[4]", r"valid: integers in 1..3"),
        (
            "attack.names=[vmi,gradient_magic]",
            r"attack.names=.*valid: a non-empty list of vmi, rmi, inverter, bisr",
        ),
        ("target.knowledge=[black_box]", r"valid: a non-empty list of white_box, semi_white_box"),
        ("attack.vmi.loss=cross_entropy", r"attack.vmi.loss='cross_entropy'; valid: cosine, mse"),
        ("target.activation_noise=[-1]", r"valid: numbers >= 0"),
        ("auxiliary.task=nope", r"auxiliary.task='nope'; valid: .*sst2"),
    ],
)
def test_bad_settings_name_the_key_and_the_valid_values(tmp_path, override, message) -> None:
    with pytest.raises(PrivacyConfigError, match=message):
        _settings(tmp_path, override)


def test_the_victims_own_task_is_not_public_auxiliary_text(tmp_path) -> None:
    with pytest.raises(PrivacyConfigError, match="another task than the victim's"):
        _settings(tmp_path, "task=sst2", "auxiliary.task=sst2")


def _job_dir(tmp_path, model: str = "tiny_bert"):
    job = tmp_path / "job"
    job.mkdir()
    (job / "job_config.json").write_text(
        json.dumps({"model": {"name": model}, "lora": {"alpha": 16.0}, "seed": 0})
    )
    (job / "allocation.json").write_text(
        json.dumps({"clients": [{"task": "synthetic0", "split": 2, "ranks": [4, 4, 4, 4]}]})
    )
    return job


def test_a_job_dir_without_adapters_is_refused(tmp_path) -> None:
    job = _job_dir(tmp_path)
    with pytest.raises(PrivacyConfigError, match="holds no adapters: no complete checkpoints/round_NNN/"):
        _settings(tmp_path, f"target.job_dir={job}")
    with pytest.raises(
        PrivacyConfigError, match=r"target.client=3 but job dir .* has 1 clients; valid: 0..0"
    ):
        _settings(tmp_path, f"target.job_dir={job}", "target.client=3")
    with pytest.raises(PrivacyConfigError, match="is not a directory"):
        _settings(tmp_path, f"target.job_dir={tmp_path / 'missing'}")


def _checkpoint(job, names: list[str]) -> None:
    from safetensors.torch import save_file

    round_dir = job / "checkpoints" / "round_001"
    round_dir.mkdir(parents=True)
    (round_dir / "state.json").write_text("{}")
    save_file({n: torch.zeros(2, 2) for n in names}, str(round_dir / "tensors.safetensors"))


def test_a_job_trained_on_another_model_is_refused(tmp_path) -> None:
    job = _job_dir(tmp_path, model="minilm")
    _checkpoint(job, [f"model/0/client.adapter.factors.b{b}__attention_self_query__A" for b in (0, 1)])
    with pytest.raises(PrivacyConfigError, match="was trained on model 'minilm'.*run with model=minilm"):
        _settings(tmp_path, f"target.job_dir={job}")


def test_a_checkpoint_without_the_clients_adapters_is_refused(tmp_path) -> None:
    job = _job_dir(tmp_path)
    _checkpoint(job, ["model/0/client.adapter.factors.b0__attention_self_query__A", "model/5/server.head.w"])
    with pytest.raises(PrivacyConfigError, match=r"lacks client 0's adapters of blocks \[1\]"):
        _settings(tmp_path, f"target.job_dir={job}")


def test_a_model_whose_token_table_cannot_be_decoded_is_refused(tiny_backbone: SharedBackbone) -> None:
    table = tiny_backbone.ops.word_embeddings()
    saved = table.weight.detach().clone()
    try:
        with torch.no_grad():
            table.weight[1:] = table.weight[0]  # every token the same vector
        with pytest.raises(PrivacyConfigError, match="only 1 of its 256 token embeddings are distinct"):
            check_invertible(tiny_backbone)
    finally:
        with torch.no_grad():
            table.weight.copy_(saved)
    check_invertible(tiny_backbone)


def test_the_cli_refuses_a_bad_split_in_one_line_before_loading(tmp_path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "atlas_pl.privacy",
            "model=tiny_bert",
            "target.splits=[9]",
            f"hydra.run.dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=120,
    )
    assert done.returncode == 2
    assert "target.splits=[9]; valid: integers in 1..3" in done.stderr
    assert "Traceback" not in done.stderr
