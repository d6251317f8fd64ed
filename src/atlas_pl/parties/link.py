"""The split link, a client's only way to its server half, and the ledger of every byte sent.

The ledger counts exactly the tensors a message carries (dtype-aware, no compression assumed), per
(round, source, destination, kind); a client's upload is what it sends, its download what it receives,
which is what metrics.jsonl reports per client. Parties are named `client/<id>`, `server` (the host of
server halves in topology=server) and `coordinator`. In topology=server the coordinator and the server
are one machine (SFL-V1), so the server-half adapters it aggregates travel no link and are not counted.

Evaluation on the task's validation set is the experimenter's measurement, not part of the protocol:
`infer` moves activations without counting them, as the per-client totals always meant training traffic.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import replace
from typing import Protocol

import torch
from torch import Tensor

from atlas_pl.parties.messages import ActivationGrads, Activations
from atlas_pl.privacy.noise import add_activation_noise

SERVER = "server"
COORDINATOR = "coordinator"


def client_name(client: int) -> str:
    return f"client/{client}"


def nbytes(tensors: Iterable[Tensor]) -> int:
    """Bytes on the wire for these tensors at their own dtype (no compression assumed)."""
    return sum(t.numel() * t.element_size() for t in tensors)


Route = tuple[int, str, str, str]  # (round, source, destination, kind)


class TrafficLedger:
    """Every message's size, keyed by (round, source, destination, kind)."""

    def __init__(self) -> None:
        self.round = 0
        self._bytes: dict[Route, int] = defaultdict(int)

    def start_round(self, round_index: int) -> None:
        self.round = round_index

    def send(self, source: str, destination: str, kind: str, tensors: Iterable[Tensor]) -> int:
        size = nbytes(tensors)
        self._bytes[(self.round, source, destination, kind)] += size
        return size

    def upload_bytes(self, round_index: int, client: int) -> int:
        """What client `client` sent in round `round_index`, to anyone."""
        name = client_name(client)
        return sum(v for (r, src, _, _), v in self._bytes.items() if r == round_index and src == name)

    def download_bytes(self, round_index: int, client: int) -> int:
        """What client `client` received in round `round_index`, from anyone."""
        name = client_name(client)
        return sum(v for (r, _, dst, _), v in self._bytes.items() if r == round_index and dst == name)

    def by_kind(self, round_index: int, client: int) -> dict[str, dict[str, int]]:
        """A client's bytes in one round, split by direction and kind."""
        name = client_name(client)
        out: dict[str, dict[str, int]] = {"upload": defaultdict(int), "download": defaultdict(int)}
        for (r, src, dst, kind), v in self._bytes.items():
            if r == round_index and src == name:
                out["upload"][kind] += v
            if r == round_index and dst == name:
                out["download"][kind] += v
        return {direction: dict(kinds) for direction, kinds in out.items()}

    def totals(self) -> dict[str, int]:
        """Job totals: what clients sent and received (the per-client figures summed); under
        topology=p2p also what peers relayed between the hops of routes, the server-half adapters
        hosts exchanged with the coordinator at aggregation, and the server halves moved between hosts
        by re-pairing (all 0 under topology=server). Every ledger entry is in exactly one of them."""
        out = dict.fromkeys(
            ("upload_bytes", "download_bytes", "relay_bytes", "server_adapter_bytes", "moved_bytes"), 0
        )
        for (_, src, dst, kind), v in self._bytes.items():
            if src.startswith("client/"):
                out["upload_bytes"] += v
            if dst.startswith("client/"):
                out["download_bytes"] += v
            if kind == "server_adapter":
                out["server_adapter_bytes"] += v
            elif kind == "server_half":
                out["moved_bytes"] += v
            elif src.startswith("peer/") and dst.startswith("peer/"):
                out["relay_bytes"] += v
        return out

    def by_device(self) -> dict[str, dict[str, int]]:
        """Bytes each device sent and received over the job, its client and host roles together
        (`client/<k>` and `peer/<k>` are device k); the server and the coordinator under their names."""
        out: dict[str, dict[str, int]] = defaultdict(lambda: {"sent": 0, "received": 0})
        for (_, src, dst, _), v in self._bytes.items():
            out[_device(src)]["sent"] += v
            out[_device(dst)]["received"] += v
        return dict(sorted(out.items()))

    def to_json(self) -> list[list]:
        """Every entry as [round, source, destination, kind, bytes] (what a checkpoint stores)."""
        return [[r, src, dst, kind, size] for (r, src, dst, kind), size in self._bytes.items()]

    def load_json(self, rows: list[list]) -> None:
        self._bytes.clear()
        self.merge(rows)

    def merge(self, rows: list[list]) -> None:
        """Add another ledger's entries (`to_json` rows): what a client counted where it ran (Flower)."""
        for r, src, dst, kind, size in rows:
            self._bytes[(int(r), str(src), str(dst), str(kind))] += int(size)


def _device(party: str) -> str:
    kind, _, index = party.partition("/")
    return f"device/{index}" if kind in ("client", "peer") else party


def count_exchange(
    ledger: TrafficLedger, client: int, host_name: str, sent: Iterable[Tensor], returned: Iterable[Tensor]
) -> None:
    """One training exchange of the split protocol: the client's activations up, dL/dh back."""
    me = client_name(client)
    ledger.send(me, host_name, "activations", sent)
    ledger.send(host_name, me, "activation_grads", returned)


def count_route(
    ledger: TrafficLedger, client: int, hops: list[str], sent: Iterable[Tensor], returned: Iterable[Tensor]
) -> None:
    """One exchange over a route of hosts (topology=p2p): the activations, mask and labels go from hop
    to hop and dL/dh comes back the same way; every boundary tensor has the shape and dtype of the
    client's own (the hidden size does not change between blocks), so each hop carries the same bytes."""
    sent, returned = list(sent), list(returned)
    count_exchange(ledger, client, hops[0], sent, returned)
    for near, far in zip(hops, hops[1:]):
        ledger.send(near, far, "activations", sent)
        ledger.send(far, near, "activation_grads", returned)


class HostsServerHalves(Protocol):
    """What a link needs of the party that runs a client's server half."""

    def process(self, message: Activations) -> ActivationGrads: ...

    def infer(self, client: int, hidden: Tensor, attention_mask: Tensor) -> Tensor: ...


class SplitLink(Protocol):
    """How a client reaches its server half: one training exchange, or a forward for evaluation."""

    noise: float

    def exchange(self, message: Activations) -> ActivationGrads: ...

    def infer(
        self, hidden: Tensor, attention_mask: Tensor, generator: torch.Generator | None = None
    ) -> Tensor: ...


class LocalLink:
    """A link to a host in this process: a function call, with every training message counted."""

    def __init__(
        self,
        client: int,
        host: HostsServerHalves,
        ledger: TrafficLedger,
        host_name: str = SERVER,
        noise: float = 0.0,
    ):
        self.client = client
        self.host = host
        self.ledger = ledger
        self.host_name = host_name
        self.noise = noise  # privacy.activation_noise: what leaves the client is h + noise

    def sent(self, message: Activations) -> Activations:
        """The message as it leaves the client: the defense's noise (global RNG, checkpointed) on h."""
        if not self.noise:
            return message
        return replace(
            message, hidden=add_activation_noise(message.hidden, message.attention_mask, self.noise)
        )

    def exchange(self, message: Activations) -> ActivationGrads:
        message = self.sent(message)
        reply = self.host.process(message)
        count_exchange(self.ledger, self.client, self.host_name, message.tensors(), (reply.grad,))
        return reply

    def infer(
        self, hidden: Tensor, attention_mask: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """Scoring sends h too, so it gets the same noise, from the caller's generator (repeatable)."""
        hidden = add_activation_noise(hidden, attention_mask, self.noise, generator)
        return self.host.infer(self.client, hidden, attention_mask)


class RouteLink(LocalLink):
    """A link to a server half that runs on a route of peers (topology=p2p): computed by the same host
    in this process, every hop counted."""

    def __init__(
        self, client: int, host: HostsServerHalves, ledger: TrafficLedger, hops: list[str], noise: float = 0.0
    ):
        super().__init__(client, host, ledger, hops[0], noise)
        self.hops = list(hops)

    def exchange(self, message: Activations) -> ActivationGrads:
        message = self.sent(message)
        reply = self.host.process(message)
        count_route(self.ledger, self.client, self.hops, message.tensors(), (reply.grad,))
        return reply
