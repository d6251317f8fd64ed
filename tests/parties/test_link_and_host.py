"""The split link counts every byte by (round, source, destination, kind); a hosted half can move whole."""

from __future__ import annotations

import torch

from atlas_pl.lightning.modules import ServerModule
from atlas_pl.models.catalog import REGISTRY
from atlas_pl.models.loading import load_base
from atlas_pl.models.split import SharedBackbone, SplitClientModel
from atlas_pl.parties.host import ServerHost
from atlas_pl.parties.link import COORDINATOR, SERVER, LocalLink, TrafficLedger, client_name
from atlas_pl.parties.messages import Activations


def _model(seed: int = 0) -> SplitClientModel:
    spec = REGISTRY["tiny_bert"]
    backbone = SharedBackbone(spec, load_base(spec, attn_implementation="eager")[0])
    return SplitClientModel(backbone, 2, dict.fromkeys(range(backbone.num_layers), 4), 2, seed=seed)


def _message(model: SplitClientModel, client: int, seed: int = 0) -> Activations:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 100, (4, 12), generator=gen)
    mask = torch.ones_like(ids)
    hidden = model.client(ids, mask)
    return Activations(client, hidden.detach(), mask, torch.tensor([0, 1, 1, 0]))


def test_the_ledger_keeps_routes_apart_and_derives_per_client_totals() -> None:
    ledger = TrafficLedger()
    ledger.start_round(1)
    ledger.send(client_name(0), SERVER, "activations", [torch.zeros(10)])  # 40 bytes
    ledger.send(SERVER, client_name(0), "activation_grads", [torch.zeros(5, dtype=torch.bfloat16)])  # 10
    ledger.send(client_name(1), COORDINATOR, "fingerprint", [torch.zeros(3, dtype=torch.float64)])  # 24
    ledger.start_round(2)
    ledger.send(client_name(0), COORDINATOR, "adapter", [torch.zeros(2)])  # 8
    assert ledger.upload_bytes(1, 0) == 40 and ledger.download_bytes(1, 0) == 10
    assert ledger.upload_bytes(1, 1) == 24 and ledger.upload_bytes(2, 0) == 8
    assert ledger.by_kind(1, 0) == {"upload": {"activations": 40}, "download": {"activation_grads": 10}}
    assert ledger.totals() == {
        "upload_bytes": 72,
        "download_bytes": 10,
        "relay_bytes": 0,
        "server_adapter_bytes": 0,
        "moved_bytes": 0,
    }
    rows = ledger.to_json()
    assert [1, "client/0", "server", "activations", 40] in rows
    copy = TrafficLedger()
    copy.load_json(rows)
    assert copy.to_json() == rows


def test_a_local_link_counts_exactly_what_one_step_sends_and_returns() -> None:
    model = _model()
    host = ServerHost()
    host.host(3, ServerModule(model.server, lr=1e-2))
    ledger = TrafficLedger()
    ledger.start_round(1)
    link = LocalLink(3, host, ledger)
    message = _message(model, 3)
    reply = link.exchange(message)
    sent = sum(t.numel() * t.element_size() for t in message.tensors())
    assert ledger.by_kind(1, 3) == {
        "upload": {"activations": sent},
        "download": {"activation_grads": reply.grad.numel() * reply.grad.element_size()},
    }
    assert reply.grad.shape == message.hidden.shape
    logits = link.infer(message.hidden, message.attention_mask)  # evaluation: not protocol traffic
    assert logits.shape == (4, 2) and ledger.upload_bytes(1, 3) == sent


def test_a_moved_half_continues_exactly_where_it_was() -> None:
    """Export a half after two steps (parameters, AdamW moments), import it on another host: the next step
    there is bitwise the step the first host would have taken."""
    model, twin = _model(), _model()
    first = ServerHost()
    first.host(0, ServerModule(model.server, lr=1e-2))
    for seed in (1, 2):
        first.process(_message(model, 0, seed))
    moved = first.export_half(0)
    assert moved.nbytes() > sum(p.numel() * 4 for p in model.server.parameters())  # moments travel too
    second = ServerHost("peer/1")
    second.import_half(moved, ServerModule(twin.server, lr=1e-2))
    message = _message(model, 0, 3)
    expected = first.process(message)
    got = second.process(message)
    assert torch.equal(expected.loss, got.loss) and torch.equal(expected.grad, got.grad)
    for p, q in zip(model.server.parameters(), twin.server.parameters()):
        assert torch.equal(p, q)
