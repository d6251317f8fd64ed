"""A job's console through the real CLI: our lines and the final table, no third-party noise; the noise
still reaches the job's log file (integration tier)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from atlas_pl.reporting.job_end import final_table

from .conftest import REPO_ROOT, cli_env

pytestmark = pytest.mark.integration


def _bert_with_a_pooler(path: Path) -> Path:
    """A small BERT saved with its pooler, as MiniLM's package is: atlas_pl loads it without the pooler, so
    transformers prints its LOAD REPORT (pooler.dense.* UNEXPECTED) exactly as it does for MiniLM."""
    import transformers

    config = transformers.BertConfig(
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=64,
        vocab_size=128,
        max_position_embeddings=64,
    )
    transformers.BertModel(config, add_pooling_layer=True).save_pretrained(path)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *(f"w{i}" for i in range(123))]
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return path


def test_job_console_shows_the_final_table_and_no_third_party_noise(tmp_path: Path) -> None:
    model = _bert_with_a_pooler(tmp_path / "bert_with_pooler")
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "atlas_pl",
            "+experiment=smoke",
            f"model.name={model}",
            "task.names=[synthetic0,synthetic1]",
            "fed.clients_per_task=2",
            "fed.rounds=1",
            "data.samples_per_client=16",
            "data.eval_samples=16",
            "fingerprint.batches=1",
            "logger=wandb",
            f"hydra.run.dir={run_dir}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,  # one stream, in the order the user sees it
        text=True,
        env=cli_env(),
        cwd=REPO_ROOT,
        timeout=600,
    )
    console = result.stdout
    assert result.returncode == 0, console[-4000:]
    summary = json.loads((run_dir / "summary.json").read_text())

    # the job ends on its table, after W&B's lines, with the numbers summary.json holds
    table = final_table(summary, run_dir)
    assert console.endswith(table + "\n"), console[-3000:]
    per_task = summary["final"]["per_task"]
    for task in ("synthetic0", "synthetic1"):
        line = next(row for row in table.splitlines() if row.startswith(task))
        assert line.split()[1:5] == [
            "accuracy",
            f"{per_task[task]['primary']:.4f}",
            f"{per_task[task]['worst_primary']:.4f}",
            f"{summary['traffic_by_task'][task] / 1e6:.2f}",
        ]
    totals = summary["totals"]
    assert sum(summary["traffic_by_task"].values()) == totals["upload_bytes"] + totals["download_bytes"]
    assert f"time    {totals['seconds']:.1f} s" in table
    [wandb_run] = (run_dir / "wandb").glob("offline-run-*")
    assert f"wandb sync {wandb_run}" in table and f"python -m atlas_pl.report {run_dir}" in table

    # nothing from transformers, W&B's settings or Python warnings on the console ...
    for noise in ("LOAD REPORT", "UNEXPECTED", "anonymous", "Loading weights", "Run history", "Warning"):
        assert noise not in console, noise
    assert "[atlas_pl.run][INFO] - final mean primary" in console  # our own lines stay
    # ... but transformers' report is in the job's log file, without colour codes
    log_file = (run_dir / "atlas_pl.log").read_text()
    assert "[transformers.modeling_utils][WARNING] - BertModel LOAD REPORT from:" in log_file
    assert "pooler.dense.weight | UNEXPECTED" in log_file and "\x1b[" not in log_file
