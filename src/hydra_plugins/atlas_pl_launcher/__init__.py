"""atlas_pl's Hydra launcher plugin: one fresh process per sweep job (used by `hydra/launcher=joblib`).

Hydra only instantiates launchers found under the `hydra_plugins` namespace package, hence this location.
The default sweeper (`validating_sweeper.py`, conf/hydra/sweeper/basic.yaml) lives here for the same reason.
"""

import warnings

from . import job_dirname  # noqa: F401  (registers the atlas_dirname resolver)

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
