"""The fast paths of issue 16 compute what the plain paths computed: same samples, same metrics, same
fingerprints; the `auto` settings resolve as documented."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from atlas_pl import hardware
from atlas_pl.data import TokenDataset, collate_trim
from atlas_pl.data.synthetic import make_synthetic_split
from atlas_pl.models.catalog import REGISTRY
from atlas_pl.models.loading import load_base
from atlas_pl.models.split import SharedBackbone, SplitClientModel
from atlas_pl.parties.client import fingerprint_batches
from atlas_pl.parties.evaluation import evaluate, length_sorted_batches, model_digest
from atlas_pl.phases.fingerprint import client_gradients


@pytest.fixture(scope="module")
def backbone() -> SharedBackbone:
    base, _ = load_base(REGISTRY["tiny_bert"], attn_implementation="eager", seed=0)
    return SharedBackbone(REGISTRY["tiny_bert"], base)


def _data(n: int = 70, seed: int = 0):
    data = make_synthetic_split(1, n, vocab_size=256, seq_len=32, seed=seed, split="train")
    # vary the lengths so sorting matters: cut sample i to 4 + i % 28 real tokens
    mask = data.attention_mask.clone()
    for i in range(n):
        mask[i, 4 + i % 28 :] = 0
    data.attention_mask.copy_(mask)
    data.input_ids.mul_(mask)
    return data


def _model(backbone: SharedBackbone, split: int = 2) -> SplitClientModel:
    model = SplitClientModel(backbone, split, {b: 2 + b for b in range(backbone.num_layers)}, 2, seed=3)
    with torch.no_grad():  # B starts at zero: make the adapters act
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.05)
    return model.eval()


def _generator_loader(data, *, batch_size: int, seed: int) -> torch.utils.data.DataLoader:
    """The shuffle Phase 1 drew its minibatches from before they were regrouped: a seeded generator's."""
    return torch.utils.data.DataLoader(
        TokenDataset(data),
        batch_size=batch_size,
        shuffle=True,
        collate_fn=collate_trim,
        generator=torch.Generator().manual_seed(seed),
    )


def test_fingerprint_batches_hold_the_shuffled_samples_sorted_by_length() -> None:
    data = _data()
    loader = _generator_loader(data, batch_size=16, seed=5)  # what the old code drew: 5 batches, cycling
    plain = list(loader) + [next(iter(loader))]
    sorted_ = fingerprint_batches(data, batches=len(plain), batch_size=16, seed=5)
    assert [len(b["labels"]) for b in sorted_] == [len(b["labels"]) for b in plain]

    def rows(batches):
        return sorted(
            tuple(ids[: int(m.sum())].tolist()) + (int(y),)
            for b in batches
            for ids, m, y in zip(b["input_ids"], b["attention_mask"], b["labels"])
        )

    assert rows(sorted_) == rows(plain)  # the same multiset of samples
    lengths = [int(b["attention_mask"].sum(1).max()) for b in sorted_]
    assert lengths == sorted(lengths)
    assert sum(b["input_ids"].numel() for b in sorted_) < sum(b["input_ids"].numel() for b in plain)


def test_regrouped_batches_give_the_same_class_balanced_fingerprint(backbone) -> None:
    data = _data()
    plain = [b for _, b in zip(range(4), _generator_loader(data, batch_size=16, seed=2))]
    regrouped = fingerprint_batches(data, batches=4, batch_size=16, seed=2)
    model = _model(backbone)
    a = client_gradients(model, plain, last_layers=2, include_head=True, class_balanced=True)
    b = client_gradients(model, regrouped, last_layers=2, include_head=True, class_balanced=True)
    for x, y in zip(a.parts, b.parts):
        assert float(x.norm()) > 0
        torch.testing.assert_close(x, y, atol=1e-6, rtol=1e-5)


def test_length_sorted_evaluation_covers_every_example_once_within_the_token_budget() -> None:
    data = _data(n=50)
    seen = []
    for index, batch in length_sorted_batches(data, max_tokens=64, max_batch=7):
        assert batch["input_ids"].numel() <= max(64, batch["input_ids"].shape[1])
        assert len(index) <= 7
        assert int(batch["attention_mask"][:, -1].sum()) > 0  # trimmed to its longest member
        seen += index.tolist()
    assert sorted(seen) == list(range(50))


def test_length_sorted_evaluation_equals_file_order_evaluation(backbone) -> None:
    data = _data(n=60)
    model = _model(backbone)

    def forward(batch):
        return model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])

    fast = evaluate(forward, "sst2", data, batch_size=1024, device=torch.device("cpu"))
    preds, losses = [], []
    with torch.no_grad():
        loader = torch.utils.data.DataLoader(TokenDataset(data), batch_size=8, collate_fn=collate_trim)
        for batch in loader:
            logits = forward(batch)
            preds.append(logits.argmax(-1))
            losses.append(torch.nn.functional.cross_entropy(logits, batch["labels"], reduction="sum"))
    accuracy = float((torch.cat(preds) == data.labels).float().mean())
    assert fast["accuracy"] == pytest.approx(accuracy)
    assert fast["loss"] == pytest.approx(float(sum(losses)) / len(data), rel=1e-5)


def test_model_digest_ignores_the_split_and_sees_every_factor(backbone) -> None:
    one, other = _model(backbone, split=1), _model(backbone, split=3)
    assert model_digest(one) == model_digest(other)  # same factors per block: same function
    data = _data(n=20)
    logits = [m(data.input_ids, data.attention_mask, data.token_type_ids) for m in (one, other)]
    torch.testing.assert_close(logits[0], logits[1])
    for changed in (other.client.adapter.pair(other.client.adapter.keys[0])[1], other.server.head.net.bias):
        with torch.no_grad():
            changed.add_(1e-3)
        assert model_digest(other) != model_digest(one)
        with torch.no_grad():
            changed.sub_(1e-3)


def test_auto_dtype_and_attention_resolve_as_documented(monkeypatch) -> None:
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx2", "amx_bf16"}))
    assert hardware.resolve_dtype("auto", "cpu") == "bfloat16"
    assert hardware.resolve_dtype("auto", "gpu") == "float32"
    assert hardware.resolve_dtype("float32", "cpu") == "float32"
    assert hardware.resolve_attention("auto", "bfloat16", "cpu") == "eager"
    assert hardware.resolve_attention("auto", "float32", "cpu") == "sdpa"
    assert hardware.resolve_attention("auto", "bfloat16", "gpu") == "sdpa"
    assert hardware.resolve_attention("sdpa", "bfloat16", "cpu") == "sdpa"
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx2"}))
    assert hardware.resolve_dtype("auto", "cpu") == "float32"


def test_bf16_base_keeps_fp32_factors_and_their_gradients(backbone) -> None:
    base, _ = load_base(REGISTRY["tiny_bert"], attn_implementation="eager", seed=0, dtype=torch.bfloat16)
    bf16 = SharedBackbone(REGISTRY["tiny_bert"], base)
    model = _model(bf16).train()
    data = _data(n=16)
    logits = model(data.input_ids, data.attention_mask, data.token_type_ids)
    torch.nn.functional.cross_entropy(logits.float(), data.labels).backward()
    for p in model.parameters():
        assert p.dtype == torch.float32 and p.grad is not None and p.grad.dtype == torch.float32
    assert np.isfinite(sum(float(p.grad.abs().sum()) for p in model.parameters()))
