"""`trainer.batched_clients=true` trains a round's clients in one batched step: the same run as one by one."""

from __future__ import annotations

import math

import pytest
import torch

from atlas_pl.config_validation import ConfigError
from atlas_pl.run import run_job

from .conftest import _spy_on_engines
from .test_federation import _cfg, _records

ROUNDS = ("fed.rounds=2",)


def _run(tmp_path, capture_models, *overrides: str):
    run_job(_cfg(tmp_path, "ablation=atlas", *ROUNDS, *overrides))
    return _records(tmp_path), capture_models["fed"].models


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    """The atlas smoke job (clusters, heterogeneous ranks and splits, Laplacian) sequential and batched,
    run once for the module: the tests below only read the two runs."""
    tmp_path = tmp_path_factory.mktemp("batched")
    with pytest.MonkeyPatch.context() as patch:
        one_by_one = _run(tmp_path / "sequential", _spy_on_engines(patch))
    with pytest.MonkeyPatch.context() as patch:
        batched = _run(tmp_path / "batched", _spy_on_engines(patch), "trainer.batched_clients=true")
    return one_by_one, batched


def test_batched_clients_see_the_same_batches_and_reach_the_same_losses(both) -> None:
    (seq, _), (bat, _) = both
    assert len(seq) == len(bat) == 2
    for r_seq, r_bat in zip(seq, bat):
        assert r_seq["clients"].keys() == r_bat["clients"].keys()
        for k, c_seq in r_seq["clients"].items():
            c_bat = r_bat["clients"][k]
            # bytes depend on each batch's trimmed length: equal bytes = the same batches in the same order
            assert c_bat["upload_bytes"] == c_seq["upload_bytes"], (r_seq["round"], k)
            assert c_bat["download_bytes"] == c_seq["download_bytes"], (r_seq["round"], k)
            assert (c_bat["split"], c_bat["ranks"]) == (c_seq["split"], c_seq["ranks"])
            # fp32 sums in another order: equal to float rounding, not bitwise
            assert math.isclose(c_bat["train_loss"], c_seq["train_loss"], rel_tol=1e-4), (r_seq["round"], k)
            assert math.isclose(c_bat["loss"], c_seq["loss"], rel_tol=1e-3), (r_seq["round"], k)


def test_batched_clients_end_with_the_same_adapters(both) -> None:
    (_, seq_models), (_, bat_models) = both
    moved, worst = 0, 0.0
    for m_seq, m_bat in zip(seq_models, bat_models):
        for key, d_seq in m_seq.deltas().items():
            d_bat = m_bat.deltas()[key]
            if not torch.count_nonzero(d_seq):
                assert not torch.count_nonzero(d_bat), key
                continue
            # AdamW divides by sqrt(v): a gradient entry near zero can move by a step's size on float
            # rounding alone, so the whole update is compared, not each entry
            error = float(torch.linalg.vector_norm(d_bat - d_seq) / torch.linalg.vector_norm(d_seq))
            worst = max(worst, error)
            moved += int(torch.count_nonzero(d_seq) > 0)
    assert worst < 1e-3, worst
    assert moved  # the adapters trained: the comparison is not between two untouched inits


def test_batched_clients_refuse_a_mixed_precision(tmp_path) -> None:
    with pytest.raises(ConfigError) as info:
        _cfg(tmp_path, "trainer.batched_clients=true", "trainer.precision=bf16-mixed")
    assert "trainer.batched_clients" in str(info.value)


@pytest.mark.integration  # two more jobs of two epochs each: 12 s, too much for the fast tier
def test_batched_clients_follow_each_loader_over_several_local_epochs(tmp_path, capture_models) -> None:
    """Two local epochs a round (the lock step restarts every loader at each epoch) on a Dirichlet split."""
    extra = ("fed.local_epochs=2", "data.partition=dirichlet")
    seq, _ = _run(tmp_path / "sequential", capture_models, *extra)
    bat, _ = _run(tmp_path / "batched", capture_models, "trainer.batched_clients=true", *extra)
    for r_seq, r_bat in zip(seq, bat, strict=True):
        for k, c_seq in r_seq["clients"].items():
            c_bat = r_bat["clients"][k]
            assert c_bat["upload_bytes"] == c_seq["upload_bytes"], (r_seq["round"], k)
            assert math.isclose(c_bat["train_loss"], c_seq["train_loss"], rel_tol=1e-4), (r_seq["round"], k)


def test_batched_clients_refuse_lora_dropout(tmp_path) -> None:
    with pytest.raises(ConfigError) as info:
        _cfg(tmp_path, "trainer.batched_clients=true", "lora.dropout=0.1")
    assert "lora.dropout" in str(info.value)
