"""engine=flower deployed: `flwr run` against a SuperLink and three SuperNodes on loopback.

Each test starts its own SuperLink and SuperNodes (free ports, a private FLWR_HOME), and ends every one
by its process group whatever happens. The ServerApp writes the job's files where the run config says.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from ..conftest import GLUE_DIR, REPO_ROOT, cli_env, run_module
from .compare import assert_same_job

pytest.importorskip("flwr")

from atlas_pl.engines.flower.deployment import app_dir  # noqa: E402

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
SMOKE_3 = "+experiment=smoke fed.rounds=2 fed.clients_per_task=1 trainer.num_threads=1 logger=csv"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"no SuperLink on 127.0.0.1:{port} after {timeout} s")


@contextmanager
def local_deployment(tmp_path: Path, node_configs: list[str]) -> Iterator[dict[str, str]]:
    """A SuperLink and one SuperNode per node config on 127.0.0.1; yields the env `flwr run` needs."""
    home = tmp_path / "flwr_home"
    home.mkdir()
    port = free_port()
    (home / "config.toml").write_text(
        '[superlink]\ndefault = "local"\n\n[superlink.local]\n'
        f'address = "127.0.0.1:{port}"\ninsecure = true\n'
    )
    env = cli_env(
        FLWR_HOME=str(home),
        FLWR_TELEMETRY_ENABLED="0",
        FLWR_DISABLE_UPDATE_CHECK="1",
        PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}",  # the SuperLink starts flower-superexec from PATH
    )
    commands = [
        [str(BIN / "flower-superlink"), "--insecure", "--host", "127.0.0.1", "--port", str(port),
         "--database", str(tmp_path / "superlink.db"), "--disable-runtime-dependency-installation"],
    ] + [
        [str(BIN / "flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{port}",
         "--host", "127.0.0.1", "--port", str(free_port()), "--node-config", config]
        for config in node_configs
    ]  # fmt: skip
    processes = []
    try:
        for i, command in enumerate(commands):
            log = (tmp_path / f"flower_{i}.log").open("w")
            # a FLWR_HOME per process: Flower installs the app into it, and two installs into one can race
            own = tmp_path / f"flwr_home_{i}"
            own.mkdir()
            processes.append(
                subprocess.Popen(
                    command,
                    env={**env, "FLWR_HOME": str(own)},
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        wait_for_port(port)
        yield env
    finally:
        for p in processes:  # each with its children (superexec, serverapp, clientapp processes)
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for p in processes:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=15)


def flwr_run(env: dict[str, str], job: Path, overrides: str) -> subprocess.CompletedProcess:
    """`flwr run --stream` blocks until the run ends; it exits 0 even when the ServerApp failed, so the
    job's own files (done / failed.json) say how it went."""
    run_config = f'job-dir="{job}" overrides="{overrides}"'
    return subprocess.run(
        [str(BIN / "flwr"), "run", str(app_dir()), "local", "--run-config", run_config, "--stream"],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_local_deployment_runs_the_in_process_jobs_smoke(tmp_path) -> None:
    nodes = [f"partition-id={k} num-partitions=3" for k in range(3)]
    with local_deployment(tmp_path, nodes) as env:
        run = flwr_run(env, tmp_path / "flower", SMOKE_3)
    job = tmp_path / "flower"
    assert (job / "done").exists(), run.stdout[-3000:] + run.stderr[-3000:]
    assert "round 2/2" in (job / "atlas_pl.log").read_text()
    inprocess = run_module("atlas_pl", *SMOKE_3.split(), f"hydra.run.dir={tmp_path / 'inprocess'}")
    assert inprocess.returncode == 0, inprocess.stderr[-3000:]
    assert_same_job(tmp_path / "inprocess", job)
    summary = json.loads((job / "summary.json").read_text())
    assert summary["config"]["engine"]["name"] == "flower"
    assert summary["peak_memory"]["client_processes"] >= 3  # one ClientApp process per message


def test_a_supernode_without_the_data_fails_the_job_with_its_error(tmp_path) -> None:
    nodes = [f"partition-id={k} num-partitions=3" for k in range(2)]
    nodes.append(f'partition-id=2 num-partitions=3 glue-dir="{tmp_path / "no_glue_here"}"')
    overrides = (
        f"+experiment=smoke task=sst2 data.glue_dir={GLUE_DIR} fed.rounds=1 data.samples_per_client=16 "
        "data.eval_samples=16"
    )
    with local_deployment(tmp_path, nodes) as env:
        flwr_run(env, tmp_path / "job", overrides)
    failed = json.loads((tmp_path / "job" / "failed.json").read_text())
    assert "failed in query.setup" in failed["error"]
    assert "no_glue_here" in failed["error"]
    assert not (tmp_path / "job" / "done").exists()
