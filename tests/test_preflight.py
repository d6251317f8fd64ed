"""The pieces behind the one-line refusals: model-file checks, structural checks, markers, JSON, exits."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from atlas_pl.config_validation import ConfigError
from atlas_pl.engines.records import ClientRound, check_not_diverged
from atlas_pl.errors import CheckpointError, DivergedError, JobDirectoryError, user_errors
from atlas_pl.jobdir import check_writable, read_done_marker
from atlas_pl.models.catalog import REGISTRY, resolve_model_spec
from atlas_pl.models.files import check_model_files, model_config, safetensors_problem
from atlas_pl.models.loading import load_base
from atlas_pl.models.split import SharedBackbone
from atlas_pl.phases.memory import ModelArch
from atlas_pl.tracking.results import strict, write_jsonl


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import transformers

    path = tmp_path_factory.mktemp("model") / "bert_dir"
    config = transformers.BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=32
    )
    transformers.BertModel(config, add_pooling_layer=False).save_pretrained(path)
    (path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "b"]) + "\n")
    return path


def test_an_intact_model_directory_has_no_problems(saved_model: Path) -> None:
    spec = resolve_model_spec(str(saved_model))
    assert check_model_files(spec) == []
    assert safetensors_problem(saved_model / "model.safetensors") is None


def test_truncation_anywhere_in_the_weights_is_found(saved_model: Path, tmp_path: Path) -> None:
    data = (saved_model / "model.safetensors").read_bytes()
    for keep in (0, 5, 8 + 10, len(data) // 2, len(data) - 1):
        cut = tmp_path / f"cut_{keep}.safetensors"
        cut.write_bytes(data[:keep])
        problem = safetensors_problem(cut)
        assert problem is not None and str(cut) in problem, keep


@pytest.mark.parametrize(
    ("name", "targets"),
    [
        ("tiny_bert", None),
        ("tiny_bert", ["query", "value", "intermediate.dense", "output.dense"]),  # the smoke experiment's
        ("tiny_gpt2", None),
        ("tiny_llama", ["q_proj", "v_proj", "up_proj"]),
        ("saved", None),
    ],
)
def test_the_config_only_arch_equals_the_loaded_one(name: str, targets, saved_model: Path) -> None:
    """What the pre-checks plan with (registry entry or config.json, no torch) is what Phase 2 allocates
    with once the model is loaded, so a device mix refused early would also fail later, and vice versa."""
    spec = resolve_model_spec(str(saved_model)) if name == "saved" else REGISTRY[name]
    base, _ = load_base(spec)
    backbone = SharedBackbone(spec, base, targets=targets)
    config = model_config(spec)
    assert config is not None
    planned = ModelArch.from_hf_config(spec.family, config, backbone.targets)
    assert planned == ModelArch.from_backbone(backbone)


def test_strict_json_has_no_nan_tokens(tmp_path: Path) -> None:
    record = {
        "a": math.nan,
        "b": [1.0, math.inf, {"c": -math.inf}],
        "d": np.float32("nan"),
        "e": np.arange(2),
    }
    assert strict(record) == {"a": None, "b": [1.0, None, {"c": None}], "d": None, "e": [0, 1]}
    write_jsonl(tmp_path / "m.jsonl", [record])

    def refuse(token: str) -> None:
        raise AssertionError(token)

    assert json.loads((tmp_path / "m.jsonl").read_text(), parse_constant=refuse)["a"] is None


def test_an_output_dir_below_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(JobDirectoryError, match=r"file is a file, not a directory"):
        check_writable(tmp_path / "file" / "job")
    check_writable(tmp_path / "new" / "job")  # creatable: no error, and it now exists
    assert (tmp_path / "new" / "job").is_dir()


@pytest.mark.parametrize("content", ['{"round": 3, "final_mean', '["round"]', '{"round": 3}'])
def test_a_damaged_done_marker_is_refused(tmp_path: Path, content: str) -> None:
    (tmp_path / "done").write_text(content)
    with pytest.raises(CheckpointError, match="done"):
        read_done_marker(tmp_path / "done")


def _row(loss: float | None, excluded: bool = False, trained: bool = True) -> ClientRound:
    return ClientRound(
        0, "t", 0, "d", train_loss=loss, train_seconds=1.0 if trained else None, excluded=excluded
    )


def test_a_round_where_every_trained_client_is_non_finite_fails() -> None:
    with pytest.raises(DivergedError, match="round 4: training diverged.*fed.lr \\(now 0.5\\)"):
        check_not_diverged(4, [_row(math.nan), _row(1.0, excluded=True), _row(None, trained=False)], 0.5)
    check_not_diverged(4, [_row(math.nan), _row(0.7)], 0.5)  # one healthy client: the job goes on
    check_not_diverged(4, [_row(None, trained=False)], 0.5)  # nobody trained (all dropped this round)


def test_user_errors_print_one_line_and_exit_2(capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    monkeypatch.delenv("ATLAS_DEBUG", raising=False)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(SystemExit) as stop, user_errors():
        raise JobDirectoryError("out/x is bad; choose another")
    assert stop.value.code == 2
    assert capsys.readouterr().err == "atlas_pl: out/x is bad; choose another\n"
    with pytest.raises(SystemExit), user_errors():
        raise ConfigError(["a=1 is invalid; valid: 2", "b=3 is invalid; valid: 4"])
    assert capsys.readouterr().err.splitlines() == [
        "atlas_pl: invalid configuration:",
        "  - a=1 is invalid; valid: 2",
        "  - b=3 is invalid; valid: 4",
    ]


def test_debugging_keeps_the_traceback(monkeypatch) -> None:
    monkeypatch.setenv("ATLAS_DEBUG", "1")
    with pytest.raises(JobDirectoryError), user_errors():
        raise JobDirectoryError("shown with its traceback")


def test_bugs_are_not_swallowed() -> None:
    with pytest.raises(ZeroDivisionError), user_errors():
        _ = 1 / 0
