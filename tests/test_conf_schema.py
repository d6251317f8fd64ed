"""The config schema (atlas_pl/conf_schema.py): every shipped option fits it, it agrees with the typed
settings, and a wrong type is refused while composing, naming the key and its type."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from atlas_pl import conf_schema, settings
from atlas_pl.__main__ import CONFIG_DIR
from atlas_pl.config_validation import ConfigError, validate_config
from atlas_pl.override_check import check_overrides

from .test_config import _compose

# every group of the training config and the schema node its options are merged onto
GROUPS = (
    "model",
    "task",
    "devices",
    "topology",
    "pairing",
    "faults",
    "ablation",
    "trainer",
    "logger",
    "paths",
)
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((CONFIG_DIR / g).glob("*.yaml"))]


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_group_option_fits_its_schema(group: str, option: str) -> None:
    """Merged onto the group's dataclass, as Hydra merges it: right types, no unknown and no missing key.
    (A file with a defaults list would need Hydra to compose it; none of these groups has one.)"""
    node = typing.get_type_hints(conf_schema.AtlasConf)[group]
    loaded = OmegaConf.load(CONFIG_DIR / group / f"{option}.yaml")
    assert "defaults" not in loaded
    merged = OmegaConf.merge(OmegaConf.structured(conf_schema.AtlasConf), {group: loaded})
    assert OmegaConf.get_type(merged[group]) is node
    values = OmegaConf.to_container(merged[group], resolve=False)  # ${hydra:...} resolves only in a job
    assert "'???'" not in repr(values), f"{group}/{option} leaves keys unset: {values}"


def test_the_composed_config_is_typed() -> None:
    cfg = _compose("+experiment=smoke")  # test_config.py composes and validates every experiment
    assert OmegaConf.get_type(cfg) is conf_schema.AtlasConf
    assert OmegaConf.get_type(cfg.fed) is conf_schema.FedConf
    assert isinstance(cfg.fed.eta, float) and isinstance(cfg.fed.rounds, int)
    assert OmegaConf.missing_keys(cfg) == set()


# Settings fields computed from the config rather than copied from one key of it
DERIVED = {
    "FedSettings": {"seed_base"},
    "TopologySettings": {"pairing", "server_flops", "server_bandwidth"},
    "FaultSettings": {"deadline_seconds", "deadline_multiple"},
    "DeviceProfile": {"name"},
}
SETTINGS_NODES = {
    settings.ModelSettings: conf_schema.ModelConf,
    settings.LoraSettings: conf_schema.LoraConf,
    settings.DataSettings: conf_schema.DataConf,
    settings.FedSettings: conf_schema.FedConf,
    settings.DPSettings: conf_schema.DPConf,
    settings.FingerprintSettings: conf_schema.FingerprintConf,
    settings.ClusteringSettings: conf_schema.ClusteringConf,
    settings.GraphSettings: conf_schema.GraphConf,
    settings.AllocationSettings: conf_schema.AllocationConf,
    settings.TopologySettings: conf_schema.TopologyConf,
    settings.FaultSettings: conf_schema.FaultsConf,
    settings.DeviceProfile: conf_schema.DeviceProfileConf,
    settings.DevicesSettings: conf_schema.DevicesConf,
    settings.AblationSettings: conf_schema.AblationConf,
    settings.TrainerSettings: conf_schema.TrainerConf,
    settings.LoggerSettings: conf_schema.LoggerConf,
    settings.CheckpointSettings: conf_schema.CheckpointConf,
    settings.DefenseSettings: conf_schema.DefenseConf,
}


def _kind(tp: Any) -> str:
    """A type reduced to what config and settings must agree on: null-ness and containers aside."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if type(None) in typing.get_args(tp):
        return _kind(args[0]) if len(args) == 1 else "any"
    origin = typing.get_origin(tp)
    if origin in (list, tuple, frozenset):
        return f"list[{_kind(args[0])}]"  # tuple[str, ...], tuple[float, float], frozenset[str]
    if origin is dict or (isinstance(tp, type) and dataclasses.is_dataclass(tp)):
        return "mapping"
    if tp is Path:
        return "str"
    return "any" if tp is Any else getattr(tp, "__name__", str(tp))


@pytest.mark.parametrize("typed", list(SETTINGS_NODES), ids=lambda t: t.__name__)
def test_the_schema_agrees_with_the_typed_settings(typed: type) -> None:
    """Each Settings field read from one config key has that key in the schema, with a matching type: a key
    added to settings.py without its schema entry (or with another type) fails here."""
    schema = typing.get_type_hints(SETTINGS_NODES[typed])
    for name, tp in typing.get_type_hints(typed).items():
        if name in DERIVED.get(typed.__name__, set()):
            continue
        assert name in schema, f"{typed.__name__}.{name} has no key in {SETTINGS_NODES[typed].__name__}"
        want, have = _kind(tp), _kind(schema[name])
        if have != "any":
            assert want == have, f"{typed.__name__}.{name}: settings {tp}, schema {schema[name]}"


WRONG_TYPES = [
    ("fed.rounds=abc", "fed.rounds=abc is invalid; valid: int (the type of fed.rounds;"),
    ("lora.alpha=x", "lora.alpha=x is invalid; valid: float"),
    ("clustering.weights=0.5", "valid: a mapping with keys silhouette, davies_bouldin, calinski_harabasz"),
    ("fingerprint.dp.enabled=maybe", "fingerprint.dp.enabled=maybe is invalid; valid: bool (true or false)"),
]


@pytest.mark.parametrize(("override", "message"), WRONG_TYPES, ids=[w[0] for w in WRONG_TYPES])
def test_wrong_types_are_refused_while_composing(override: str, message: str, capsys) -> None:
    """Before Hydra starts the job (atlas_pl.__main__.main runs this check first): one line, exit 2."""
    with pytest.raises(SystemExit) as stop:
        check_overrides(["+experiment=smoke", override], CONFIG_DIR)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("atlas_pl: ") and len(err.strip().splitlines()) == 1, err
    assert message in err, err


def _user_dir(tmp_path: Path, body: str) -> Path:
    (tmp_path / "model").mkdir(parents=True)
    (tmp_path / "model" / "mine.yaml").write_text(body)
    return tmp_path


def test_a_user_config_dir_adds_options_and_is_checked(tmp_path: Path, capsys) -> None:
    """--config-dir DIR: DIR's model/mine.yaml composes onto the schema; a wrong type in it is named."""
    good = _user_dir(tmp_path / "good", "defaults: [tiny_bert, _self_]\nsplit_point: 1\n")
    check_overrides(["--config-dir", str(good), "+experiment=smoke", "model=mine"], CONFIG_DIR)
    cfg = _compose("+experiment=smoke", "model=mine", f"hydra.searchpath=[file://{good}]")
    assert cfg.model.split_point == 1 and cfg.model.name == "tiny_bert"

    bad = _user_dir(tmp_path / "bad", "defaults: [tiny_bert, _self_]\nsplit_point: two\n")
    with pytest.raises(SystemExit):
        check_overrides(["--config-dir", str(bad), "+experiment=smoke", "model=mine"], CONFIG_DIR)
    err = capsys.readouterr().err
    assert "model.split_point in config model/mine is invalid; valid: int" in err, err


def test_a_key_no_config_file_sets_is_named(tmp_path: Path) -> None:
    partial = _user_dir(tmp_path, "name: tiny_bert\nsplit_point: 1\npooling: cls\n")
    cfg = _compose("+experiment=smoke", "model=mine", f"hydra.searchpath=[file://{partial}]")
    with pytest.raises(ConfigError, match=r"model.head has no value \(\?\?\?\); valid: str"):
        validate_config(cfg)
