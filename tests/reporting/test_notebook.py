"""The analysis notebook: stored without outputs, and it runs end to end on a smoke multirun."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from ..conftest import REPO_ROOT

NOTEBOOK = REPO_ROOT / "notebooks" / "analysis.ipynb"


def test_notebook_is_stored_without_outputs() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code
    assert all(c.outputs == [] and c.execution_count is None for c in code)
    assert 'os.environ.get("ATLAS_RUN_DIR"' in code[0].source


@pytest.mark.integration
def test_notebook_runs_on_a_multirun(smoke_multirun: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATLAS_RUN_DIR", str(smoke_multirun))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}
    ).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 7  # every figure: the eta sweep (2 etas) and simulated time (profiles) included
    tables = [o for o in outputs if "text/html" in o.get("data", {})]
    assert any("atlas (eta=0.5)" in o["data"]["text/html"] for o in tables)


@pytest.mark.integration
@pytest.mark.parametrize("case", ["partial_only", "no_jobs"])
def test_notebook_runs_without_a_completed_job(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = tmp_path / "multirun"
    job = run_dir / "0_seed=0"
    (job / ".hydra").mkdir(parents=True)
    if case == "partial_only":  # started, killed before its first round completed
        (job / ".hydra" / "config.yaml").write_text("seed: 0\nablation:\n  name: fedavg\nfed:\n  rounds: 3\n")
    monkeypatch.setenv("ATLAS_RUN_DIR", str(run_dir if case == "partial_only" else tmp_path / "absent"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}
    ).execute()
    code = [c for c in nb.cells if c.cell_type == "code"]
    outputs = [o for c in code for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert not [o for o in outputs if "image/png" in o.get("data", {})]
    printed = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "no statistics to show" in printed and "no figures to draw" in printed
    if case == "partial_only":
        assert "No completed job yet" in printed
        assert any("partial" in o.get("data", {}).get("text/html", "") for o in outputs)
    else:
        assert "Nothing to analyse" in printed and "No job found" in printed


@pytest.mark.integration
@pytest.mark.parametrize("eval_set", ["global", "personal"])
def test_notebook_shows_the_evaluation_set_it_is_asked_for(
    eval_set: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ATLAS_EVAL_SET=personal: every table and figure on the clients' personal test sets."""
    from atlas_pl.reporting import aggregate, load_jobs, tables

    from .test_eval_sets import _tree

    root = _tree(tmp_path / "runs")
    monkeypatch.setenv("ATLAS_RUN_DIR", str(root))
    monkeypatch.setenv("ATLAS_EVAL_SET", eval_set)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    final = 'print("FINAL", [r["final_mean_primary_mean"] for r in tables.csv_rows(groups)])'
    nb.cells.append(nbformat.v4.new_code_cell(final))
    NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}
    ).execute()
    printed = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)

    def finals(view: str) -> list[float]:
        rows = tables.csv_rows(aggregate(load_jobs(root, eval_set=view)))
        return [r["final_mean_primary_mean"] for r in rows]

    assert f"FINAL {finals(eval_set)}" in printed
    assert finals(eval_set) != finals("global" if eval_set == "personal" else "personal")
