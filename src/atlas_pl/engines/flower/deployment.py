"""A job under `flwr run`: the ServerApp composes the config the CLI would, then runs the job on the Grid.

The run config (`flwr run APP FEDERATION --run-config '...'`) names the job directory (`job-dir`, an
absolute path on the machine the ServerApp runs on) and the Hydra overrides (`overrides`, as typed after
`python -m atlas_pl`); `engine=flower` is implied. The job writes the files a CLI job writes. Not
supported: resume (each client's state lives on its node and ends with the run) and sweeps (one
`flwr run` per job).
"""

from __future__ import annotations

import shlex
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


def run_deployed(grid: Any, run_config: dict[str, Any]) -> float:
    from atlas_pl.run import run_job

    cfg = deployment_config(run_config)
    with deployed_on(grid):
        return run_job(cfg)
