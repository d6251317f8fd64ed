"""engine=flower's pure parts: the wire format, Flower's share of an exchange, the refused settings."""

from __future__ import annotations

import pytest
import torch

from atlas_pl.parties.link import TrafficLedger
from atlas_pl.parties.messages import AdapterUpdate

flwr = pytest.importorskip("flwr")  # make test installs the extra (make install-flower)

from atlas_pl.engines.flower.codec import get_tensors, get_updates, put_tensors, put_updates  # noqa: E402
from atlas_pl.engines.flower.nodes import covered_seconds, data_shape  # noqa: E402


def test_bf16_and_fp16_tensors_cross_as_fp32_and_come_back_exactly() -> None:
    """ArrayRecord has no bfloat16; the receiver must get the same dtype and bits the sender had."""
    gen = torch.Generator().manual_seed(0)
    sent = {
        "a": torch.randn(3, 5, generator=gen).to(torch.bfloat16),
        "b": torch.randn(4, generator=gen).to(torch.float16),
        "c": torch.randn(2, 2, generator=gen, dtype=torch.float64),
        "step": torch.tensor(7.0),
        "gen": torch.Generator().manual_seed(3).get_state(),
    }
    content = flwr.app.RecordDict()
    put_tensors(content, "t", sent)
    got = get_tensors(content, "t")
    assert set(got) == set(sent)
    for name, tensor in sent.items():
        assert got[name].dtype == tensor.dtype, name
        assert torch.equal(got[name], tensor), name


def test_updates_cross_with_their_modules_heads_and_resets() -> None:
    a, b = torch.randn(2, 6), torch.randn(6, 2)
    updates = [
        AdapterUpdate(3, {(0, "attention.self.query"): (a, b)}, head=[torch.ones(2, 6), torch.zeros(2)]),
        AdapterUpdate(3, {(1, "output.dense"): (b.T.contiguous(), a.T.contiguous())}, reset_optimizer=True),
    ]
    content = flwr.app.RecordDict()
    put_updates(content, updates)
    got = get_updates(content)
    assert [u.client for u in got] == [3, 3]
    assert list(got[0].factors) == [(0, "attention.self.query")]
    assert torch.equal(got[0].factors[(0, "attention.self.query")][0], a)
    assert got[0].head is not None and torch.equal(got[0].head[0], torch.ones(2, 6))
    assert got[1].head is None and got[1].reset_optimizer and not got[0].reset_optimizer
    assert get_updates(flwr.app.RecordDict()) == []


def test_flowers_share_is_the_time_no_client_was_working() -> None:
    assert covered_seconds([], 0.0, 10.0) == 0.0
    # overlapping handlers count once; parts outside the exchange do not count
    assert covered_seconds([[1.0, 4.0], [2.0, 5.0], [8.0, 12.0]], 0.0, 10.0) == pytest.approx(6.0)
    assert covered_seconds([[-5.0, 20.0]], 0.0, 10.0) == pytest.approx(10.0)


def test_a_clients_ledger_adds_into_the_coordinators() -> None:
    server, client = TrafficLedger(), TrafficLedger()
    server.start_round(1)
    client.start_round(1)
    server.send("client/0", "coordinator", "fingerprint", [torch.zeros(4)])
    client.send("client/0", "server", "activations", [torch.zeros(8)])
    client.send("client/0", "server", "activations", [torch.zeros(8)])
    server.merge(client.to_json())
    assert server.by_kind(1, 0)["upload"] == {"fingerprint": 16, "activations": 64}


def test_a_node_with_other_personal_rows_reports_another_data_shape() -> None:
    """The server compares each node's report with its own copy of the data before round 1: a node
    that held out another personal set (another data.personal_share) must not look the same."""
    from atlas_pl.data.federated import ClientData

    def client(personal: list[int] | None) -> ClientData:
        return ClientData(3, "sst2", train=[0] * 8, num_samples=8, personal=personal)  # type: ignore[arg-type]

    assert data_shape(client([0, 0])) == {"client_id": 3, "task": "sst2", "train": 8, "personal": 2}
    assert data_shape(client(None))["personal"] == 0
    assert data_shape(client([0])) != data_shape(client([0, 0]))


def test_the_server_refuses_a_node_whose_personal_set_differs_from_its_own() -> None:
    """FlowerEngine._connect compares every node's data_shape with the server's copy of that client."""
    from types import SimpleNamespace

    from atlas_pl.data.federated import ClientData
    from atlas_pl.engines.flower.server import FlowerEngine
    from atlas_pl.errors import EngineError

    def client(personal: int) -> ClientData:
        return ClientData(0, "sst2", train=[0] * 8, num_samples=8, personal=[0] * personal)  # type: ignore[arg-type]

    def engine(node_personal: int) -> SimpleNamespace:
        answers = {0: data_shape(client(node_personal))}
        return SimpleNamespace(
            settings=SimpleNamespace(config={}),
            clients=SimpleNamespace(connect=lambda build: answers),
            parties=[SimpleNamespace(data=client(2), task="sst2")],
        )

    FlowerEngine._connect(engine(2))  # type: ignore[arg-type]  # the same rows: accepted
    with pytest.raises(EngineError, match="'personal': 1"):
        FlowerEngine._connect(engine(1))  # type: ignore[arg-type]
