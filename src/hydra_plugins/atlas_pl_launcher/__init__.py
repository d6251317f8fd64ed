"""atlas_pl's Hydra launcher plugin: one fresh process per sweep job (used by `hydra/launcher=joblib`).

Hydra only instantiates launchers found under the `hydra_plugins` namespace package, hence this location.
The default sweeper (`validating_sweeper.py`, conf/hydra/sweeper/basic.yaml) lives here for the same reason.
"""

import warnings

from atlas_pl.conf_schema import register as register_schema

from . import job_dirname  # noqa: F401  (registers the atlas_dirname resolver)

# Hydra imports this package when it scans its plugins, before it composes any config: registering the
# config schema here means every composition of conf/config.yaml finds `atlas_pl_schema` in the ConfigStore
# (the app, a job process, tests and notebooks composing with hydra.compose).
register_schema()

# Hydra warns that merging conf/hydra/sweeper/basic.yaml onto the basic sweeper's ConfigStore schema is
# deprecated, wherever it composes a job's config. A job process (of our launcher, of submitit) imports
# this package when it unpickles its job, before Hydra's plugin scan, whose warnings.catch_warnings() would
# drop a filter set during the scan's import; the sweep's own process gets the filter from
# atlas_pl/__main__.py.
warnings.filterwarnings(
    "ignore",
    message=r"\s*'hydra/sweeper/basic' is validated against ConfigStore",
    category=UserWarning,
)
