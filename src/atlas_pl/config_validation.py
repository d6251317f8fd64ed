"""Validate a composed config before any model or data is touched.

A typo in a sweep should cost a second, not the minutes of loading a model and tokenizing GLUE, so
every check here reads only the config, the registry metadata and the file system. All problems are
collected and reported together, each naming the key, the bad value and what is valid.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from atlas_pl.data.partition import MIN_PER_CLIENT, kept_rows
from atlas_pl.errors import AtlasError
from atlas_pl.models.catalog import ModelNotFound, known_models, resolve_model_spec
from atlas_pl.phases.availability import parse_deadline

GLUE_TASK_NAMES = ("sst2", "cola", "mrpc", "rte", "qnli", "qqp", "mnli")
LOCAL_GLUE_TASKS = ("sst2", "cola", "mrpc", "rte", "qnli")
SYNTHETIC_PATTERN = re.compile(r"^synthetic(0|[1-9]\d*)$")
ABLATIONS = (
    "local_only",
    "fedavg",
    "fedavg_cluster",
    "atlas",
    "splitlora",
    "hsplitlora",
    "hetlora",
    "centralized",
    "centralized_per_task",
)
LOGGERS = ("wandb", "csv", "none")
INT64_MAX = 2**63 - 1
MAX_GIB = 2.0**20  # a device budget beyond a PiB is a typo (and 1e300 GiB would overflow the byte count)
ACCELERATORS = ("cpu", "gpu", "cuda", "mps", "auto")


class ConfigError(AtlasError, ValueError):
    """One or more config values are invalid; the message lists each key with its valid values."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))

    def lines(self) -> list[str]:
        """A header, then one line per problem: several bad values are all fixed in one go."""
        return ["invalid configuration:", *self.problems]


class _Checker:
    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg
        self.problems: list[str] = []

    def get(self, key: str) -> Any:
        return OmegaConf.select(self.cfg, key, default=None)

    def fail(self, key: str, value: Any, valid: str) -> None:
        self.problems.append(f"{key}={value!r} is invalid; valid: {valid}")

    def one_of(self, key: str, choices: Iterable[str]) -> None:
        value = self.get(key)
        choices = tuple(choices)
        if value not in choices:
            self.fail(key, value, ", ".join(choices))

    def number(
        self,
        key: str,
        *,
        low: float | None = None,
        high: float | None = None,
        integer: bool = False,
        strict_low: bool = False,
        optional: bool = False,
    ) -> None:
        value = self.get(key)
        if value is None and optional:
            return
        kind = int if integer else (int, float)
        ok = isinstance(value, kind) and not isinstance(value, bool)
        ok = ok and (not isinstance(value, float) or math.isfinite(value))
        if integer and high is None:
            high = INT64_MAX  # numpy and torch hold counts and seeds as int64
        if ok and low is not None:
            ok = value > low if strict_low else value >= low
        if ok and high is not None:
            ok = value <= high
        if not ok:
            what = "an integer" if integer else "a number"
            lo = "" if low is None else (f" > {low}" if strict_low else f" >= {low}")
            hi = "" if high is None else f" and <= {high}"
            finite = "" if integer else " (finite)"
            self.fail(key, value, f"{what}{finite}{lo}{hi}" + (" (or null)" if optional else ""))


def validate_config(cfg: DictConfig) -> None:
    """Raise ConfigError listing every invalid value in `cfg`."""
    _check_complete(cfg)
    c = _Checker(cfg)

    # model and split point
    name = c.get("model.name")
    spec = None
    try:
        spec = resolve_model_spec(str(name))
    except ModelNotFound as err:
        c.problems.append(
            f"model.name={name!r} is invalid; valid: {', '.join(known_models())}, "
            f"or a local model directory ({err})"
        )
    split = c.get("model.split_point")
    if spec is not None:
        if not (isinstance(split, int) and 1 <= split < spec.num_layers):
            c.fail(
                "model.split_point",
                split,
                f"an integer in 1..{spec.num_layers - 1} ({spec.name} has {spec.num_layers} blocks)",
            )
    c.one_of("model.pooling", ("cls", "mean", "last"))
    c.one_of("model.head", ("linear", "mlp"))
    c.one_of("model.attn_implementation", ("auto", "eager", "sdpa"))
    c.one_of("model.dtype", ("auto", "float32", "bfloat16", "float16"))

    # tasks
    names = c.get("task.names")
    custom = _custom_task_names(c)
    valid_tasks = f"{', '.join(GLUE_TASK_NAMES)}, synthetic<N> (e.g. synthetic0)" + "".join(
        f", {name}" for name in custom
    )
    valid_tasks += ", or a task defined under task.custom.<name>"
    if not names or isinstance(names, str):
        c.fail("task.names", names, f"a non-empty list of task names from {valid_tasks}")
        names = []
    else:
        names = list(names)
        for task in names:
            if task not in GLUE_TASK_NAMES and not SYNTHETIC_PATTERN.match(str(task)) and task not in custom:
                c.fail("task.names", task, valid_tasks)
        if len(set(names)) != len(names):
            c.fail("task.names", names, "a list without duplicates")
        _check_custom_tasks(c, [t for t in names if t in custom])

    # devices
    profiles = c.get("devices.profiles") or {}
    mix = c.get("devices.mix")
    if isinstance(mix, str):
        c.fail("devices.mix", mix, f"a list of device profiles, e.g. [{mix}]")
    elif not mix:
        c.fail(
            "devices.mix",
            None if mix is None else list(mix),
            f"a non-empty list of device profiles from {sorted(profiles) or 'devices.profiles'}",
        )
    else:
        for device in mix:
            if device not in profiles:
                c.fail("devices.mix", device, ", ".join(sorted(profiles)))
    for device in profiles:
        c.number(f"devices.profiles.{device}.memory_gb", low=0, strict_low=True, high=MAX_GIB)
        for speed in ("flops", "bandwidth"):  # FLOP/s and bytes/s; required by topology=p2p
            c.number(f"devices.profiles.{device}.{speed}", low=0, strict_low=True, optional=True)
    c.number("devices.scale", low=0, strict_low=True, high=MAX_GIB, optional=True)
    c.one_of("devices.assignment", ("seeded", "round_robin"))

    # ablation, federation, LoRA, allocation
    c.one_of("ablation.name", ABLATIONS)
    c.one_of("ablation.head_aggregation", ("local", "group"))
    c.one_of("ablation.ranks", ("allocated", "uniform"))
    if c.get("ablation.ranks") == "allocated":
        c.one_of("ablation.importance", ("cluster", "global", "client"))
    c.one_of("ablation.aggregation", ("stack", "fedavg", "zeropad", "none"))
    c.one_of("ablation.personalization", ("laplacian", "none"))
    if c.get("ablation.pipeline") is not None:
        c.one_of("ablation.pipeline", ("split", "centralized"))
    if c.get("ablation.adapters") is not None:
        c.one_of("ablation.adapters", ("shared", "per_task"))
        if c.get("ablation.adapters") == "per_task" and c.get("ablation.pipeline") != "centralized":
            c.fail(
                "ablation.adapters",
                "per_task",
                "shared unless ablation.pipeline=centralized (ablation=centralized_per_task); a federated "
                "ablation's adapters are its clients'",
            )
    if c.get("ablation.personalization") == "laplacian" and c.get("ablation.clustering") is not True:
        c.fail(
            "ablation.clustering",
            c.get("ablation.clustering"),
            "true when ablation.personalization=laplacian (the graph is built on Phase 1's clusters)",
        )
    c.number("graph.alpha", low=0, strict_low=True, optional=True)
    c.number("graph.knn", low=1, integer=True)
    c.number("fed.eta", low=0.0, high=1.0)
    c.number("fed.rounds", low=1, integer=True)
    c.number("fed.local_epochs", low=1, integer=True)
    c.number("fed.eval_every", low=1, integer=True)
    c.number("fed.clients_per_task", low=1, integer=True)
    c.number("fed.batch_size", low=1, integer=True)
    c.number("fed.lr", low=0, strict_low=True)
    c.number("fed.head_lr", low=0, strict_low=True, optional=True)
    c.number("fed.weight_decay", low=0.0, optional=True)
    balanced = c.get("fed.balanced_tasks")
    if (
        not isinstance(balanced, Sequence)
        or isinstance(balanced, str)
        or any(
            str(t) not in GLUE_TASK_NAMES and not SYNTHETIC_PATTERN.match(str(t)) and str(t) not in custom
            for t in balanced
        )
    ):
        c.fail(
            "fed.balanced_tasks",
            list(balanced) if isinstance(balanced, Sequence) and not isinstance(balanced, str) else balanced,
            f"a list of task names from {valid_tasks} (tasks not in this run are ignored)",
        )
    c.number("lora.rank", low=1, integer=True)
    c.number("lora.alpha", low=0, strict_low=True)
    c.number("lora.dropout", low=0.0, high=0.99)
    candidates = c.get("allocation.rank_candidates")
    if not candidates or not all(
        isinstance(r, int) and not isinstance(r, bool) and r > 0 for r in candidates
    ):
        c.fail(
            "allocation.rank_candidates",
            None if candidates is None else list(candidates),
            "a non-empty list of positive integer ranks, e.g. [4, 8, 16, 32, 64]",
        )
    c.one_of("allocation.mode", ("importance", "uniform", "fixed"))
    c.number("allocation.host_reserve", low=0.0, high=0.95, optional=True)
    c.number("allocation.max_split", low=1, integer=True, optional=True)
    _check_topology(c, spec)
    _check_engine(c)
    _check_faults(c)
    c.number("allocation.uniform_rank", low=1, integer=True, optional=True)
    split_mode = c.get("allocation.split")
    if split_mode not in ("auto", None) and spec is not None:
        if not (isinstance(split_mode, int) and not isinstance(split_mode, bool)) or not (
            1 <= split_mode < spec.num_layers
        ):
            c.fail("allocation.split", split_mode, f"auto or an integer in 1..{spec.num_layers - 1}")

    # fingerprint / clustering
    c.number("fingerprint.batches", low=1, integer=True)
    c.number("fingerprint.layers", low=1, integer=True, high=spec.num_layers if spec else None)
    c.number("fingerprint.sketch_dim", low=1, integer=True)
    c.number("fingerprint.dim", low=1, integer=True)
    c.one_of("fingerprint.compression", ("sketch", "raw_pca"))
    c.number("fingerprint.recluster_every", low=0, integer=True)
    c.number("fingerprint.dp.clip", low=0, strict_low=True)
    c.number("fingerprint.dp.noise_multiplier", low=0.0)
    c.number("fingerprint.dp.delta", low=0.0, high=1.0, strict_low=True)
    c.number("clustering.k_min", low=2, integer=True)
    c.number("clustering.k_max", low=2, integer=True)
    k_min, k_max = c.get("clustering.k_min"), c.get("clustering.k_max")
    if isinstance(k_min, int) and isinstance(k_max, int) and k_max < k_min:
        c.fail("clustering.k_max", k_max, f"an integer >= clustering.k_min ({k_min})")
    c.number("clustering.singleton_penalty", low=0.0)
    weights = c.get("clustering.weights")
    expected = {"silhouette", "davies_bouldin", "calinski_harabasz"}
    if not isinstance(weights, Mapping) or set(weights) != expected:
        c.fail(
            "clustering.weights",
            dict(weights) if isinstance(weights, Mapping) else weights,
            "a mapping with exactly silhouette, davies_bouldin, calinski_harabasz",
        )
    else:
        for name in sorted(expected):
            c.number(f"clustering.weights.{name}", low=0.0)
    for flag in (
        "clustering.by_task",
        "fingerprint.class_balanced",
        "fingerprint.dp.enabled",
        "allocation.drop_infeasible",
        "graph.ensure_connectivity",
        "ablation.clustering",
        "trainer.deterministic",
        "trainer.batched_clients",
    ):
        if not isinstance(c.get(flag), bool):
            c.fail(flag, c.get(flag), "true or false")
    if c.get("fingerprint.dp.enabled") is True:
        if c.get("fingerprint.compression") == "raw_pca":
            c.fail(
                "fingerprint.dp.enabled",
                True,
                "false with fingerprint.compression=raw_pca (DP noises the sketch; raw gradients carry none)",
            )
        c.number("fingerprint.dp.noise_multiplier", low=0.0, strict_low=True)
        delta = c.get("fingerprint.dp.delta")
        if isinstance(delta, (int, float)) and not isinstance(delta, bool) and delta >= 1.0:
            c.fail("fingerprint.dp.delta", delta, "a number > 0 and < 1")

    # data
    c.one_of("data.source", ("auto", "local", "hub"))
    c.one_of("data.partition", ("iid", "dirichlet", "quantity"))
    c.number("data.dirichlet_alpha", low=0, strict_low=True)
    share = c.get("data.personal_share")
    if not isinstance(share, (int, float)) or isinstance(share, bool) or not 0.0 <= share <= 0.5:
        # beyond half, a client would hold out more rows than it trains on (and up to cap/(1-share) rows)
        c.fail("data.personal_share", share, "a number >= 0 and <= 0.5 (0 = no personal test sets, e.g. 0.2)")
    c.number("data.samples_per_client", low=1, integer=True, optional=True)
    cap, share = c.get("data.samples_per_client"), c.get("data.personal_share")
    if c.get("data.partition") == "quantity" and isinstance(cap, int) and isinstance(share, (int, float)):
        # quantity skew gives every client MIN_PER_CLIENT rows before sharing out the rest by size; its
        # mean size is the cap grown by the personal share (partition.kept_rows)
        if 0 < cap and kept_rows(cap, share) < MIN_PER_CLIENT:
            c.fail(
                "data.samples_per_client",
                cap,
                f"an integer >= {MIN_PER_CLIENT} with data.partition=quantity (or a data.personal_share > 0, "
                f"which makes each client keep {MIN_PER_CLIENT} rows from 1)",
            )
    c.number("data.eval_samples", low=1, integer=True, optional=True)
    c.number("data.max_len", low=8, integer=True)
    c.number("data.synthetic_train_size", low=1, integer=True)
    c.number("data.synthetic_eval_size", low=1, integer=True)
    _check_glue_files(c, names)

    # run plumbing
    c.one_of("logger.name", LOGGERS)
    for key in ("resume", "checkpoint.enabled"):
        if not isinstance(c.get(key), bool):
            c.fail(key, c.get(key), "true or false")
    c.number("checkpoint.keep", low=0, integer=True)
    c.number("trainer.devices", low=1, high=1, integer=True)
    c.number("trainer.num_threads", low=0, integer=True)
    # `*-true` precisions would cast only the client's LightningModule; the frozen base it shares with the
    # server halves (which train outside Lightning) would change dtype under them. model.dtype sets the base.
    c.one_of("trainer.precision", ("32-true", "32", "16-mixed", "bf16-mixed"))
    if c.get("trainer.precision") == "16-mixed" and c.get("model.dtype") == "float16":
        c.fail(
            "trainer.precision",
            "16-mixed",
            "bf16-mixed or 32-true with model.dtype=float16, or 16-mixed with model.dtype=float32 or "
            "bfloat16 (an fp16 base sends dL/dh across the split in fp16, below what loss scaling protects)",
        )
    if c.get("trainer.batched_clients") is True:
        _check_batched_clients(c)
    _check_defense(c)
    c.one_of("trainer.accelerator", ACCELERATORS)
    c.number("seed", low=0, integer=True)

    if c.problems:
        raise ConfigError(c.problems)


def _check_complete(cfg: DictConfig) -> None:
    """Keys the schema requires that no config file set (a user's own option file that leaves one out)."""
    from atlas_pl.conf_schema import missing_keys, schema_type

    missing = missing_keys(cfg)
    if missing:
        raise ConfigError(
            [
                f"{key} has no value (???); valid: {schema_type(key) or 'a value'}, set in the config file "
                f"that leaves it out or as {key}=..."
                for key in missing
            ]
        )


def _custom_task_names(c: _Checker) -> list[str]:
    """The names defined under task.custom (bring-your-own tasks, data/custom.py)."""
    custom = c.get("task.custom")
    if custom is None:
        return []
    if not isinstance(custom, Mapping):
        c.fail("task.custom", custom, "a mapping of task name -> definition (train, validation, text, ...)")
        return []
    return [str(name) for name in custom]


def _check_custom_tasks(c: _Checker, names: list[str]) -> None:
    """The definitions of the custom tasks the run uses: keys, columns, labels, metric, files exist."""
    from atlas_pl.data.custom import definition_problems

    custom = c.get("task.custom")
    for name in names:
        node = custom[name]
        raw = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
        c.problems += definition_problems(name, raw)


def _check_defense(c: _Checker) -> None:
    """Activation noise acts where h crosses the split: pipelines without that exchange are refused."""
    if c.get("privacy.activation_noise") is None:
        return
    c.number("privacy.activation_noise", low=0)
    noise = c.get("privacy.activation_noise")
    if not isinstance(noise, int | float) or isinstance(noise, bool) or noise <= 0:
        return
    if c.get("trainer.batched_clients") is True:
        c.fail(
            "trainer.batched_clients",
            True,
            "false with privacy.activation_noise > 0 (the batched step runs "
            "every client's whole model in one pass: no split exchange to add the noise to)",
        )
    if c.get("ablation.pipeline") == "centralized":
        c.fail(
            "privacy.activation_noise",
            noise,
            "0 with a centralized ablation (one unsplit model: nothing is sent)",
        )
    recluster = c.get("fingerprint.recluster_every")
    if isinstance(recluster, int) and recluster > 0:
        c.fail(
            "fingerprint.recluster_every",
            recluster,
            "0 with privacy.activation_noise > 0 (a re-clustering fingerprint runs the client's trained "
            "model in one process, so the h it would send carries no noise)",
        )


def _check_engine(c: _Checker) -> None:
    """engine=flower runs what Flower can carry today: one server host, every client every round."""
    c.one_of("engine.name", ("inprocess", "flower"))
    if c.get("engine.name") != "flower":
        return
    c.number("engine.client_cpus", low=0, strict_low=True)
    c.number("engine.client_gpus", low=0.0, high=1.0)
    c.number("engine.reply_timeout", low=0, strict_low=True, high=43200)  # Flower's message lifetime
    unsupported = {
        "topology.name": ("p2p", "server (peer hosting needs client-to-client links Flower does not give)"),
        "ablation.pipeline": ("centralized", "a federated ablation (centralized has no clients to send to)"),
        "trainer.batched_clients": (True, "false (each ClientApp trains its own client)"),
        "resume": (True, "false (a Flower job keeps each client's state on its node; README, Flower)"),
    }
    for key, (bad, valid) in unsupported.items():
        if c.get(key) == bad:
            c.fail(key, bad, f"{valid} with engine=flower")
    if (c.get("faults.drop") or 0) > 0 or (c.get("faults.straggle") or 0) > 0 or c.get("faults.deadline"):
        c.fail("faults", "absences, stragglers or a deadline", "faults=none with engine=flower")


def _check_topology(c: _Checker, spec: Any) -> None:
    """p2p needs a model deep enough to leave every device a block, and device speeds to balance by."""
    c.one_of("topology.name", ("server", "p2p"))
    if not isinstance(c.get("topology.server_fallback"), bool):
        c.fail("topology.server_fallback", c.get("topology.server_fallback"), "true or false")
    max_split = c.get("allocation.max_split")
    if spec is not None and isinstance(max_split, int) and max_split >= spec.num_layers:
        c.fail("allocation.max_split", max_split, f"null or an integer in 1..{spec.num_layers - 1}")
    if c.get("topology.name") != "p2p":
        return
    if c.get("trainer.batched_clients") is True:
        c.fail(
            "trainer.batched_clients",
            True,
            "false with topology=p2p (the batched step counts every exchange as the server's)",
        )
    if c.get("ablation.pipeline") == "centralized":
        c.fail("topology.name", "p2p", "server with a centralized ablation (one unsplit model: no halves)")
    if spec is not None and spec.num_layers < 3:
        c.fail("topology.name", "p2p", f"server: {spec.name} has {spec.num_layers} blocks, p2p needs >= 3")
    elif spec is not None:  # a fixed split skips Phase 2's p2p cap: the same bound, checked here
        key = "model.split_point" if c.get("allocation.mode") == "fixed" else "allocation.split"
        fixed = c.get(key)
        if isinstance(fixed, int) and fixed > spec.num_layers - 2:
            c.fail(
                key,
                fixed,
                f"at most {spec.num_layers - 2} under topology=p2p (a peer must be able to "
                "take each server block without then holding every block)",
            )
    _require_speeds(c, "topology=p2p, which prices each peer's work with it")


def _check_faults(c: _Checker) -> None:
    """Faults (conf/faults): probabilities in range, a positive deadline, and the profiles time needs."""
    c.one_of("pairing.name", ("cluster", "random"))
    drop = c.get("faults.drop")
    if drop is not None and not (_is_number(drop) and 0.0 <= drop < 1.0):
        c.fail("faults.drop", drop, "a number in [0, 1) (the probability a client misses a round)")
    c.number("faults.straggle", low=0.0, high=1.0, optional=True)
    slowdown = c.get("faults.slowdown")
    if slowdown is not None and not (
        isinstance(slowdown, Sequence | ListConfig)
        and len(slowdown) == 2
        and all(_is_number(v) for v in slowdown)
        and 1.0 <= slowdown[0] <= slowdown[1]
    ):
        shown = list(slowdown) if isinstance(slowdown, Sequence | ListConfig) else slowdown
        c.fail("faults.slowdown", shown, "[low, high] with 1 <= low <= high, e.g. [2.0, 8.0]")
    if c.get("faults") is not None:
        c.one_of("faults.late", ("leave_out", "partial"))
    try:
        seconds, multiple = parse_deadline(c.get("faults.deadline"))
    except (TypeError, ValueError):
        seconds, multiple = -1.0, None
    if any(v is not None and not (math.isfinite(v) and v > 0) for v in (seconds, multiple)):
        c.fail(
            "faults.deadline",
            c.get("faults.deadline"),
            'null, a number of simulated seconds > 0, or "<m>x" '
            "with m > 0 (m times the median client's path)",
        )
    timed = (seconds is not None or multiple is not None) or bool(c.get("faults.straggle"))
    active = timed or bool(drop)
    if active and c.get("ablation.pipeline") == "centralized":
        c.fail(
            "faults", "on", "none with a centralized ablation (one model on pooled data: no clients to lose)"
        )
    if active and c.get("trainer.batched_clients") is True:
        c.fail("trainer.batched_clients", True, "false with faults (the batched step trains every client)")
    if not timed:
        return
    _require_speeds(c, "faults (stragglers and deadlines are in simulated seconds)")
    if c.get("topology.name") == "server":
        for key in ("topology.server.flops", "topology.server.bandwidth"):
            if not _is_number(c.get(key)) or c.get(key) <= 0:
                c.fail(key, c.get(key), "a positive number: the server's profile times its work under faults")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _require_speeds(c: _Checker, why: str) -> None:
    """Every device of the mix needs flops and bandwidth where its work is timed."""
    profiles = c.get("devices.profiles") or {}
    for device in sorted({str(d) for d in (c.get("devices.mix") or [])} & set(profiles)):
        for speed, unit in (("flops", "FLOP/s"), ("bandwidth", "bytes/s")):
            value = c.get(f"devices.profiles.{device}.{speed}")
            if not _is_number(value) or value <= 0:
                c.fail(f"devices.profiles.{device}.{speed}", value, f"a positive number ({unit}) under {why}")


def _check_batched_clients(c: _Checker) -> None:
    """What the batched step cannot reproduce of one-by-one training is refused, not approximated."""
    dropout = c.get("lora.dropout")
    if isinstance(dropout, (int, float)) and dropout > 0:
        c.fail(
            "trainer.batched_clients",
            True,
            "false with lora.dropout > 0 (one dropout mask over the stacked clients is not the masks each "
            "client draws alone, so the batched run would no longer equal the one-by-one run)",
        )
    if c.get("trainer.precision") not in ("32-true", "32"):
        c.fail(
            "trainer.batched_clients",
            True,
            "false with a mixed trainer.precision (the batched step runs without Lightning's precision "
            "plugins; set the base's dtype with model.dtype instead)",
        )


def _check_glue_files(c: _Checker, tasks: list[str]) -> None:
    """Local GLUE files must exist when they are the only source (offline), before any loading."""
    source = c.get("data.source")
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    if source == "hub" or (source == "auto" and not offline):
        return
    glue_dir = c.get("data.glue_dir")
    for task in tasks:
        if task not in GLUE_TASK_NAMES:
            continue
        if task not in LOCAL_GLUE_TASKS:
            c.fail("task.names", task, f"{', '.join(LOCAL_GLUE_TASKS)} offline ({task} needs the hub)")
            continue
        splits = ("validation",) if task == "qnli" else ("train", "validation")
        for split in splits:
            path = Path(str(glue_dir)) / task / f"{split}.tsv"
            if not path.is_file():
                c.fail(
                    "data.glue_dir",
                    str(glue_dir),
                    f"a directory holding <task>/{{train,validation}}.tsv; {path} is missing",
                )
                return
    if "qnli" in tasks:
        train = Path(str(glue_dir)) / "qnli" / "train.tsv"
        if not train.is_file():
            c.fail(
                "task.names",
                "qnli",
                "qnli needs qnli/train.tsv for training, which the local GLUE "
                "copy lacks (validation only); use the hub or other tasks",
            )
