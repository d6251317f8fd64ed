from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from atlas_pl.data import DataError, make_synthetic_split
from atlas_pl.data.synthetic import max_synthetic_tasks, task_region

VOCAB, SEQ = 128, 32
N_TASKS = 5


def _split(task, n, seed=0, split="train", vocab=VOCAB, seq=SEQ):
    return make_synthetic_split(task, n, vocab_size=vocab, seq_len=seq, seed=seed, split=split)


def _bag(ex, vocab=VOCAB) -> np.ndarray:
    ids = ex.input_ids.numpy()
    return np.stack([np.bincount(row, minlength=vocab) for row in ids])[:, 4:].astype(np.float64)


def test_deterministic_and_seed_split_dependent():
    a, b = _split(0, 200), _split(0, 200)
    for key in ("input_ids", "attention_mask", "token_type_ids", "labels"):
        assert torch.equal(getattr(a, key), getattr(b, key))
    assert not torch.equal(a.input_ids, _split(0, 200, seed=1).input_ids)
    assert not torch.equal(a.input_ids, _split(0, 200, split="validation").input_ids)
    # the task's rule does not depend on the seed: other seeds are new samples of the same task
    assert not torch.equal(a.input_ids, _split(1, 200).input_ids)


def test_layout_cls_sep_padding_and_region():
    for task in range(N_TASKS):
        ex = _split(task, 300)
        ids, mask = ex.input_ids, ex.attention_mask
        assert ids.shape == (300, SEQ) and ids.dtype == torch.long
        assert (ids[:, 0] == 1).all()
        lengths = mask.sum(1)
        assert lengths.min() < SEQ and lengths.unique().numel() > 5  # variable lengths, real padding
        assert torch.equal(mask, (ids != 0).long())
        assert (ids[torch.arange(300), lengths - 1] == 2).all()  # [SEP] ends every sequence
        assert (ex.token_type_ids == 0).all()
        content = ids[:, 1:][mask[:, 1:].bool() & (ids[:, 1:] != 2)]
        start, stop = task_region(task)
        assert ((content >= start) & (content < stop)).all()


def test_labels_balanced():
    for task in range(N_TASKS):
        for n in (101, 400):
            rate = _split(task, n).labels.float().mean().item()
            assert 0.35 <= rate <= 0.65


def test_tasks_are_distinguishable_from_token_counts():
    train = [_split(t, 200) for t in range(N_TASKS)]
    test = [_split(t, 100, split="validation") for t in range(N_TASKS)]
    x_tr = np.concatenate([_bag(e) for e in train])
    y_tr = np.repeat(np.arange(N_TASKS), 200)
    x_te = np.concatenate([_bag(e) for e in test])
    y_te = np.repeat(np.arange(N_TASKS), 100)
    clf = LogisticRegression(max_iter=2000).fit(x_tr, y_tr)
    assert clf.score(x_te, y_te) > 0.95


def test_each_task_is_learnable_and_rules_differ():
    models = {}
    for task in range(N_TASKS):
        train, test = _split(task, 1000), _split(task, 400, split="validation")
        clf = LogisticRegression(max_iter=3000).fit(_bag(train), train.labels.numpy())
        acc = clf.score(_bag(test), test.labels.numpy())
        assert acc > 0.85, (task, acc)
        models[task] = clf
    # a labelling rule learnt on one task is useless on another (chance level)
    other = _split(1, 400, split="validation")
    assert models[0].score(_bag(other), other.labels.numpy()) < 0.7


def test_vocab_and_argument_errors():
    assert max_synthetic_tasks(128) >= 5
    _split(4, 10, vocab=128)
    with pytest.raises(DataError, match=r"synthetic5 needs vocab_size >= \d+.*synthetic0\.\.synthetic4"):
        _split(5, 10, vocab=128)
    with pytest.raises(DataError, match="unknown split"):
        _split(0, 10, split="test")
    with pytest.raises(DataError, match="seq_len"):
        _split(0, 10, seq=4)
