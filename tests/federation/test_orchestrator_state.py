"""What the orchestrator leaves a client with after rewriting its factors: trainable, state cleared."""

from __future__ import annotations

import torch

from atlas_pl.federation.comm import CommMeter
from atlas_pl.federation.orchestrator import Orchestrator
from atlas_pl.models.catalog import REGISTRY
from atlas_pl.models.loading import load_base
from atlas_pl.models.split import SharedBackbone, SplitClientModel


def _model() -> SplitClientModel:
    backbone = SharedBackbone(REGISTRY["tiny_bert"], load_base(REGISTRY["tiny_bert"])[0])
    return SplitClientModel(backbone, 2, dict.fromkeys(range(backbone.num_layers), 4), 2)


def test_rank_deficient_aggregate_redraws_dead_a_rows_and_clears_adamw_state() -> None:
    model = _model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    optimizer.step()
    orchestrator = Orchestrator([model], [1], CommMeter(), aggregation="stack", groups=[[0]])
    orchestrator.optimizers = [[optimizer]]
    key = model.client.adapter.keys[0]
    a, b = model.client.adapter.pair(key)
    gen = torch.Generator().manual_seed(0)
    new_a = torch.randn(a.shape, generator=gen)
    new_b = torch.randn(b.shape, generator=gen)
    new_a[-1], new_b[:, -1] = 0.0, 0.0  # the aggregate had rank 3 < 4: a zero component on both sides
    expected = new_b @ new_a
    orchestrator._write(0, key, new_a, new_b)
    assert torch.count_nonzero(a[-1]) == a.shape[1]  # re-drawn: B's column gets gradient again
    assert torch.count_nonzero(b[:, -1]) == 0  # ... while dW is unchanged
    torch.testing.assert_close(b @ a, expected)
    assert a not in optimizer.state and b not in optimizer.state
    other = model.server.adapter.pair(model.server.adapter.keys[0])[0]
    assert other in optimizer.state  # untouched parameters keep their moments
