"""The Flower apps: `client_app` (one client party per node) and `server_app` (a job under `flwr run`).

The simulation a CLI job starts (simulation.py) uses `client_app` with a ServerApp of its own; `flwr run`
loads both from here (the app's pyproject.toml names them, README, Flower). Every handler rebuilds its
client from the node's state (client.py) and answers with a `report` whose `busy` interval lets the
server tell its own waiting from the clients' work.
"""

from __future__ import annotations

import time
from typing import Any

from atlas_pl.engines.flower.env import quiet_flower

# before Flower is imported (it reads FLWR_TELEMETRY_ENABLED once, at import): this covers the simulation
# a CLI job starts; a SuperLink's or SuperNode's processes have imported Flower already, so a deployment
# sets the variables in their environment (README, Flower)
quiet_flower()

from flwr.app import Context, Message, RecordDict  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402
from flwr.serverapp import Grid, ServerApp  # noqa: E402

from atlas_pl.engines.flower.client import (  # noqa: E402
    JOB,
    Allocation,
    ClientNode,
    handler_report,
    node_config_paths,
)
from atlas_pl.engines.flower.codec import get_updates, json_record, put_tensors, read_json  # noqa: E402
from atlas_pl.engines.flower.nodes import ASK, REPORT, data_shape  # noqa: E402
from atlas_pl.errors import EngineError  # noqa: E402

client_app = ClientApp()
server_app = ServerApp()


def _partition(context: Context) -> int:
    if "partition-id" not in context.node_config:
        raise EngineError(
            "this SuperNode has no partition-id: start it with --node-config 'partition-id=<client index>'"
        )
    return int(context.node_config["partition-id"])


def _reply(
    message: Message, started: float, report: dict[str, Any], content: RecordDict | None = None
) -> Message:
    content = content if content is not None else RecordDict()
    content[REPORT] = json_record({**report, **handler_report(started)})
    return Message(content, reply_to=message)


def _node(message: Message, context: Context) -> tuple[ClientNode, dict[str, Any]]:
    """The client as its state left it, with the coordinator's updates since its last message written."""
    if JOB not in context.state:
        raise EngineError("this node got a message before the job's setup (was the SuperNode restarted?)")
    node = ClientNode(context.state, _partition(context))
    fields = read_json(message.content, ASK)
    if "allocation" in fields:
        node.allocate(Allocation.from_json(fields["allocation"]))
    node.apply(get_updates(message.content))
    return node, fields


@client_app.query("setup")
def setup(message: Message, context: Context) -> Message:
    """A new job on this node: its config (with the node's own paths), no state of an earlier job."""
    started = time.time()
    for key in list(context.state.keys()):
        del context.state[key]
    config = node_config_paths(read_json(message.content, "job"), dict(context.node_config))
    context.state[JOB] = json_record(config)
    node = ClientNode(context.state, _partition(context))
    node.save()
    data = node.data
    report = {"index": node.index, **data_shape(data)}
    return _reply(message, started, report)


@client_app.query("fingerprint")
def fingerprint(message: Message, context: Context) -> Message:
    started = time.time()
    node, fields = _node(message, context)
    tensors = node.fingerprint(int(fields["round"]), bool(fields["include_head"]))
    node.save()
    content = RecordDict()
    put_tensors(content, "fingerprint", tensors)
    return _reply(message, started, {"seconds": time.time() - started}, content)


@client_app.train()
def train(message: Message, context: Context) -> Message:
    started = time.time()
    node, fields = _node(message, context)
    report = node.train(int(fields["round"]))
    node.save()
    content = RecordDict()
    put_tensors(content, "model", node.trainable())
    return _reply(message, started, report, content)


@client_app.evaluate()
def evaluate(message: Message, context: Context) -> Message:
    started = time.time()
    node, fields = _node(message, context)
    # the task's set only where the server has no score of an identical model yet
    metrics = node.evaluate() if fields.get("global", True) else None
    personal = node.evaluate_personal()
    node.save()
    return _reply(message, started, {"metrics": metrics, "personal": personal})


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    """A job under `flwr run`: the run config's overrides composed as the CLI composes them."""
    from atlas_pl.engines.flower.deployment import run_deployed

    run_deployed(grid, dict(context.run_config))
