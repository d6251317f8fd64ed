"""Config composition and validation: bad values fail fast, naming the key and the valid values."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import atlas_pl.__main__  # noqa: F401  (registers the atlas_root resolver)
from atlas_pl.config_validation import ABLATIONS, ConfigError, validate_config
from atlas_pl.settings import build_settings

from .conftest import GLUE_DIR, REPO_ROOT

CONF = str(REPO_ROOT / "conf")


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(
            config_name="config",
            overrides=[f"data.glue_dir={GLUE_DIR}", *overrides],
            return_hydra_config=False,
        )
    OmegaConf.set_struct(cfg, False)
    cfg.paths.output_dir = "unused"
    return cfg


@pytest.mark.parametrize("experiment", ["smoke", "quick", "full"])
def test_every_experiment_composes_and_validates(experiment: str) -> None:
    cfg = _compose(f"+experiment={experiment}")
    validate_config(cfg)
    build_settings(cfg)  # and what the model's structure rules out
    assert (cfg.ablation.name, cfg.fed.eta) == ("atlas", 0.5)  # the flagship, as the default job runs it
    for key in (
        "seed",
        "model",
        "task",
        "devices",
        "ablation",
        "logger",
        "resume",
        "fed.rounds",
        "fed.local_epochs",
        "fed.clients_per_task",
        "fed.eta",
        "fed.batch_size",
        "data.samples_per_client",
        "data.eval_samples",
        "data.glue_dir",
        "fingerprint.batches",
        "allocation.rank_candidates",
        "trainer.accelerator",
    ):
        assert OmegaConf.select(cfg, key, default="MISSING") != "MISSING", key


def test_every_ablation_file_is_a_valid_ablation_name() -> None:
    files = sorted(p.stem for p in (REPO_ROOT / "conf" / "ablation").glob("*.yaml"))
    assert files == sorted(ABLATIONS)


@pytest.mark.parametrize("ablation", ABLATIONS)
def test_every_ablation_composes(ablation: str) -> None:
    cfg = _compose(f"ablation={ablation}")
    assert cfg.ablation.name == ablation
    validate_config(cfg)  # every ablation is a wired pipeline


def test_the_default_job_runs_the_flagship_and_a_baseline_is_one_override_away() -> None:
    """ATLAS, at the eta the ablation study measured best on quick (conf/config.yaml says which and why);
    the experiments keep it (test_every_experiment_composes_and_validates)."""
    cfg = _compose()
    assert (cfg.ablation.name, cfg.ablation.personalization, cfg.fed.eta) == ("atlas", "laplacian", 0.5)
    assert _compose("+experiment=quick", "ablation=fedavg_cluster").ablation.name == "fedavg_cluster"


BAD = [
    (["model.name=gpt5"], "model.name='gpt5'", "minilm"),
    (["task.names=[sst2,imdb]"], "task.names='imdb'", "sst2, cola, mrpc"),
    (["devices.mix=[cpu_2gb,phone_1gb]"], "devices.mix='phone_1gb'", "cpu_2gb, gpu_16gb, laptop_8gb"),
    (["devices.mix=[]"], "devices.mix=", "non-empty list"),
    (["model.split_point=6"], "model.split_point=6", "1..5"),
    (["model.split_point=0"], "model.split_point=0", "1..5"),
    (["lora.rank=0"], "lora.rank=0", ">= 1"),
    (["allocation.rank_candidates=[4,0,16]"], "allocation.rank_candidates", "positive integer"),
    (["fed.eta=1.5"], "fed.eta=1.5", "<= 1.0"),
    (["fed.eta=-0.1"], "fed.eta=-0.1", ">= 0.0"),
    (["data.glue_dir=/nonexistent/glue"], "data.glue_dir='/nonexistent/glue'", "train,validation"),
    (["ablation.name=magic"], "ablation.name='magic'", "local_only"),
    (["trainer.precision=bf16-true"], "trainer.precision='bf16-true'", "16-mixed, bf16-mixed"),
    (
        ["trainer.precision=16-mixed", "model.dtype=float16"],
        "trainer.precision='16-mixed'",
        "model.dtype=float32",
    ),
    (["fed.lr=inf"], "fed.lr=inf", "(finite) > 0"),
    (["fed.head_lr=nan"], "fed.head_lr=nan", "(finite) > 0"),
    (["lora.alpha=inf"], "lora.alpha=inf", "(finite) > 0"),
    (["fingerprint.dp.clip=-inf"], "fingerprint.dp.clip=-inf", "(finite) > 0"),
    (["fingerprint.layers=7"], "fingerprint.layers=7", "<= 6"),
    (["data.personal_share=0.6"], "data.personal_share=0.6", ">= 0 and <= 0.5"),
    (["data.personal_share=-0.1"], "data.personal_share=-0.1", ">= 0 and <= 0.5"),
    (["data.partition=feature"], "data.partition='feature'", "iid, dirichlet, quantity"),
    (
        ["data.partition=quantity", "data.samples_per_client=1"],
        "data.samples_per_client=1",
        ">= 2 with data.partition=quantity",
    ),
    (
        ["ablation=fedavg", "ablation.adapters=per_task"],
        "ablation.adapters='per_task'",
        "pipeline=centralized",
    ),
    (["ablation=centralized", "ablation.adapters=both"], "ablation.adapters='both'", "shared, per_task"),
]


@pytest.mark.parametrize(("overrides", "key", "valid"), BAD, ids=[b[0][0] for b in BAD])
def test_bad_values_are_named_with_their_valid_values(overrides, key, valid, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = _compose(*overrides)
    with pytest.raises(ConfigError) as info:
        validate_config(cfg)
    message = str(info.value)
    assert key in message and valid in message, message


def test_quantity_skew_with_personal_sets_keeps_two_rows_from_a_cap_of_one(monkeypatch) -> None:
    """With data.personal_share > 0 a client keeps ceil(cap / (1 - share)) rows: 2 from a cap of 1, which
    quantity skew's minimum allows (the partitioner gives each client 1 to train on and 1 to test on)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ok = ("data.partition=quantity", "data.samples_per_client=1")
    validate_config(_compose(*ok, "data.personal_share=0.2"))
    with pytest.raises(ConfigError):
        validate_config(_compose(*ok))


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "atlas_pl", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("fed.eta=2", "fed.eta=2.0 is invalid"),  # the schema types fed.eta as a float
        ("devices.mix=[]", "devices.mix"),
        ("model.split_point=9", "1..5"),
        ("model=gpt5", "atlas_pl: model=gpt5 is invalid; valid: bert, distilbert, gpt2, minilm"),
        ("fed.lrr=0.1", "fed.lrr is not a key (did you mean fed.lr"),
    ],
)
def test_cli_reports_bad_config_cleanly(override: str, expected: str, tmp_path) -> None:
    result = _cli(override, f"hydra.run.dir={tmp_path}")
    assert result.returncode == 2
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
    assert "torch" not in result.stderr  # failed before any heavy work


def test_help_and_cfg_answer_without_heavy_imports() -> None:
    code = (
        "import sys, runpy; sys.argv=['atlas_pl','--cfg','job'];\n"
        "try:\n  runpy.run_module('atlas_pl', run_name='__main__')\nexcept SystemExit: pass\n"
        "heavy = ('torch', 'transformers', 'lightning', 'datasets')\n"
        "print('HEAVY', sorted(m for m in heavy if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120
    )
    assert "fed:" in result.stdout and "HEAVY []" in result.stdout, result.stdout + result.stderr
    help_out = _cli("--help")
    assert help_out.returncode == 0
    for group in ("ablation:", "devices:", "experiment:", "model:", "task:", "logger:", "trainer:"):
        assert group in help_out.stdout
    assert "Every key is typed" in help_out.stdout and "--config-dir DIR" in help_out.stdout


MODELS = sorted(p.stem for p in (Path(CONF) / "model").glob("*.yaml"))


@pytest.mark.parametrize("model", MODELS)
def test_every_model_passes_the_structural_checks(model: str, monkeypatch) -> None:
    """build_settings adds what the model's config.json rules out; every shipped model must pass with its
    own settings. The tiny models are 32 wide, so they take ranks up to 32 (the default candidates go to
    64 for MiniLM's 384-wide projections) and refuse more with that figure named."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tiny = model.startswith("tiny_")
    ranks = ["allocation.rank_candidates=[2,4,8,16,32]"] if tiny else []
    # SmolLM2's client half always holds its 54 MiB embeddings: the MiniLM-sized budgets need 1/12, not 1/28
    scale = ["devices.scale=0.08333333333333333"] if model == "smollm2" else []
    settings = build_settings(_compose(f"model={model}", "task=synthetic3", *ranks, *scale))
    assert settings.model.name == model
    if tiny:
        with pytest.raises(
            ConfigError, match=r"allocation.rank_candidates=\[4, 8, 16, 32, 64\] is invalid.*<= 32"
        ):
            build_settings(_compose(f"model={model}", "task=synthetic3"))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["privacy.activation_noise=-0.5"], r"privacy.activation_noise=-0.5 is invalid; valid: a number"),
        (
            ["privacy.activation_noise=0.5", "trainer.batched_clients=true"],
            r"no split exchange to add the noise",
        ),
        (["privacy.activation_noise=0.5", "ablation=centralized"], r"0 with a centralized ablation"),
        (
            ["privacy.activation_noise=0.5", "fingerprint.recluster_every=2"],
            r"h it would send carries no noise",
        ),
    ],
)
def test_activation_noise_is_refused_where_nothing_crosses_a_split(overrides, message) -> None:
    with pytest.raises(ConfigError, match=message):
        validate_config(_compose("+experiment=smoke", *overrides))
