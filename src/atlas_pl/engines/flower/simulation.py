"""engine=flower from the CLI: a Ray simulation of one SuperNode per client, started and ended by the job.

Under `flwr run` the job's ServerApp is given a Grid (deployment.py sets it here), and the same engine
runs on it instead.
"""

from __future__ import annotations

import contextvars
import logging
import math
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from atlas_pl.engines.flower.env import quiet_flower
from atlas_pl.engines.records import FederationResult
from atlas_pl.engines.setup import Federation
from atlas_pl.errors import EngineError
from atlas_pl.settings import Settings
from atlas_pl.tracking.tracker import Tracker

log = logging.getLogger(__name__)

_grid: contextvars.ContextVar[Any] = contextvars.ContextVar("atlas_pl_flower_grid", default=None)


@contextmanager
def deployed_on(grid: Any) -> Iterator[None]:
    """Jobs run inside this block use `grid` (a deployment's) instead of starting a simulation."""
    token = _grid.set(grid)
    try:
        yield
    finally:
        _grid.reset(token)


def deployed() -> bool:
    """Whether jobs started here run on a deployment's Grid (under `flwr run`)."""
    return _grid.get() is not None


def run_flower(
    settings: Settings, fed: Federation, tracker: Tracker, checkpointer: Any = None
) -> FederationResult:
    """The job's rounds through Flower: on the deployment's Grid, else in a Ray simulation."""
    from atlas_pl.engines.flower.server import FlowerEngine

    grid = _grid.get()
    if grid is not None:
        return FlowerEngine(settings, fed, tracker, grid, checkpointer, simulated=False).run()
    return simulate(settings, fed, tracker, checkpointer)


def usable_cpus() -> int:
    """The cores this process may use (its affinity: a SLURM allocation, taskset), not the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def backend_config(settings: Settings, n_clients: int) -> dict[str, Any]:
    """Ray's resources per ClientApp from engine.*; no dashboard, workers' output kept off the console.

    Ray gets no more CPUs than the clients can use at once: every worker builds the job's base and data."""
    e = settings.engine
    cpus = min(usable_cpus(), max(1, math.ceil(n_clients * e.client_cpus)))
    return {
        "client_resources": {"num_cpus": e.client_cpus, "num_gpus": e.client_gpus},
        "init_args": {
            "include_dashboard": False,
            "log_to_driver": False,
            "logging_level": logging.ERROR,
            "num_cpus": cpus,
        },
    }


def simulate(
    settings: Settings, fed: Federation, tracker: Tracker, checkpointer: Any = None
) -> FederationResult:
    quiet_flower()
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    from atlas_pl.console import route_library_logs
    from atlas_pl.engines.flower.app import client_app
    from atlas_pl.engines.flower.server import FlowerEngine

    route_library_logs(imported_only=True)  # Flower's and Ray's console lines to the job's log file

    outcome: dict[str, Any] = {}
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Any) -> None:
        try:
            outcome["result"] = FlowerEngine(settings, fed, tracker, grid, checkpointer).run()
        except BaseException as err:  # re-raised in the job's thread, with its own traceback
            outcome["error"] = err

    with warnings.catch_warnings():  # the job's own warnings still reach the log file
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"flwr(\.|$)")
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"ray(\.|$)")
        run_simulation(
            server_app,
            client_app,
            num_supernodes=len(fed.data.clients),
            backend_name="ray",
            backend_config=backend_config(settings, len(fed.data.clients)),
        )
    if "error" in outcome:
        raise outcome["error"]
    if "result" not in outcome:
        raise EngineError(
            "the Flower simulation ended without running the job's ServerApp (see atlas_pl.log)"
        )
    return outcome["result"]
