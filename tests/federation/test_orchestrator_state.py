"""What an aggregated update leaves a client with: factors ready to train on, their AdamW state cleared."""

from __future__ import annotations

import torch

from atlas_pl.lightning.modules import ServerModule
from atlas_pl.models.catalog import REGISTRY
from atlas_pl.models.loading import load_base
from atlas_pl.models.split import SharedBackbone, SplitClientModel
from atlas_pl.parties.aggregation import ready_to_train
from atlas_pl.parties.host import ServerHost
from atlas_pl.parties.messages import AdapterUpdate


def _model() -> SplitClientModel:
    backbone = SharedBackbone(REGISTRY["tiny_bert"], load_base(REGISTRY["tiny_bert"])[0])
    return SplitClientModel(backbone, 2, dict.fromkeys(range(backbone.num_layers), 4), 2)


def _stepped_host() -> tuple[SplitClientModel, ServerModule, ServerHost]:
    """A host of one server half whose AdamW has taken a step (every parameter has moments)."""
    model = _model()
    server = ServerModule(model.server, lr=1e-3)
    for p in model.server.parameters():
        p.grad = torch.ones_like(p)
    server.optimizer.step()
    host = ServerHost()
    host.host(0, server)
    return model, server, host


def test_rank_deficient_aggregate_redraws_dead_a_rows_and_clears_adamw_state() -> None:
    model, server, host = _stepped_host()
    key = model.server.adapter.keys[0]
    a, b = model.server.adapter.pair(key)
    gen = torch.Generator().manual_seed(0)
    new_a = torch.randn(a.shape, generator=gen, dtype=torch.float64)
    new_b = torch.randn(b.shape, generator=gen, dtype=torch.float64)
    new_a[-1], new_b[:, -1] = 0.0, 0.0  # the aggregate had rank 3 < 4: a zero component on both sides
    expected = (new_b @ new_a).float()
    ready = ready_to_train(new_a, new_b, (a.detach(), b.detach()), "0/1/0/key")
    assert ready[0].dtype == a.dtype and ready[1].dtype == b.dtype  # cast to what the client trains in
    host.apply(AdapterUpdate(client=0, factors={key: ready}))
    assert torch.count_nonzero(a[-1]) == a.shape[1]  # re-drawn: B's column gets gradient again
    assert torch.count_nonzero(b[:, -1]) == 0  # ... while dW is unchanged
    torch.testing.assert_close(b @ a, expected)
    assert a not in server.optimizer.state and b not in server.optimizer.state
    other = model.server.adapter.pair(model.server.adapter.keys[1])[0]
    assert other in server.optimizer.state  # untouched parameters keep their moments
    head = next(iter(model.server.head.parameters()))
    assert head in server.optimizer.state


def test_a_reset_update_forgets_every_moment() -> None:
    _, server, host = _stepped_host()
    host.apply(AdapterUpdate(client=0, reset_optimizer=True))
    assert not server.optimizer.state
