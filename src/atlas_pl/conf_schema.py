"""Hydra structured configs: the type of every key of `python -m atlas_pl`'s config, in Hydra's ConfigStore.

conf/config.yaml names `atlas_pl_schema` first in its defaults list, so every group option, experiment,
user config file (`--config-dir`) and command-line override is merged onto these dataclasses. A wrong type
(`fed.rounds=abc`, `lora.alpha=x`, `split_point: many` in a user's model file) or a key that does not exist
is then refused while Hydra composes the config, before any work, by Hydra's own check naming the key and
the type; `atlas_pl.override_check` turns that into the usual one `atlas_pl:` line.

Where the defaults live: the YAML files hold every value (with the comments saying why), and the schema
only types. A key every option of its group sets is MISSING here (a user's own option that leaves it out
is told so, `missing_keys`); a default appears here only for a key that some shipped options leave out
(`ablation.pipeline`, `devices.scale`, the W&B-only `logger.*` keys), so each default lives in one place.
settings.py keeps fallbacks of its own only for job_config.json files written before a key existed.

Only dataclasses, omegaconf and hydra load here: `--help` and `--cfg job` stay fast. The schema mirrors the
config's shape, which is not the shape of `atlas_pl.settings` (task.names becomes Settings.tasks, the
topology's server profile becomes two fields, a deadline is parsed into two), so it is written out rather
than generated; tests/test_conf_schema.py checks every Settings field against its schema type.

Privacy's app (conf/privacy.yaml) is not typed here: it shares the model, task and paths groups but has
its own keys, checked by atlas_pl.privacy.config.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field, is_dataclass
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf

SCHEMA_NAME = "atlas_pl_schema"


@dataclass
class ModelConf:
    name: str = MISSING  # a catalog name (minilm, tiny_bert, ...) or a local model directory
    split_point: int = MISSING
    pooling: str | None = MISSING  # cls | mean | last
    head: str = MISSING  # linear | mlp
    lora_targets: list[str] | None = MISSING  # null = the family's default
    attn_implementation: str = MISSING  # auto | eager | sdpa
    dtype: str = MISSING  # auto | float32 | bfloat16 | float16


@dataclass
class TaskConf:
    names: list[str] = MISSING
    # Bring-your-own tasks by name (atlas_pl.data.custom: train, validation, text, text_pair, label, labels,
    # metric, format, hub, hub_config). Entries are untyped here because OmegaConf cannot create a
    # dataclass-typed dict entry from a command-line override (+task.custom.x.train=...); their keys and
    # types are checked by atlas_pl.data.custom.definition_problems with the other config checks.
    custom: dict[str, Any] = field(default_factory=dict)


@dataclass
class DeviceProfileConf:
    memory_gb: float = MISSING
    flops: float | None = None  # sustained FLOP/s; needed by topology=p2p and deadlines
    bandwidth: float | None = None  # bytes/s of the device's link


@dataclass
class DevicesConf:
    name: str = MISSING
    profiles: dict[str, DeviceProfileConf] = MISSING
    mix: list[str] = MISSING
    assignment: str = MISSING  # seeded | round_robin
    scale: float = 1.0  # budgets in real GiB unless an option scales them


@dataclass
class ServerConf:
    flops: float | None = MISSING
    bandwidth: float | None = MISSING


@dataclass
class TopologyConf:
    name: str = MISSING  # server | p2p
    server_fallback: bool = MISSING
    server: ServerConf = field(default_factory=ServerConf)


@dataclass
class EngineConf:
    name: str = MISSING  # inprocess | flower
    client_cpus: float = 1.0  # flower simulation: Ray CPUs per ClientApp
    client_gpus: float = 0.0  # flower simulation: share of a GPU per ClientApp
    reply_timeout: float = 3600.0  # flower: seconds one exchange may take


@dataclass
class PairingConf:
    name: str = MISSING  # cluster | random


@dataclass
class FaultsConf:
    drop: float = MISSING
    straggle: float = MISSING
    slowdown: list[float] = MISSING
    deadline: Any = MISSING  # null, simulated seconds, or "<m>x" (m times the median client's path)
    late: str = MISSING  # leave_out | partial


@dataclass
class AblationConf:
    name: str = MISSING
    clustering: bool = MISSING
    ranks: str = MISSING  # allocated | uniform
    aggregation: str = MISSING  # stack | fedavg | zeropad | none
    personalization: str = MISSING  # laplacian | none
    head_aggregation: str = MISSING  # local | group
    pipeline: str = "split"  # split | centralized (only the centralized ablations set it)
    adapters: str = "shared"  # shared | per_task: the centralized pipeline's adapter(s)
    importance: str = "global"  # cluster | global | client; read only with ranks=allocated


@dataclass
class TrainerConf:
    accelerator: str = MISSING  # cpu | gpu | cuda | mps | auto
    devices: int = MISSING
    precision: str = MISSING  # 32-true | 32 | 16-mixed | bf16-mixed
    deterministic: bool = MISSING
    num_threads: int = MISSING
    batched_clients: bool = MISSING


@dataclass
class LoggerConf:
    name: str = MISSING  # wandb | csv | none
    project: str | None = None  # the W&B keys: logger=csv and logger=none leave them out
    entity: str | None = None
    group: str | None = None
    mode: str | None = None
    tags: list[str] = field(default_factory=list)


@dataclass
class PathsConf:
    root_dir: str = MISSING
    glue_dir: str = MISSING
    cache_dir: str = MISSING
    output_dir: str = MISSING


@dataclass
class FedConf:
    rounds: int = MISSING
    local_epochs: int = MISSING
    clients_per_task: int = MISSING
    eta: float = MISSING
    batch_size: int = MISSING
    lr: float = MISSING
    head_lr: float | None = MISSING  # null = fed.lr
    weight_decay: float | None = MISSING
    balanced_tasks: list[str] = MISSING
    eval_every: int = MISSING


@dataclass
class DataConf:
    glue_dir: str | None = MISSING
    source: str = MISSING  # auto | local | hub
    samples_per_client: int | None = MISSING  # null = all
    eval_samples: int | None = MISSING  # null = all
    partition: str = MISSING  # iid | dirichlet | quantity
    dirichlet_alpha: float = MISSING
    personal_share: float = MISSING  # 0 = no personal test sets
    max_len: int = MISSING
    cache_dir: str = MISSING
    synthetic_train_size: int = MISSING
    synthetic_eval_size: int = MISSING


@dataclass
class LoraConf:
    rank: int = MISSING
    alpha: float = MISSING
    dropout: float = MISSING


@dataclass
class DPConf:
    enabled: bool = MISSING
    clip: float = MISSING
    noise_multiplier: float = MISSING
    delta: float = MISSING


@dataclass
class FingerprintConf:
    batches: int = MISSING
    layers: int = MISSING
    sketch_dim: int = MISSING
    dim: int = MISSING
    compression: str = MISSING  # sketch | raw_pca
    class_balanced: bool = MISSING
    recluster_every: int = MISSING
    dp: DPConf = field(default_factory=DPConf)


@dataclass
class ClusteringWeightsConf:
    silhouette: float = MISSING
    davies_bouldin: float = MISSING
    calinski_harabasz: float = MISSING


@dataclass
class ClusteringConf:
    by_task: bool = MISSING
    k_min: int = MISSING
    k_max: int = MISSING
    singleton_penalty: float = MISSING
    weights: ClusteringWeightsConf = field(default_factory=ClusteringWeightsConf)


@dataclass
class GraphConf:
    alpha: float | None = MISSING  # null = 1 / median squared distance
    ensure_connectivity: bool = MISSING
    knn: int = MISSING


@dataclass
class AllocationConf:
    mode: str = MISSING  # importance | uniform | fixed
    rank_candidates: list[int] = MISSING
    uniform_rank: int | None = MISSING
    split: Any = MISSING  # "auto" or an integer (OmegaConf 2.3 has no str-or-int type)
    drop_infeasible: bool = MISSING
    max_split: int | None = MISSING
    host_reserve: float | None = MISSING


@dataclass
class DefenseConf:
    activation_noise: float = MISSING


@dataclass
class CheckpointConf:
    enabled: bool = MISSING
    keep: int = MISSING


@dataclass
class AtlasConf:
    """The root: what conf/config.yaml and its groups compose to (hydra's own node is Hydra's)."""

    seed: int = MISSING
    resume: bool = MISSING
    experiment_name: str = MISSING
    model: ModelConf = field(default_factory=ModelConf)
    task: TaskConf = field(default_factory=TaskConf)
    devices: DevicesConf = field(default_factory=DevicesConf)
    topology: TopologyConf = field(default_factory=TopologyConf)
    pairing: PairingConf = field(default_factory=PairingConf)
    faults: FaultsConf = field(default_factory=FaultsConf)
    engine: EngineConf = field(default_factory=EngineConf)
    ablation: AblationConf = field(default_factory=AblationConf)
    trainer: TrainerConf = field(default_factory=TrainerConf)
    logger: LoggerConf = field(default_factory=LoggerConf)
    paths: PathsConf = field(default_factory=PathsConf)
    fed: FedConf = field(default_factory=FedConf)
    data: DataConf = field(default_factory=DataConf)
    lora: LoraConf = field(default_factory=LoraConf)
    fingerprint: FingerprintConf = field(default_factory=FingerprintConf)
    clustering: ClusteringConf = field(default_factory=ClusteringConf)
    graph: GraphConf = field(default_factory=GraphConf)
    allocation: AllocationConf = field(default_factory=AllocationConf)
    privacy: DefenseConf = field(default_factory=DefenseConf)
    checkpoint: CheckpointConf = field(default_factory=CheckpointConf)


def register() -> None:
    """Put the schema in Hydra's ConfigStore (idempotent; an entry stored again is replaced).

    Called when Hydra scans its plugins (hydra_plugins/atlas_pl_launcher, so that any composition of
    conf/config.yaml finds it: the app, tests, a job process) and by atlas_pl.__main__."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name=SCHEMA_NAME, node=AtlasConf, provider="atlas_pl")


def missing_keys(cfg: DictConfig) -> list[str]:
    """Dotted keys of `cfg` left MISSING (???): a user's own option file that leaves out a key."""
    return sorted(str(k) for k in OmegaConf.missing_keys(cfg) if not str(k).startswith("hydra."))


def schema_type(key: str) -> str | None:
    """The declared type of a dotted key, as a user reads it (`fed.rounds` -> `int`, `fed.head_lr` ->
    `float or null`), or None where the schema has no such key; a dict's entries take its value type."""
    kind: Any = AtlasConf
    for part in key.split("."):
        kind = _without_none(kind)
        if isinstance(kind, type) and is_dataclass(kind):
            hints = typing.get_type_hints(kind)
            if part not in hints:
                return None
            kind = hints[part]
        elif typing.get_origin(kind) is dict:
            kind = typing.get_args(kind)[1]
        else:
            return None
    return _describe(kind)


def _without_none(kind: Any) -> Any:
    args = typing.get_args(kind)
    if type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0] if len(rest) == 1 else kind
    return kind


def _describe(kind: Any) -> str:
    """How an error names a type: `int`, `float or null`, `bool (true or false)`, `a list of str, e.g.
    [a,b]`, `a mapping with keys ...`, `any value`."""
    if kind is Any:
        return "any value"
    bare = _without_none(kind)
    suffix = " or null" if bare is not kind else ""
    if isinstance(bare, type) and is_dataclass(bare):
        return f"a mapping with keys {', '.join(typing.get_type_hints(bare))}{suffix}"
    origin, args = typing.get_origin(bare), typing.get_args(bare)
    if origin is list:
        return f"a list of {_describe(args[0])} ([x,y]){suffix}"
    if origin is dict:
        return f"a mapping of names to {_describe(args[1])}{suffix}"
    if bare is bool:
        return f"bool (true or false){suffix}"
    return getattr(bare, "__name__", str(bare)) + suffix
