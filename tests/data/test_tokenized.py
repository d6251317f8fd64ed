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


def _order_data(n: int = 10) -> TokenizedExamples:
    ids = torch.arange(1, n + 1).unsqueeze(1).repeat(1, 4)
    return TokenizedExamples(
        ids, torch.ones_like(ids), torch.zeros_like(ids), torch.zeros(n, dtype=torch.long)
    )


def _epoch(loader) -> list[int]:
    return [int(i) for b in loader for i in b["input_ids"][:, 0]]


def test_training_order_depends_on_seed_and_epoch_only() -> None:
    from atlas_pl.data import shuffled_loader

    a, b = (
        shuffled_loader(_order_data(), batch_size=3, seed=4),
        shuffled_loader(_order_data(), batch_size=3, seed=4),
    )
    first = _epoch(a)
    assert sorted(first) == list(range(1, 11))
    iter(b)  # an iterator created and dropped unused (Lightning does this when a fit resumes)
    assert _epoch(b) == first
    a.sampler.set_epoch(1)
    second = _epoch(a)
    assert second != first and sorted(second) == sorted(first)
    assert _epoch(a) != second  # a second pass in the same epoch (a cycled loader) gets a fresh order
    b.sampler.set_epoch(1)
    assert _epoch(b) == second  # epoch 1 of another loader: whatever b did before
    assert _epoch(shuffled_loader(_order_data(), batch_size=3, seed=5)) != first


def test_lightning_fits_each_epoch_in_the_order_set_epoch_names() -> None:
    import lightning.pytorch as pl

    from atlas_pl.data import shuffled_loader

    class Recorder(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(1, 1)
            self.automatic_optimization = False
            self.seen: list[int] = []

        def training_step(self, batch, batch_idx):
            self.seen += [int(i) for i in batch["input_ids"][:, 0]]

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    loader = shuffled_loader(_order_data(), batch_size=3, seed=4)
    module = Recorder()
    trainer = pl.Trainer(
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(module, loader)
    trainer.fit_loop.max_epochs = 2
    trainer.fit(module, loader)  # a second fit: Lightning's round loop, which used to shift the order
    expected = []
    for epoch in range(2):
        loader.sampler.set_epoch(epoch)
        expected += _epoch(loader)
    assert module.seen == expected
