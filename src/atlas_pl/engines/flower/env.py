"""Flower and Ray made quiet and offline before either is imported, and a clear error without them."""

from __future__ import annotations

import os

from atlas_pl.errors import RunEnvironmentError

FLOWER_VERSION = "1.42"

# telemetry off, and no probe of an outside address (Ray uses one to find the machine's IP)
QUIET_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
}


def quiet_flower() -> None:
    """Set the variables above unless the user set them; child processes (Ray workers) inherit them."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)


def require_flower() -> None:
    """engine=flower without the extra (or with another Flower) fails before anything is loaded."""
    quiet_flower()
    try:
        import flwr
    except ImportError as err:
        raise RunEnvironmentError(
            'engine=flower needs Flower: pip install -e ".[flower]" (or make install-flower); '
            "engine=inprocess needs nothing more"
        ) from err
    version = getattr(flwr, "__version__", "")
    if not str(version).startswith(FLOWER_VERSION):
        raise RunEnvironmentError(
            f"engine=flower is built on Flower {FLOWER_VERSION}.x, found {version}: "
            'pip install -e ".[flower]" installs the supported version'
        )
