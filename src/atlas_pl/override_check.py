"""Mistyped keys and options on the command line, answered like every other bad value.

Hydra reports a key that does not exist (`fed.lrr=0.1`) or a group option that does not exist
(`model=tiny_bertt`) in its own words and exits 1, without saying which keys do exist. Composing the
config once here, before Hydra does, turns those into `atlas_pl: ...` lines that name the valid keys
(with the nearest ones first) or options, exit 2. A value of the wrong type for the config schema
(`fed.rounds=abc`, conf_schema.py) is named with the key's type, also when a config file of the user's
own (`--config-dir DIR`, searched where Hydra searches it) holds it. Multirun sweeps are left to the
validating sweeper, Hydra's own flags (--help, --cfg, ...) and another primary config (--config-path,
--config-name) to Hydra.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from atlas_pl.errors import AtlasError, user_errors

_HYDRA_FLAGS = ("help", "hydra_help", "info", "cfg", "shell_completion", "experimental_rerun")
_CUSTOM_CONFIG = ("config_path", "config_name")  # another primary config: Hydra's messages then


class OverrideError(AtlasError, ValueError):
    """A command-line override names a key or an option the config does not have."""


def check_overrides(argv: Sequence[str], config_dir: Path) -> None:
    """Exit 2 with one line if Hydra could not compose the config from `argv`'s overrides."""
    from hydra._internal.utils import get_args_parser

    args, _ = get_args_parser().parse_known_args(list(argv))
    if any(getattr(args, flag, None) for flag in (*_HYDRA_FLAGS, *_CUSTOM_CONFIG)):
        return
    overrides = list(args.overrides)
    with user_errors():
        if args.multirun:  # the sweep's own values are composed job by job, by the validating sweeper
            overrides = _without_sweeps(overrides)
        _compose(_with_user_dir(overrides, args.config_dir), config_dir)


def _with_user_dir(overrides: list[str], user_dir: str | None) -> list[str]:
    """`--config-dir DIR` as the override that puts DIR where Hydra puts it: after the packaged configs,
    before the ConfigStore (a user's model/foo.yaml is found; a file named like a packaged one is not
    used). A missing DIR is left to Hydra's own message, as is a command line that sets hydra.searchpath
    too (Hydra would search that list instead)."""
    if user_dir is None or any(o.split("=", 1)[0].lstrip("+~") == "hydra.searchpath" for o in overrides):
        return overrides
    path = Path(user_dir).resolve()
    if not path.is_dir():
        return overrides
    return [*overrides, f"hydra.searchpath=['file://{path}']"]


def _without_sweeps(overrides: list[str]) -> list[str]:
    """The overrides every job of a sweep shares (Hydra composes the sweep's base config from them)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except OverrideParseException as err:
        raise OverrideError(_unparsable(overrides, str(err))) from err
    return [o.input_line for o in parsed if not o.is_sweep_override() and o.input_line is not None]


def _compose(overrides: list[str], config_dir: Path) -> None:
    """Compose as Hydra is about to; its composition errors become one OverrideError line."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException

    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
            compose("config", overrides=overrides, return_hydra_config=True)
    except (MissingConfigException, OverrideParseException, ConfigCompositionException) as err:
        raise OverrideError(
            describe_composition_error(err, overrides, lambda: _known_keys(overrides, config_dir))
        ) from err


def describe_composition_error(
    err: Exception, overrides: Sequence[str], known_keys: Callable[[], list[str]]
) -> str:
    """One line for Hydra's MissingConfigException / OverrideParseException / ConfigCompositionException.

    `known_keys` lists the config's keys (called only for a mistyped key), so a caller inside a running
    Hydra app can walk the config it has instead of composing a new one."""
    from hydra.errors import MissingConfigException, OverrideParseException

    if isinstance(err, MissingConfigException):
        return _missing_option(str(err))
    if isinstance(err, OverrideParseException):
        return _unparsable(list(overrides), str(err))
    return _composition_problem(err, list(overrides), known_keys)


def _unparsable(overrides: list[str], message: str) -> str:
    """Name the one override that does not parse (Hydra's message names only the input it stopped at)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    bad = overrides
    for override in overrides:
        try:
            parser.parse_override(override)
        except HydraException:  # parse_override raises the grammar's error, not OverrideParseException
            bad = [override]
            break
    return (
        f"cannot parse the override {' '.join(bad)} ({message.splitlines()[0]}); valid: key=value, with "
        "lists as [a,b] and values holding , [ ] = or spaces quoted (see "
        "https://hydra.cc/docs/advanced/override_grammar/basic/)"
    )


def _missing_option(message: str) -> str:
    """`group=option is invalid; valid: ...` from Hydra's multi-line MissingConfigException text."""
    found = re.search(r"Could not find '([^']+)/([^'/]+)'", message)
    options = re.findall(r"^\t(\S+)$", message.split("Config search path")[0], flags=re.M)
    if not found:
        return message.splitlines()[0]
    group, option = found.groups()
    return f"{group}={option} is invalid; valid: {', '.join(options) or '(no options)'}"


def _composition_problem(err: Exception, overrides: list[str], known_keys: Callable[[], list[str]]) -> str:
    """A mistyped key, a value of the wrong type for the schema (conf_schema.py), or a config file that
    does either (a user's own option file under --config-dir, say)."""
    from omegaconf.errors import ValidationError

    cause = str(err.__cause__ or "")
    key_match = re.search(r"full_key: (\S+)", cause)
    ambiguous = re.search(r"Ambiguous value for argument '(.+)'", str(err))
    in_file = re.match(r"In '([^']+)': (\w+) raised while composing config:\s*(.*)", str(err), flags=re.S)
    if ambiguous:
        return (
            f"{ambiguous.group(1)} holds several values; valid: key=[a,b] for a list, key='a,b' for a "
            "string, or add -m (--multirun) to sweep over them"
        )
    if in_file:
        source, kind, detail = in_file.groups()
        return _file_problem(source, kind, detail, known_keys)
    if key_match is None:
        return " ".join(str(err).split())
    key = key_match.group(1)
    wanted = next((o for o in overrides if _names(o, key)), key)
    if isinstance(err.__cause__, ValidationError):
        return _wrong_type(wanted, key, cause)
    return _not_a_key(wanted, key, known_keys())


def _wrong_type(what: str, key: str, detail: str) -> str:
    """A value the schema's type rejects (conf_schema.py): the key, its type and OmegaConf's reason."""
    from atlas_pl.conf_schema import schema_type

    expected = schema_type(key) or "see --cfg job"
    return f"{what} is invalid; valid: {expected} (the type of {key}; {detail.splitlines()[0].strip()})"


def _file_problem(source: str, kind: str, detail: str, known_keys: Callable[[], list[str]]) -> str:
    """A config file (a user's own option, say) that sets a key the schema lacks, or a wrong type."""
    key_match = re.search(r"full_key: (\S+)", detail)
    if key_match is None:
        return f"config {source}: {' '.join(detail.split())}"
    key = key_match.group(1)
    if kind == "ValidationError":
        return _wrong_type(f"{key} in config {source}", key, detail)
    return f"config {source} sets {key}, which is not a key{_valid_keys(key, known_keys())}"


def _not_a_key(wanted: str, key: str, known: list[str]) -> str:
    """A mistyped key: name it, the nearest existing keys and its siblings, and how to add a new one."""
    return (
        f"{wanted} names no setting: {key} is not a key{_valid_keys(key, known)}; to add a new key, write "
        f"+{wanted.lstrip('+')}"
    )


def _valid_keys(key: str, known: list[str]) -> str:
    """` (did you mean ...?); valid keys under <parent>: ...` for a key that does not exist."""
    parent = _parent(key)
    siblings = sorted(k.rsplit(".", 1)[-1] for k in known if _parent(k) == parent)
    close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    where = f"under {parent}" if parent else "at the top level"
    return f"{hint}; valid keys {where}: {', '.join(siblings)}"


def _names(override: str, key: str) -> bool:
    """Whether `override` sets `key` or something below it (`foo.bar=1` sets under the missing `foo`)."""
    name = override.split("=", 1)[0].lstrip("+~")
    return name == key or name.startswith(key + ".")


def _parent(key: str) -> str:
    return key.rsplit(".", 1)[0] if "." in key else ""


def _known_keys(overrides: list[str], config_dir: Path) -> list[str]:
    """Every key of the config composed with the overrides that compose (group choices change the keys)."""
    from hydra import compose, initialize_config_dir

    good: list[str] = []
    for override in overrides:
        try:
            with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
                compose("config", overrides=[*good, override], return_hydra_config=True)
            good.append(override)
        except Exception:  # noqa: BLE001, S112 - this override is a bad one: leave it out
            continue
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        return config_keys(compose("config", overrides=good, return_hydra_config=True))


def config_keys(cfg: Any) -> list[str]:
    """Dotted paths of every key of a composed config."""
    from omegaconf import OmegaConf

    keys: list[str] = []
    _walk("", OmegaConf.to_container(cfg, resolve=False), keys)
    return keys


def _walk(prefix: str, value: Any, keys: list[str]) -> None:
    """Collect dotted paths depth-first (parents before children)."""
    if isinstance(value, dict):
        for name, sub in value.items():
            path = f"{prefix}.{name}" if prefix else str(name)
            keys.append(path)
            _walk(path, sub, keys)
