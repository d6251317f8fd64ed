from __future__ import annotations

import pytest
import torch

from atlas_pl.data import DataError, TokenDataset, TokenizedExamples, collate_trim


def _examples():
    ids = torch.tensor([[1, 5, 6, 2, 0, 0, 0, 0], [1, 7, 2, 0, 0, 0, 0, 0], [1, 5, 5, 5, 5, 2, 0, 0]])
    mask = (ids != 0).long()
    types = torch.tensor([[0, 0, 0, 0, 0, 0, 0, 0], [0, 0, 1, 0, 0, 0, 0, 0], [0, 0, 0, 1, 1, 1, 0, 0]])
    return TokenizedExamples(ids, mask, types, torch.tensor([0, 1, 1]))


def test_subset_and_dataset():
    ex = _examples()
    sub = ex.subset([2, 0])
    assert len(sub) == 2 and sub.labels.tolist() == [1, 0]
    assert torch.equal(sub.input_ids[0], ex.input_ids[2])
    sub.input_ids[0, 1] = 99  # a copy: the parent split is untouched
    assert ex.input_ids[2, 1] == 5
    item = TokenDataset(ex)[1]
    assert set(item) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
    assert item["labels"].item() == 1


def test_collate_trims_to_longest_real_sequence():
    ds = TokenDataset(_examples())
    batch = collate_trim([ds[0], ds[1]])
    assert batch["input_ids"].shape == (2, 4) and batch["attention_mask"].shape == (2, 4)
    assert batch["token_type_ids"].shape == (2, 4) and batch["labels"].shape == (2,)
    assert batch["input_ids"].tolist() == [[1, 5, 6, 2], [1, 7, 2, 0]]
    full = collate_trim([ds[1], ds[2]])
    assert full["input_ids"].shape == (2, 6) and full["attention_mask"].sum().item() == 3 + 6
    loader = torch.utils.data.DataLoader(ds, batch_size=3, collate_fn=collate_trim)
    (only,) = list(loader)
    assert only["input_ids"].shape == (3, 6)


def test_validation_of_shapes_and_dtypes():
    ex = _examples()
    with pytest.raises(DataError, match="labels"):
        TokenizedExamples(ex.input_ids, ex.attention_mask, ex.token_type_ids, torch.tensor([0, 1]))
    with pytest.raises(DataError, match="int64"):
        TokenizedExamples(ex.input_ids.int(), ex.attention_mask, ex.token_type_ids, ex.labels)
