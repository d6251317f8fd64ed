"""`python -m atlas_pl`: the Hydra app.

Only hydra/omegaconf are imported at module level, so `--help`, `--cfg job` and config errors answer in
about a second; torch, transformers and Lightning are imported after the config is validated.
"""

from __future__ import annotations

import logging
import sys
import warnings
from importlib import resources
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from atlas_pl.conf_schema import register as register_schema

# The configs ship inside the package (a wheel or `pip install .` has them too); `conf/` at the top of a
# checkout is a link to the same folder. `--config-dir DIR` or `hydra.searchpath` add a user's own.
CONFIG_DIR = Path(str(resources.files("atlas_pl").joinpath("conf")))


def _root_dir() -> Path:
    """Where relative data and cache paths start: the checkout when run from one, else the working directory.

    The default GLUE folder is `<root>/../shared/data/glue` and the cache `<root>/.cache`; an installed
    package has no checkout around it, so both then start from where the job is launched."""
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "pyproject.toml").is_file() and (checkout / "src" / "atlas_pl").is_dir():
        return checkout
    return Path.cwd()


REPO_ROOT = _root_dir()

if not OmegaConf.has_resolver("atlas_root"):
    OmegaConf.register_new_resolver("atlas_root", lambda: str(REPO_ROOT))

register_schema()  # the types of conf/config.yaml's keys (conf_schema.py); Hydra's plugin scan does it too

log = logging.getLogger("atlas_pl")

# conf/hydra/launcher/{joblib,submitit_local,submitit_slurm}.yaml and conf/hydra/sweeper/basic.yaml share
# their names with the plugins' ConfigStore entries on purpose (users keep typing hydra/launcher=joblib, and
# the basic sweeper stays the default); Hydra merges them onto those schemas, which checks our keys, and
# warns that this matching is deprecated (see src/hydra_plugins/atlas_pl_launcher/fresh_process_launcher.py
# and validating_sweeper.py).
warnings.filterwarnings(
    "ignore",
    message=r"\s*'hydra/(launcher/(joblib|submitit_local|submitit_slurm)|sweeper/basic)' is validated against"
    r" ConfigStore",
    category=UserWarning,
)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
def app(cfg: DictConfig) -> float | None:
    """Validate and type the config, then run one job; returns the final mean primary metric (for sweepers).

    DictConfig stops here: everything below reads the typed `Settings`.
    """
    from atlas_pl.errors import user_errors
    from atlas_pl.settings import build_settings

    with user_errors():
        settings = build_settings(cfg)
        _quiet_third_party()
        from atlas_pl.reporting.job_end import in_sweep, show_job_end
        from atlas_pl.run import run_job

        value = run_job(settings)
        show_job_end(settings.output_dir, sweep=in_sweep())  # after W&B's closing lines
        return value


def _quiet_third_party() -> None:
    """Other libraries' warnings and logs go to the job's log file only (atlas_pl/console.py)."""
    from atlas_pl.console import quiet_third_party

    quiet_third_party()
    warnings.filterwarnings("ignore", message=r".*treespec.*", category=Warning)  # Lightning vs torch 2.13


def main() -> None:
    from atlas_pl.override_check import check_overrides

    check_overrides(sys.argv[1:], CONFIG_DIR)
    app()


if __name__ == "__main__":
    main()
