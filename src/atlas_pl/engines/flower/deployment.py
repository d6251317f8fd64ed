"""A job under `flwr run`: the ServerApp composes the config the CLI would, then runs the job on the Grid.

The run config (`flwr run APP FEDERATION --run-config '...'`) names the job directory (`job-dir`, an
absolute path on the machine the ServerApp runs on) and the Hydra overrides (`overrides`, as typed after
`python -m atlas_pl`); `engine=flower` is implied. The job writes the files a CLI job writes. Not
supported: resume (each client's state lives on its node and ends with the run) and sweeps (one
`flwr run` per job).
"""

from __future__ import annotations

import logging
import shlex
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any

from atlas_pl.engines.flower.simulation import deployed_on
from atlas_pl.errors import EngineError


def deployment_config(run_config: dict[str, Any]) -> Any:
    """The job's DictConfig from the run config's `overrides` and `job-dir` (validated by run_job)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from atlas_pl.__main__ import CONFIG_DIR

    job_dir = str(run_config.get("job-dir") or "")
    if not job_dir or not Path(job_dir).is_absolute():
        raise EngineError(
            f"run config job-dir={job_dir!r}: give the job directory as an absolute path, e.g. "
            '--run-config \'job-dir="/data/jobs/smoke" overrides="+experiment=smoke"\''
        )
    overrides = [*shlex.split(str(run_config.get("overrides") or "")), "engine=flower"]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    OmegaConf.set_struct(cfg, False)
    cfg.paths.output_dir = job_dir
    return cfg


def app_dir() -> Path:
    """The Flower app to give `flwr run`: one pyproject.toml naming the apps in this package."""
    return Path(str(resources.files("atlas_pl").joinpath("engines", "flower", "flower_app")))


@contextmanager
def job_log(job_dir: str) -> Iterator[None]:
    """The job's records into <job-dir>/atlas_pl.log, as a CLI job's Hydra logging writes them."""
    Path(job_dir).mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(Path(job_dir) / "atlas_pl.log")
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(min(level, logging.INFO) if level else logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        handler.close()


def run_deployed(grid: Any, run_config: dict[str, Any]) -> float:
    from atlas_pl.run import run_job

    cfg = deployment_config(run_config)
    with job_log(str(cfg.paths.output_dir)), deployed_on(grid):
        return run_job(cfg)


if __name__ == "__main__":  # python -m atlas_pl.engines.flower.deployment: where the app is
    sys.stdout.write(f"{app_dir()}\n")
