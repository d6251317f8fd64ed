"""The federation's clients as Flower nodes: one node per client, found by its `partition-id`.

Every exchange sends one message to each client it names and waits for all the replies; the clients
that fail are reported with the errors their ClientApps raised, those that do not answer within
`engine.reply_timeout` by name. Each reply says when its handler ran (wall clock), so the time an
exchange took with no client working is Flower's own (messages, scheduling, serialization of the node
state); across machines that figure is only as good as their clocks' agreement.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

from atlas_pl.data.federated import ClientData
from atlas_pl.engines.flower.codec import read_json
from atlas_pl.errors import EngineError

ASK, REPORT = "ask", "report"


def data_shape(data: ClientData) -> dict[str, Any]:
    """What a node reports of the data it built, for the server to compare with its own copy: a node
    whose rows differ (other files, other config) would train, and score its personal set, on other data."""
    personal = 0 if data.personal is None else len(data.personal)
    return {"client_id": data.client_id, "task": data.task, "train": len(data.train), "personal": personal}


def covered_seconds(intervals: Sequence[Sequence[float]], start: float, end: float) -> float:
    """How much of [start, end] at least one of the intervals covers."""
    clipped = sorted((max(a, start), min(b, end)) for a, b in intervals if min(b, end) > max(a, start))
    total, reach = 0.0, start
    for a, b in clipped:
        if b > reach:
            total += b - max(a, reach)
            reach = b
    return total


class FlowerClients:
    """Client index -> node id, and the exchanges with them; `flower_seconds` accrues per exchange."""

    def __init__(self, grid: Grid, n_clients: int, timeout: float) -> None:
        self.grid, self.n, self.timeout = grid, n_clients, timeout
        self.nodes: list[int] = []
        self.flower_seconds = 0.0  # since the last `take_flower_seconds`
        self.peak_rss_mib: dict[tuple[str, int, int], float] = {}  # (host, pid, node) -> its peak

    def _wait_for_nodes(self) -> list[int]:
        deadline = time.monotonic() + self.timeout
        while len(ids := sorted(self.grid.get_node_ids())) < self.n:
            if time.monotonic() > deadline:
                raise EngineError(
                    f"only {len(ids)} of the {self.n} SuperNodes this job needs (one per client) connected "
                    f"within engine.reply_timeout={self.timeout:g} s"
                )
            time.sleep(0.05)
        return ids

    def connect(self, setup: Callable[[int], RecordDict]) -> dict[int, dict[str, Any]]:
        """Send every node the job (`setup(node)`), map clients to nodes; returns each client's answer."""
        ids = self._wait_for_nodes()
        replies = self._send(
            "query.setup", {node: setup(node) for node in ids}, {node: node for node in ids}, "SuperNodes"
        )
        by_client: dict[int, dict[str, Any]] = {}
        nodes: dict[int, int] = {}
        for node, reply in replies.items():
            answer = read_json(reply, REPORT)
            k = int(answer["index"])
            if k in nodes or not 0 <= k < self.n:
                raise EngineError(
                    f"SuperNode {node} has partition-id={k}: each of the {self.n} clients needs exactly one "
                    f"node, partition-id 0..{self.n - 1} (flower-supernode --node-config)"
                )
            nodes[k], by_client[k] = node, answer
        self.nodes = [nodes[k] for k in range(self.n)]
        return by_client

    def exchange(self, kind: str, contents: dict[int, RecordDict]) -> dict[int, RecordDict]:
        """Client index -> reply content for one message to each of these clients."""
        by_node = {self.nodes[k]: c for k, c in contents.items()}
        return self._send(kind, by_node, dict(enumerate(self.nodes)), "clients")

    def _send(
        self, kind: str, by_node: dict[int, RecordDict], names: dict[int, int], who: str
    ) -> dict[int, RecordDict]:
        """`names`: our name for each node (a client index; at setup, the node id)."""
        client_of = {node: k for k, node in names.items()}
        messages = [
            Message(content, dst_node_id=node, message_type=kind) for node, content in by_node.items()
        ]
        started = time.time()
        replies = list(self.grid.send_and_receive(messages, timeout=self.timeout))
        ended = time.time()
        out: dict[int, RecordDict] = {}
        failures = []
        for reply in replies:
            k = client_of[reply.metadata.src_node_id]
            if reply.has_error():
                failures.append(f"{who[:-1]} {k} failed in {kind}: {_reason(reply.error.reason or '')}")
            else:
                out[k] = reply.content
        if failures:
            raise EngineError("; ".join(failures))
        missing = sorted(client_of[n] for n in by_node if client_of[n] not in out)
        if missing:
            raise EngineError(
                f"{who} {missing} did not answer {kind} within engine.reply_timeout={self.timeout:g} s"
            )
        reports = {k: read_json(c, REPORT) for k, c in out.items()}
        for k, report in reports.items():
            process = (str(report.get("host")), int(report.get("pid", 0)), names[k])
            self.peak_rss_mib[process] = max(
                self.peak_rss_mib.get(process, 0.0), float(report.get("rss_mib", 0))
            )
        intervals = [r.get("busy", [started, started]) for r in reports.values()]
        self.flower_seconds += (ended - started) - covered_seconds(intervals, started, ended)
        return out

    def take_flower_seconds(self) -> float:
        seconds, self.flower_seconds = self.flower_seconds, 0.0
        return seconds


def _reason(reason: str) -> str:
    """The ClientApp's own exception, without Ray's wrapping around it."""
    lines = [line.strip() for line in reason.splitlines() if line.strip()]
    for line in reversed(lines):
        if "Error" in line or "Exception" in line:
            return line[-600:]
    return (lines[-1] if lines else reason)[-600:]
