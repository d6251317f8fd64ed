"""Flower and Ray made quiet and offline before either is imported, and a clear error without them."""

from __future__ import annotations

import os

from atlas_pl.errors import RunEnvironmentError

FLOWER_VERSION = "1.42"

# telemetry off, and no probe of an outside address (Ray uses one to find the machine's IP)
QUIET_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
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


def check_simulation_resources(client_cpus: float, client_gpus: float, accelerator: str) -> None:
    """What Ray could not schedule, or would schedule wrongly, refused before the job starts: a ClientApp
    asking for more cores than this process may use or for a GPU there is none of (Ray would wait for a
    worker forever), and a GPU job whose ClientApps were given no GPU share (Ray would hide the GPU)."""
    import torch

    from atlas_pl.engines.flower.simulation import deployed, usable_cpus

    if deployed():  # under `flwr run` each SuperNode's machine has its own cores and GPUs
        return
    cores = usable_cpus()
    if client_cpus > cores:
        raise RunEnvironmentError(
            f"engine.client_cpus={client_cpus:g} but this process may use {cores} cores: "
            f"valid 0 < x <= {cores}"
        )
    has_gpu = torch.cuda.is_available()
    if client_gpus > 0 and not has_gpu:
        raise RunEnvironmentError(
            f"engine.client_gpus={client_gpus:g} but no GPU is visible: 0 on this machine"
        )
    if has_gpu and accelerator in ("gpu", "cuda", "auto") and client_gpus == 0:
        raise RunEnvironmentError(
            "the job trains on the GPU but engine.client_gpus=0 gives the ClientApps none: "
            "set a share in (0, 1] (0.25: four clients per GPU), or trainer.accelerator=cpu"
        )
