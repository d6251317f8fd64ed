"""Bad input at every stage: one `atlas_pl:` line on stderr, exit code 2, no traceback, nothing lost.

Every case runs the real CLI in a subprocess. Most run against a copy of a finished job with
`resume=true fed.rounds=2` (so the job would really continue) and check afterwards that every file the
job had written is byte for byte what it was. The data files, model directories and markers are built
here, in tmp directories, so each case breaks exactly one thing.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, cli_env

pytestmark = pytest.mark.integration

TASKS = "[sst2,mrpc]"
BASE = [
    "+experiment=smoke",
    f"task.names={TASKS}",
    "fed.clients_per_task=2",
    "fed.rounds=1",
    "data.samples_per_client=16",
    "data.eval_samples=16",
    "fingerprint.batches=1",
    "logger=none",
]
CONTINUE = ["resume=true", "fed.rounds=2"]  # asks the finished base job to go on: the check must come first
ROWS = 40


def _sentences(n: int, offset: int = 0) -> list[str]:
    words = ["good", "bad", "film", "plot", "actor", "scene", "music", "story"]
    return [
        " ".join(words[(i + j) % len(words)] for j in range(4 + i % 3)) for i in range(offset, offset + n)
    ]


def write_glue(root: Path) -> Path:
    """A small, valid GLUE copy for sst2 (single sentence) and mrpc (pairs)."""
    for split, offset in (("train", 0), ("validation", 1000)):
        (root / "sst2").mkdir(parents=True, exist_ok=True)
        (root / "mrpc").mkdir(parents=True, exist_ok=True)
        single = ["sentence\tlabel", *(f"{s}\t{i % 2}" for i, s in enumerate(_sentences(ROWS, offset)))]
        (root / "sst2" / f"{split}.tsv").write_text("\n".join(single) + "\n")
        pairs = zip(_sentences(ROWS, offset), _sentences(ROWS, offset + 7))
        paired = ["sentence1\tsentence2\tlabel", *(f"{a}\t{b}\t{i % 2}" for i, (a, b) in enumerate(pairs))]
        (root / "mrpc" / f"{split}.tsv").write_text("\n".join(paired) + "\n")
    return root


def run_cli(
    *overrides: str, multirun: bool = False, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "atlas_pl", *(["-m"] if multirun else []), *overrides]
    return subprocess.run(
        cmd, cwd=REPO_ROOT, env=cli_env(**(env or {})), capture_output=True, text=True, timeout=300
    )


def snapshot(job: Path) -> dict[str, str]:
    """sha256 of every file the job wrote (Hydra's .hydra/ and the log are rewritten by any launch)."""
    return {
        str(p.relative_to(job)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(job.rglob("*"))
        if p.is_file() and p.parts[len(job.parts)] not in (".hydra", "atlas_pl.log", ".lock")
    }


@pytest.fixture(scope="module")
def glue(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_glue(tmp_path_factory.mktemp("glue"))


@pytest.fixture(scope="module")
def finished_job(tmp_path_factory: pytest.TempPathFactory, glue: Path) -> Path:
    job = tmp_path_factory.mktemp("finished") / "job"
    done = run_cli(*BASE, f"data.glue_dir={glue}", f"hydra.run.dir={job}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert (job / "done").is_file()
    return job


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small BERT saved the way Hugging Face saves models (safetensors, config.json, vocab.txt)."""
    import transformers

    path = tmp_path_factory.mktemp("model") / "tiny_bert_dir"
    config = transformers.BertConfig(
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=64,
        vocab_size=64,
        max_position_embeddings=128,
    )
    transformers.BertModel(config, add_pooling_layer=False).save_pretrained(path)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *_sentences(8)[0].split(), *map(str, range(40))]
    (path / "vocab.txt").write_text("\n".join(dict.fromkeys(vocab)) + "\n")
    return path


@dataclass
class Case:
    """One bad input: `build(tmp, glue, model_dir)` makes the broken thing and returns the overrides."""

    name: str
    build: Callable[[Path, Path, Path], list[str]]
    needles: list[str]
    on_finished_job: bool = True  # False: the bad value changes the job's settings; run in a fresh dir
    env: dict[str, str] = field(default_factory=dict)


def _broken_glue(path: str, content: str | bytes) -> Callable[[Path, Path, Path], list[str]]:
    def build(tmp: Path, glue: Path, model: Path) -> list[str]:
        bad = shutil.copytree(glue, tmp / "bad_glue")
        target = bad / path
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content)
        return [f"data.glue_dir={bad}"]

    return build


def _sst2(*rows: str, header: str = "sentence\tlabel") -> str:
    return "\n".join([header, "a fine film\t1", *rows]) + "\n"


def _broken_model(breaker: Callable[[Path], None]) -> Callable[[Path, Path, Path], list[str]]:
    def build(tmp: Path, glue: Path, model: Path) -> list[str]:
        bad = shutil.copytree(model, tmp / "bad_model")
        breaker(bad)
        return [f"model.name={bad}"]

    return build


def _truncate(path: Path, fraction: float = 0.6) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


def _overrides(*values: str) -> Callable[[Path, Path, Path], list[str]]:
    return lambda tmp, glue, model: list(values)


def _file_in_the_way(tmp: Path, glue: Path, model: Path) -> list[str]:
    (tmp / "a_file").write_text("not a directory\n")
    return [f"hydra.run.dir={tmp / 'a_file' / 'job'}"]


CASES = [
    # data files: named by file and line, with what was expected
    Case(
        "missing_column",
        _broken_glue("sst2/train.tsv", _sst2(header="sentence\tlbl")),
        ["train.tsv:1", "wrong header", "'label'"],
    ),
    Case(
        "label_out_of_range",
        _broken_glue("sst2/train.tsv", _sst2("too high\t2")),
        ["train.tsv:3", "label 2 out of range", "0..1"],
    ),
    Case(
        "negative_label",
        _broken_glue("sst2/train.tsv", _sst2("negative\t-1")),
        ["train.tsv:3", "label '-1' is invalid", "0..1"],
    ),
    Case(
        "non_integer_label",
        _broken_glue("sst2/train.tsv", _sst2("half\t0.5")),
        ["train.tsv:3", "label '0.5' is invalid"],
    ),
    Case(
        "bad_label_in_validation",
        _broken_glue("sst2/validation.tsv", _sst2("x\t7")),
        ["validation.tsv:3", "label 7 out of range"],
    ),
    Case(
        "empty_file", _broken_glue("sst2/train.tsv", ""), ["train.tsv:1", "empty file", "sentence<TAB>label"]
    ),
    Case(
        "header_without_rows",
        _broken_glue("sst2/train.tsv", "sentence\tlabel\n"),
        ["train.tsv", "no data rows"],
    ),
    Case(
        "extra_field",
        _broken_glue("sst2/train.tsv", _sst2("a\tb\t1")),
        ["train.tsv:3", "found 3 tab-separated fields, expected 2"],
    ),
    Case(
        "binary_content",
        _broken_glue("sst2/train.tsv", bytes(range(128, 256)) * 8),
        ["train.tsv:1: not valid UTF-8", "byte 0x80"],
    ),
    Case(
        "undecodable_byte_in_a_row",
        _broken_glue("sst2/train.tsv", _sst2("caf\xe9 latin-1\t1").encode("latin-1")),
        ["train.tsv:3: not valid UTF-8", "byte 0xe9"],
    ),
    Case(
        "empty_text",
        _broken_glue("sst2/train.tsv", _sst2("   \t1")),
        ["train.tsv:3", "empty text in column 'sentence'"],
    ),
    Case("nul_byte", _broken_glue("sst2/train.tsv", _sst2("bro\x00ken\t1")), ["train.tsv:3", "NUL byte"]),
    Case(
        "pair_task_with_single_columns",
        _broken_glue("mrpc/train.tsv", _sst2()),
        ["mrpc/train.tsv:1", "wrong header", "'sentence1', 'sentence2', 'label'"],
    ),
    # model directories: what is missing or damaged
    Case(
        "model_without_weights",
        _broken_model(lambda d: (d / "model.safetensors").unlink()),
        ["has no weights", "model.safetensors"],
    ),
    Case(
        "model_config_not_json",
        _broken_model(lambda d: (d / "config.json").write_text("{not json")),
        ["config.json is not valid JSON"],
    ),
    Case(
        "model_weights_corrupted",
        _broken_model(lambda d: (d / "model.safetensors").write_bytes(os.urandom(4096))),
        ["model.safetensors is corrupted"],
    ),
    Case(
        "model_weights_truncated",
        _broken_model(lambda d: _truncate(d / "model.safetensors")),
        ["model.safetensors is truncated"],
    ),
    # run-time infeasibility, decided before the model loads
    Case(
        "no_client_fits_its_device",
        _overrides("devices.scale=1e-9"),
        ["cannot hold even 1 block", "memory_gb"],
    ),
    Case(
        "every_client_dropped",
        _overrides("devices.scale=1e-9", "allocation.drop_infeasible=true"),
        ["drops every one of the 4 clients"],
    ),
    Case(
        "more_clients_than_examples",
        _overrides("fed.clients_per_task=100"),
        ["sst2 has 40 training examples", "fed.clients_per_task <= 40"],
        on_finished_job=False,
    ),
    Case(
        "quantity_skew_below_two_rows_per_client",
        _overrides("fed.clients_per_task=21", "data.partition=quantity"),
        ["sst2 has 40 training examples", "x 2 rows each (data.partition=quantity)", "<= 20"],
        on_finished_job=False,
    ),
    Case(
        "rank_above_hidden_size",
        _overrides("allocation.rank_candidates=[4,64]"),
        ["allocation.rank_candidates=[4, 64] is invalid", "ranks <= 32"],
    ),
    Case(
        "lora_targets_match_nothing",
        _overrides("model.lora_targets=[nope]"),
        ["match no projection", "attention.self.query"],
    ),
    Case(
        "max_len_beyond_positions",
        _overrides("data.max_len=100000"),
        ["data.max_len=100000 is invalid", "8..128"],
    ),
    Case(
        "fingerprint_layers_beyond_blocks",
        _overrides("fingerprint.layers=10"),
        ["fingerprint.layers=10 is invalid", "<= 4"],
    ),
    Case("non_finite_lr", _overrides("fed.lr=inf"), ["fed.lr=inf is invalid", "finite"]),
    Case(
        "gpu_without_gpu",
        _overrides("trainer.accelerator=gpu"),
        ["trainer.accelerator=gpu", "no CUDA device"],
        on_finished_job=False,
        env={"CUDA_VISIBLE_DEVICES": ""},  # no GPU visible, on any machine
    ),
    # the command line itself: a key or an option that does not exist, an override that does not parse
    Case(
        "mistyped_key",
        _overrides("fed.lrr=0.1"),
        ["fed.lrr is not a key", "did you mean fed.lr", "valid keys under fed"],
    ),
    Case(
        "unknown_option", _overrides("ablation=atlass"), ["ablation=atlass is invalid", "atlas, centralized"]
    ),
    Case(
        "unparsable_override", _overrides("fed.lr=[1"), ["cannot parse the override fed.lr=[1", "key=value"]
    ),
    # output directories, checked before Hydra logs into them
    Case("output_dir_under_a_file", _file_in_the_way, ["is a file, not a directory"], on_finished_job=False),
    Case(
        "output_dir_unwritable",
        _overrides("hydra.run.dir=/proc/atlas_pl_test/job"),
        ["cannot be created or written"],
        on_finished_job=False,
    ),
]


def _check_refusal(result: subprocess.CompletedProcess[str], needles: list[str]) -> None:
    err = result.stderr
    assert result.returncode == 2, f"rc={result.returncode}\n{err[-3000:]}"
    assert "Traceback" not in err, err[-3000:]
    messages = [line for line in err.splitlines() if line.startswith("atlas_pl:")]
    assert len(messages) == 1, err[-3000:]
    for needle in needles:
        assert needle in err, f"{needle!r} not in:\n{err[-3000:]}"


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_bad_input_is_one_line_and_loses_nothing(
    case: Case, tmp_path: Path, glue: Path, finished_job: Path, model_dir: Path
) -> None:
    overrides = case.build(tmp_path, glue, model_dir)
    if case.on_finished_job:
        job = shutil.copytree(finished_job, tmp_path / "job")
        before = snapshot(job)
        result = run_cli(
            *BASE, f"data.glue_dir={glue}", *CONTINUE, f"hydra.run.dir={job}", *overrides, env=case.env
        )
        _check_refusal(result, case.needles)
        assert snapshot(job) == before, "the finished job's files changed"
    else:
        job = tmp_path / "fresh"
        run_dir = [] if any(o.startswith("hydra.run.dir=") for o in overrides) else [f"hydra.run.dir={job}"]
        result = run_cli(*BASE, f"data.glue_dir={glue}", *run_dir, *overrides, env=case.env)
        _check_refusal(result, case.needles)
        written = {p.name for p in job.iterdir()} if job.is_dir() else set()
        assert written <= {".hydra", "atlas_pl.log", ".lock", "failed.json"}, written


def test_a_truncated_done_marker_is_refused_and_kept(tmp_path: Path, glue: Path, finished_job: Path) -> None:
    job = shutil.copytree(finished_job, tmp_path / "job")
    _truncate(job / "done", 0.5)
    before = snapshot(job)
    result = run_cli(*BASE, f"data.glue_dir={glue}", "resume=true", f"hydra.run.dir={job}")
    _check_refusal(result, [f"{job / 'done'} is damaged", "not valid JSON", "resume=true"])
    assert snapshot(job) == before


def test_checkpoints_that_all_fail_verification_are_not_overwritten(
    tmp_path: Path, glue: Path, finished_job: Path
) -> None:
    """Without them resume=true would restart the job and replace its metrics: refused instead."""
    job = shutil.copytree(finished_job, tmp_path / "job")
    (job / "done").unlink()  # as if killed after its last checkpoint
    for tensors in job.glob("checkpoints/round_*/tensors.safetensors"):
        _truncate(tensors)
    before = snapshot(job)
    result = run_cli(*BASE, f"data.glue_dir={glue}", "resume=true", f"hydra.run.dir={job}")
    _check_refusal(result, ["can be resumed from", "move the directory away"])
    assert snapshot(job) == before


@pytest.mark.parametrize(
    "extra", [[], ["resume=true", "fed.lr=0.5"]], ids=["without_resume", "mismatched_resume"]
)
def test_job_dir_refusals_come_before_torch_is_imported(
    finished_job: Path, glue: Path, extra: list[str]
) -> None:
    """Importing torch alone takes seconds here: a refusal that needs none answers in about one."""
    before = snapshot(finished_job)
    cmd = [
        sys.executable,
        "-m",
        "atlas_pl",
        *BASE,
        f"data.glue_dir={glue}",
        f"hydra.run.dir={finished_job}",
        *extra,
    ]
    env = cli_env(PYTHONPROFILEIMPORTTIME="1")
    result = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    _check_refusal(
        result, ["already holds a job"] if not extra else ["different settings", "fed.lr: 0.01 -> 0.5"]
    )
    imported = {
        line.rsplit("|", 1)[-1].strip()
        for line in result.stderr.splitlines()
        if line.startswith("import time:")
    }
    assert "atlas_pl.jobdir" in imported and "torch" not in imported
    assert snapshot(finished_job) == before


def test_a_diverged_job_fails_and_its_metrics_are_strict_json(tmp_path: Path) -> None:
    job = tmp_path / "job"
    result = run_cli(
        "+experiment=smoke",
        "fed.rounds=2",
        "fed.lr=1e30",
        "fed.head_lr=1e30",
        "logger=none",
        f"hydra.run.dir={job}",
    )
    _check_refusal(result, ["round 1: training diverged", "lower fed.lr"])
    assert not (job / "done").exists() and (job / "failed.json").is_file()

    def refuse(token: str) -> None:
        raise AssertionError(f"non-standard JSON token {token} in metrics.jsonl")

    records = [
        json.loads(line, parse_constant=refuse) for line in (job / "metrics.jsonl").read_text().splitlines()
    ]
    assert len(records) == 1 and all(c["train_loss"] is None for c in records[0]["clients"].values())


@pytest.mark.parametrize("launcher", [[], ["hydra/launcher=joblib"]], ids=["basic", "joblib"])
def test_a_sweep_stopped_by_a_bad_data_file_says_so_in_its_line(
    tmp_path: Path, glue: Path, model_dir: Path, launcher: list[str]
) -> None:
    """Config checks pass (the file exists), the job finds the bad row at its start: the sweep ends with
    that job's line and exit 2, with either launcher (joblib's jobs run in their own processes)."""
    overrides = _broken_glue("sst2/train.tsv", _sst2("too high\t2"))(tmp_path, glue, model_dir)
    sweep = tmp_path / "sweep"
    result = run_cli(
        *BASE, *overrides, *launcher, f"hydra.sweep.dir={sweep}", "fed.lr=0.1,0.2", multirun=True
    )
    err = result.stderr
    assert result.returncode == 2, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert "train.tsv:3: label 2 out of range" in err.splitlines()[-1], err[-3000:]
    assert not any((job / "done").exists() for job in sweep.iterdir())
