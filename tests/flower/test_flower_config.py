"""What engine=flower refuses, and says, before anything loads (no Flower needed to check these)."""

from __future__ import annotations

import builtins

import pytest

from atlas_pl.config_validation import ConfigError, validate_config
from atlas_pl.errors import RunEnvironmentError

from ..test_config import _compose


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["topology=p2p"], r"topology.name='p2p' is invalid; valid: server .*with engine=flower"),
        (["faults.drop=0.3"], r"faults=.* is invalid; valid: faults=none with engine=flower"),
        (["ablation=centralized"], r"ablation.pipeline='centralized' is invalid.*engine=flower"),
        (["resume=true"], r"resume=True is invalid; valid: false \(a Flower job keeps"),
        (["engine.client_gpus=2"], r"engine.client_gpus=2.0 is invalid; valid: a number .* <= 1.0"),
        (["engine.reply_timeout=50000"], r"engine.reply_timeout=50000.0 is invalid; valid: .*<= 43200"),
    ],
)
def test_what_flower_cannot_carry_is_refused_before_the_job(overrides, message) -> None:
    with pytest.raises(ConfigError, match=message):
        validate_config(_compose("+experiment=smoke", "engine=flower", *overrides))


def test_an_unknown_engine_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"engine.name='ray' is invalid; valid: inprocess, flower"):
        validate_config(_compose("+experiment=smoke", "engine.name=ray"))


def test_engine_flower_without_the_extra_says_how_to_install_it(monkeypatch) -> None:
    from atlas_pl.engines.flower.env import require_flower

    real_import = builtins.__import__

    def no_flower(name, *args, **kwargs):
        if name == "flwr" or name.startswith("flwr."):
            raise ImportError("No module named 'flwr'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_flower)
    with pytest.raises(RunEnvironmentError, match=r'pip install -e "\.\[flower\]"'):
        require_flower()


def test_ray_is_not_asked_for_what_it_cannot_schedule(monkeypatch) -> None:
    from atlas_pl.engines.flower import simulation
    from atlas_pl.engines.flower.env import check_simulation_resources

    monkeypatch.setattr(simulation, "usable_cpus", lambda: 2)
    check_simulation_resources(2, 0.0, "cpu")
    with pytest.raises(RunEnvironmentError, match=r"engine.client_cpus=3 but this process may use 2 cores"):
        check_simulation_resources(3, 0.0, "cpu")
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with pytest.raises(RunEnvironmentError, match=r"engine.client_gpus=0.5 but no GPU is visible"):
        check_simulation_resources(1, 0.5, "auto")
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    with pytest.raises(RunEnvironmentError, match=r"trains on the GPU but engine.client_gpus=0"):
        check_simulation_resources(1, 0.0, "auto")
    check_simulation_resources(1, 0.0, "cpu")
