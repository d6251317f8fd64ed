from __future__ import annotations

import numpy as np
import pytest
import torch

from atlas_pl.data import DataError, HashTokenizer, build_federated_data, make_synthetic_split

TASKS = ["synthetic0", "synthetic1", "synthetic2"]


def _build(tmp_path, **overrides):
    kwargs = dict(
        tasks=TASKS,
        clients_per_task=3,
        tokenizer=None,
        model_key="tiny",
        max_len=32,
        samples_per_client=100,
        eval_samples=50,
        partition="iid",
        dirichlet_alpha=0.5,
        glue_dir=None,
        source="auto",
        cache_dir=tmp_path,
        seed=7,
        vocab_size=128,
        synthetic_train_size=600,
        synthetic_eval_size=200,
    )
    kwargs.update(overrides)
    return build_federated_data(**kwargs)


def _rows(ex):
    return {tuple(r) for r in ex.input_ids.tolist()}


def test_synthetic_federation(tmp_path):
    fed = _build(tmp_path)
    assert [c.client_id for c in fed.clients] == list(range(9))
    assert [c.task for c in fed.clients] == [t for t in TASKS for _ in range(3)]
    assert list(fed.specs) == TASKS and set(fed.eval) == set(TASKS)
    for task in TASKS:
        clients = [c for c in fed.clients if c.task == task]
        assert all(c.num_samples == len(c.train) == 100 for c in clients)
        idx = np.concatenate([c.indices for c in clients])
        assert len(np.unique(idx)) == 300  # disjoint within the task
        rows = [_rows(c.train) for c in clients]
        assert not (rows[0] & rows[1]) and not (rows[1] & rows[2]) and not (rows[0] & rows[2])
        full = make_synthetic_split(int(task[-1]), 600, vocab_size=128, seq_len=32, seed=7, split="train")
        assert torch.equal(clients[1].train.input_ids, full.input_ids[clients[1].indices])
        assert len(fed.eval[task]) == 50
        assert not (_rows(fed.eval[task]) & set().union(*rows))  # eval comes from the validation split
    # reproducible
    again = _build(tmp_path)
    assert all(torch.equal(a.train.input_ids, b.train.input_ids) for a, b in zip(fed.clients, again.clients))
    assert torch.equal(fed.eval["synthetic1"].input_ids, again.eval["synthetic1"].input_ids)


def test_uncapped_dirichlet_and_full_eval(tmp_path):
    fed = _build(
        tmp_path, samples_per_client=None, eval_samples=None, partition="dirichlet", dirichlet_alpha=0.3
    )
    for task in TASKS:
        clients = [c for c in fed.clients if c.task == task]
        assert sum(c.num_samples for c in clients) == 600
        assert len(fed.eval[task]) == 200


def test_bad_config_fails_early(tmp_path):
    with pytest.raises(DataError, match="unknown task name"):
        _build(tmp_path, tasks=["synthetic0", "sst3"])
    with pytest.raises(DataError, match="synthetic5 needs vocab_size"):
        _build(tmp_path, tasks=["synthetic5"])
    with pytest.raises(DataError, match="clients_per_task"):
        _build(tmp_path, clients_per_task=0)
    with pytest.raises(DataError, match="unknown partition scheme"):
        _build(tmp_path, partition="shards")


def test_real_sst2_with_hash_tokenizer(tmp_path, real_glue_dir):
    tok = HashTokenizer(256)
    fed = _build(
        tmp_path,
        tasks=["sst2"],
        clients_per_task=2,
        tokenizer=tok,
        samples_per_client=16,
        eval_samples=64,
        glue_dir=str(real_glue_dir),
        source="local",
        vocab_size=256,
    )
    assert [(c.client_id, c.task, c.num_samples) for c in fed.clients] == [(0, "sst2", 16), (1, "sst2", 16)]
    assert not set(fed.clients[0].indices) & set(fed.clients[1].indices)
    ex = fed.clients[0].train
    assert ex.input_ids.shape == (16, 32) and (ex.input_ids[:, 0] == 1).all()
    assert int(ex.input_ids.max()) < 256 and set(ex.labels.tolist()) <= {0, 1}
    assert len(fed.eval["sst2"]) == 64
    assert len(list(tmp_path.rglob("*.safetensors"))) == 2  # train + validation cached
