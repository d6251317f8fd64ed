"""Decoders pool the last real token whichever side the padding is on: atlas_pl pads on the right, many
Hugging Face decoder pipelines on the left. With rotary positions (Llama) a sequence's logits do not depend
on how many pads precede it, so both paddings must give the same logits."""

from __future__ import annotations

import torch

from atlas_pl.models.catalog import REGISTRY
from atlas_pl.models.loading import load_base
from atlas_pl.models.split import SharedBackbone, SplitClientModel, _masked_pool


def test_last_pooling_takes_the_last_real_token_left_or_right_padded() -> None:
    hidden = torch.arange(2 * 5, dtype=torch.float32).view(2, 5, 1)
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1, 1], [0, 0, 0, 0, 0]])  # the second row has no real token
    assert _masked_pool(hidden, right, "last").flatten().tolist() == [2.0, 9.0]
    assert _masked_pool(hidden, left, "last").flatten().tolist() == [4.0, 5.0]


def test_tiny_llama_gives_the_same_logits_left_and_right_padded() -> None:
    spec = REGISTRY["tiny_llama"]
    base, _ = load_base(spec, attn_implementation="eager")
    model = SplitClientModel(SharedBackbone(spec, base), 2, dict.fromkeys(range(4), 4), 3, seed=1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # LoRA B starts at zero: make the adapter count
    lengths, width = [7, 3, 5], 9
    gen = torch.Generator().manual_seed(0)
    rows = [torch.randint(5, 256, (n,), generator=gen) for n in lengths]
    right_ids = torch.zeros(len(rows), width, dtype=torch.long)
    left_ids = torch.zeros_like(right_ids)
    right_mask, left_mask = torch.zeros_like(right_ids), torch.zeros_like(right_ids)
    for i, row in enumerate(rows):
        right_ids[i, : len(row)], right_mask[i, : len(row)] = row, 1
        left_ids[i, width - len(row) :], left_mask[i, width - len(row) :] = row, 1
    with torch.no_grad():
        right = model(right_ids, right_mask)
        left = model(left_ids, left_mask)
    torch.testing.assert_close(left, right, rtol=1e-5, atol=1e-5)
