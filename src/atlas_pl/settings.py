"""Typed settings, built once from the composed Hydra config; DictConfig stops here (DESIGN.md §1).

`build_settings` runs the config validation first (every bad value named with its valid values, before
anything loads) and then copies the config into frozen dataclasses, so the rest of the package reads
`settings.fed.lr` as a float instead of re-parsing `cfg.fed.get("lr")` at forty call sites. The resolved
config is kept as plain JSON (`Settings.config`) for the files a job writes and the resume checks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from atlas_pl.data.custom import CustomTask, custom_task_from_dict, with_absolute_paths
from atlas_pl.data.tasks import register_custom_tasks
from atlas_pl.hardware import resolve_attention, resolve_dtype
from atlas_pl.phases.availability import parse_deadline


@dataclass(frozen=True)
class ModelSettings:
    name: str
    split_point: int
    pooling: str | None
    head: str
    lora_targets: tuple[str, ...] | None
    attn_implementation: str
    dtype: str


@dataclass(frozen=True)
class LoraSettings:
    rank: int
    alpha: float
    dropout: float


@dataclass(frozen=True)
class DataSettings:
    glue_dir: str | None
    source: str
    samples_per_client: int | None
    eval_samples: int | None
    partition: str
    dirichlet_alpha: float
    personal_share: float
    max_len: int
    cache_dir: Path
    synthetic_train_size: int
    synthetic_eval_size: int


@dataclass(frozen=True)
class FedSettings:
    rounds: int
    local_epochs: int
    clients_per_task: int
    eta: float
    batch_size: int
    lr: float
    head_lr: float  # fed.head_lr, or fed.lr when unset
    weight_decay: float
    balanced_tasks: frozenset[str]
    seed_base: int = 0  # the job's seed, from which every loader's seed derives
    eval_every: int = 1

    def evaluates(self, round_index: int) -> bool:
        """Whether clients are scored after this round: every `eval_every`-th round and always the last
        (the one summary.json, the report and sweeps read)."""
        return round_index % self.eval_every == 0 or round_index == self.rounds

    @property
    def eval_batch_size(self) -> int:
        """Most sequences in one evaluation batch; its token budget (parties/evaluation.py) binds first."""
        return max(1024, self.batch_size)

    def loader_seed(self, index: int) -> int:
        """Seed of the shuffled training loader of client (or task) `index`: one rule for every pipeline."""
        return self.seed_base * 7919 + index


@dataclass(frozen=True)
class DPSettings:
    enabled: bool
    clip: float
    noise_multiplier: float
    delta: float

    def as_json(self) -> dict[str, Any]:
        return {
            "enabled": self.enabled,
            "clip": self.clip,
            "noise_multiplier": self.noise_multiplier,
            "delta": self.delta,
        }


@dataclass(frozen=True)
class FingerprintSettings:
    batches: int
    layers: int
    sketch_dim: int
    dim: int
    compression: str
    class_balanced: bool
    recluster_every: int
    dp: DPSettings | None


@dataclass(frozen=True)
class ClusteringSettings:
    k_min: int
    k_max: int
    singleton_penalty: float
    weights: dict[str, float]
    by_task: bool = False  # the known tasks as clusters: an oracle Phase 1 (ablation of discovery)


@dataclass(frozen=True)
class GraphSettings:
    alpha: float | None
    ensure_connectivity: bool
    knn: int


@dataclass(frozen=True)
class AllocationSettings:
    mode: str
    rank_candidates: tuple[int, ...]
    uniform_rank: int | None
    split: int | None  # None = auto (per device)
    drop_infeasible: bool
    max_split: int | None = None  # None: L - 1, or L - 2 under topology=p2p
    host_reserve: float = 0.0  # share of each budget left for hosted segments (topology=p2p)


@dataclass(frozen=True)
class EngineSettings:
    """Where the parties run (DESIGN.md §12): `inprocess`, or `flower` (ClientApps on Ray or SuperNodes)."""

    name: str = "inprocess"
    client_cpus: float = 1.0
    client_gpus: float = 0.0
    reply_timeout: float = 3600.0

    @property
    def flower(self) -> bool:
        return self.name == "flower"


@dataclass(frozen=True)
class TopologySettings:
    """Where server halves run: `server` (one host, also the coordinator) or `p2p` (routes of peers)."""

    name: str = "server"
    server_fallback: bool = False
    pairing: str = "cluster"  # cluster | random (pairing group: the ablation of who hosts whom)
    server_flops: float | None = None  # the server's profile (conf/topology): times its work
    server_bandwidth: float | None = None

    @property
    def p2p(self) -> bool:
        return self.name == "p2p"


@dataclass(frozen=True)
class FaultSettings:
    """Absences, stragglers and the round deadline (conf/faults; phases/availability.py)."""

    drop: float = 0.0  # per client and round: absent with this probability
    straggle: float = 0.0  # per present device and round: slowed with this probability
    slowdown: tuple[float, float] = (2.0, 8.0)  # a straggler's factor, log-uniform on [low, high]
    deadline_seconds: float | None = None  # faults.deadline as a number
    deadline_multiple: float | None = None  # faults.deadline as "<m>x": m times the median client's path
    late: str = "leave_out"  # leave_out | partial

    @property
    def enabled(self) -> bool:
        return self.drop > 0 or self.straggle > 0 or self.has_deadline

    @property
    def has_deadline(self) -> bool:
        return self.deadline_seconds is not None or self.deadline_multiple is not None


@dataclass(frozen=True)
class DeviceProfile:
    """One device type: `memory_gb` is Phase 2's budget; `flops` (sustained FLOP/s) and `bandwidth`
    (bytes/s of its link) price the work and traffic of peer-to-peer pairing (conf/devices says why
    each figure is what it is)."""

    name: str
    memory_gb: float
    flops: float | None = None
    bandwidth: float | None = None


@dataclass(frozen=True)
class DevicesSettings:
    name: str
    mix: tuple[str, ...]
    assignment: str
    scale: float
    profiles: dict[str, DeviceProfile]


@dataclass(frozen=True)
class AblationSettings:
    """What one ablation does (conf/ablation): the pipeline, clustering, ranks, aggregation, heads."""

    name: str
    pipeline: str  # split | centralized
    clustering: bool
    ranks: str  # allocated | uniform
    importance: str  # cluster | global | client
    aggregation: str  # none | stack | fedavg | zeropad
    personalization: str  # none | laplacian
    head_aggregation: str  # local | group
    adapters: str = "shared"  # shared | per_task (the centralized pipeline)

    @property
    def mode(self) -> str:
        """What the coordinator does between rounds: laplacian, stack, fedavg, zeropad or none."""
        return "laplacian" if self.personalization == "laplacian" else self.aggregation

    @property
    def centralized(self) -> bool:
        return self.pipeline == "centralized"


@dataclass(frozen=True)
class TrainerSettings:
    accelerator: str
    devices: int
    precision: str
    deterministic: bool
    num_threads: int
    batched_clients: bool = False  # a round's clients in one batched step (engines/batched.py)


@dataclass(frozen=True)
class LoggerSettings:
    name: str  # wandb | csv | none
    project: str = "atlas"
    entity: str | None = None
    group: str | None = None
    mode: str | None = None
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class CheckpointSettings:
    enabled: bool
    keep: int


@dataclass(frozen=True)
class DefenseSettings:
    """Defenses of what leaves a client during training (DESIGN.md §11; the sketch's DP is fingerprint.dp)."""

    activation_noise: float = 0.0  # Gaussian noise on every h sent, a multiple of rms(h); 0 = off


@dataclass(frozen=True)
class Settings:
    """Everything a job reads, typed; `config` is the resolved config as JSON (written, compared)."""

    seed: int
    resume: bool
    experiment_name: str
    model: ModelSettings
    lora: LoraSettings
    tasks: tuple[str, ...]
    data: DataSettings
    fed: FedSettings
    fingerprint: FingerprintSettings
    clustering: ClusteringSettings
    graph: GraphSettings
    allocation: AllocationSettings
    topology: TopologySettings
    faults: FaultSettings
    devices: DevicesSettings
    ablation: AblationSettings
    trainer: TrainerSettings
    logger: LoggerSettings
    checkpoint: CheckpointSettings
    output_dir: Path
    cache_dir: Path
    privacy: DefenseSettings = DefenseSettings()
    custom_tasks: dict[str, CustomTask] = field(default_factory=dict)  # task.custom, for tasks in `tasks`
    engine: EngineSettings = EngineSettings()
    config: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _model(c: dict[str, Any], accelerator: str) -> ModelSettings:
    """Model settings with `auto` dtype/attention resolved for this machine (atlas_pl.hardware)."""
    targets = c.get("lora_targets")
    dtype = resolve_dtype(str(c["dtype"]), accelerator)
    return ModelSettings(
        name=str(c["name"]),
        split_point=int(c["split_point"]),
        pooling=None if c.get("pooling") is None else str(c["pooling"]),
        head=str(c.get("head", "linear")),
        lora_targets=tuple(str(t) for t in targets) if targets else None,
        attn_implementation=resolve_attention(str(c["attn_implementation"]), dtype, accelerator),
        dtype=dtype,
    )


def _data(c: dict[str, Any]) -> DataSettings:
    return DataSettings(
        glue_dir=str(c["glue_dir"]) if c.get("glue_dir") else None,
        source=str(c["source"]),
        samples_per_client=_opt_int(c.get("samples_per_client")),
        eval_samples=_opt_int(c.get("eval_samples")),
        partition=str(c["partition"]),
        dirichlet_alpha=float(c["dirichlet_alpha"]),
        personal_share=float(c["personal_share"]),
        max_len=int(c["max_len"]),
        cache_dir=Path(str(c["cache_dir"])),
        synthetic_train_size=int(c["synthetic_train_size"]),
        synthetic_eval_size=int(c["synthetic_eval_size"]),
    )


def _fed(c: dict[str, Any], seed: int) -> FedSettings:
    lr = float(c["lr"])
    return FedSettings(
        rounds=int(c["rounds"]),
        local_epochs=int(c["local_epochs"]),
        clients_per_task=int(c["clients_per_task"]),
        eta=float(c["eta"]),
        batch_size=int(c["batch_size"]),
        lr=lr,
        head_lr=float(c.get("head_lr") or lr),
        weight_decay=float(c.get("weight_decay") or 0.0),
        balanced_tasks=frozenset(str(t) for t in c.get("balanced_tasks") or []),
        seed_base=seed,
        eval_every=int(c.get("eval_every") or 1),
    )


def _fingerprint(c: dict[str, Any]) -> FingerprintSettings:
    dp = c.get("dp")
    return FingerprintSettings(
        batches=int(c["batches"]),
        layers=int(c["layers"]),
        sketch_dim=int(c["sketch_dim"]),
        dim=int(c["dim"]),
        compression=str(c["compression"]),
        class_balanced=bool(c.get("class_balanced", True)),
        recluster_every=int(c.get("recluster_every") or 0),
        dp=None
        if not dp
        else DPSettings(
            enabled=bool(dp.get("enabled", False)),
            clip=float(dp.get("clip", 1.0)),
            noise_multiplier=float(dp.get("noise_multiplier", 1.0)),
            delta=float(dp.get("delta", 1e-5)),
        ),
    )


def _allocation(c: dict[str, Any], p2p: bool) -> AllocationSettings:
    split = c.get("split", "auto")
    reserve = c.get("host_reserve")
    return AllocationSettings(
        mode=str(c["mode"]),
        rank_candidates=tuple(int(r) for r in c["rank_candidates"]),
        uniform_rank=_opt_int(c.get("uniform_rank")),
        split=None if split in (None, "auto") else int(split),
        drop_infeasible=bool(c.get("drop_infeasible", False)),
        max_split=_opt_int(c.get("max_split")),
        host_reserve=float(reserve) if reserve is not None else (0.5 if p2p else 0.0),
    )


def _topology(c: dict[str, Any] | None, pairing: dict[str, Any] | None) -> TopologySettings:
    c = c or {}
    server = c.get("server") or {}
    return TopologySettings(
        name=str(c.get("name", "server")),
        server_fallback=bool(c.get("server_fallback", False)),
        pairing=str((pairing or {}).get("name", "cluster")),
        server_flops=_opt_float(server.get("flops")),
        server_bandwidth=_opt_float(server.get("bandwidth")),
    )


def _engine(c: dict[str, Any] | None) -> EngineSettings:
    c = c or {}
    return EngineSettings(
        name=str(c.get("name", "inprocess")),
        client_cpus=float(c.get("client_cpus", 1.0)),
        client_gpus=float(c.get("client_gpus", 0.0)),
        reply_timeout=float(c.get("reply_timeout", 3600.0)),
    )


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _faults(c: dict[str, Any] | None) -> FaultSettings:
    c = c or {}
    seconds, multiple = parse_deadline(c.get("deadline"))
    low, high = c.get("slowdown") or (2.0, 8.0)
    return FaultSettings(
        drop=float(c.get("drop", 0.0)),
        straggle=float(c.get("straggle", 0.0)),
        slowdown=(float(low), float(high)),
        deadline_seconds=seconds,
        deadline_multiple=multiple,
        late=str(c.get("late", "leave_out")),
    )


def _devices(c: dict[str, Any]) -> DevicesSettings:
    profiles = {
        str(name): DeviceProfile(
            name=str(name),
            memory_gb=float(p["memory_gb"]),
            flops=None if p.get("flops") is None else float(p["flops"]),
            bandwidth=None if p.get("bandwidth") is None else float(p["bandwidth"]),
        )
        for name, p in c["profiles"].items()
    }
    return DevicesSettings(
        name=str(c.get("name", "")),
        mix=tuple(str(d) for d in c["mix"]),
        assignment=str(c.get("assignment", "seeded")),
        scale=float(c.get("scale", 1.0)),
        profiles=profiles,
    )


def _ablation(c: dict[str, Any]) -> AblationSettings:
    return AblationSettings(
        name=str(c["name"]),
        pipeline=str(c.get("pipeline", "split")),
        clustering=bool(c.get("clustering", False)),
        ranks=str(c.get("ranks", "allocated")),
        importance=str(c.get("importance", "global")),
        aggregation=str(c.get("aggregation", "none")),
        personalization=str(c.get("personalization", "none")),
        head_aggregation=str(c.get("head_aggregation", "local")),
        adapters=str(c.get("adapters", "shared")),
    )


def _logger(c: dict[str, Any]) -> LoggerSettings:
    return LoggerSettings(
        name=str(c["name"]),
        project=str(c.get("project") or "atlas"),
        entity=c.get("entity"),
        group=c.get("group"),
        mode=c.get("mode"),
        tags=tuple(str(t) for t in c.get("tags") or ()),
    )


def _custom_tasks(c: dict[str, Any]) -> dict[str, CustomTask]:
    """The run's config-defined tasks, registered by name: heads, metrics and reports look tasks up by
    name, so a custom task must be known from here on, like a GLUE one."""
    custom = c.get("custom") or {}
    tasks = {str(n): custom_task_from_dict(str(n), custom[n]) for n in c["names"] if n in custom}
    register_custom_tasks(t.spec for t in tasks.values())
    return tasks


def _absolute_custom_paths(c: dict[str, Any]) -> dict[str, Any]:
    """The config with task.custom's relative file paths made absolute (from the working directory), as
    `Settings.config` records them: job_config.json and the resume checks then name the files themselves,
    so a resume launched from another directory cannot silently train on other files."""
    custom = (c.get("task") or {}).get("custom")
    if not isinstance(custom, dict):
        return c
    custom = {n: with_absolute_paths(d) if isinstance(d, dict) else d for n, d in custom.items()}
    return {**c, "task": {**c["task"], "custom": custom}}


def settings_from_dict(c: dict[str, Any]) -> Settings:
    """Settings from a resolved config dict (what `job_config.json` holds); no validation."""
    c = _absolute_custom_paths(c)
    seed = int(c["seed"])
    graph = c.get("graph") or {}
    topology = _topology(c.get("topology"), c.get("pairing"))
    trainer = c["trainer"]
    checkpoint = c.get("checkpoint") or {}
    clustering = c["clustering"]
    return Settings(
        seed=seed,
        resume=bool(c.get("resume", False)),
        experiment_name=str(c.get("experiment_name", "default")),
        model=_model(c["model"], str(trainer["accelerator"])),
        lora=LoraSettings(
            rank=int(c["lora"]["rank"]), alpha=float(c["lora"]["alpha"]), dropout=float(c["lora"]["dropout"])
        ),
        tasks=tuple(str(t) for t in c["task"]["names"]),
        data=_data(c["data"]),
        fed=_fed(c["fed"], seed),
        fingerprint=_fingerprint(c["fingerprint"]),
        clustering=ClusteringSettings(
            k_min=int(clustering["k_min"]),
            k_max=int(clustering["k_max"]),
            singleton_penalty=float(clustering["singleton_penalty"]),
            weights={str(k): float(v) for k, v in clustering["weights"].items()},
            by_task=bool(clustering.get("by_task", False)),
        ),
        graph=GraphSettings(
            alpha=None if graph.get("alpha") is None else float(graph["alpha"]),
            ensure_connectivity=bool(graph.get("ensure_connectivity", True)),
            knn=int(graph.get("knn", 2)),
        ),
        allocation=_allocation(c["allocation"], topology.p2p),
        topology=topology,
        faults=_faults(c.get("faults")),
        devices=_devices(c["devices"]),
        ablation=_ablation(c["ablation"]),
        trainer=TrainerSettings(
            accelerator=str(trainer["accelerator"]),
            devices=int(trainer.get("devices", 1)),
            precision=str(trainer["precision"]),
            deterministic=bool(trainer.get("deterministic", True)),
            num_threads=int(trainer.get("num_threads") or 0),
            batched_clients=bool(trainer.get("batched_clients", False)),
        ),
        logger=_logger(c["logger"]),
        checkpoint=CheckpointSettings(
            enabled=bool(checkpoint.get("enabled", True)), keep=int(checkpoint.get("keep", 2))
        ),
        output_dir=Path(str(c["paths"]["output_dir"])),
        cache_dir=Path(str(c["paths"]["cache_dir"])),
        privacy=DefenseSettings(
            activation_noise=float((c.get("privacy") or {}).get("activation_noise") or 0.0)
        ),
        custom_tasks=_custom_tasks(c["task"]),
        engine=_engine(c.get("engine")),
        config=c,
    )


def build_settings(cfg: DictConfig) -> Settings:
    """Validate `cfg` (raises config_validation.ConfigError naming every bad value), type it, and check
    it against the model's structure (raises ConfigError or InfeasibleClientError)."""
    from atlas_pl.config_validation import validate_config
    from atlas_pl.preflight import preflight

    validate_config(cfg)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(resolved, dict)
    settings = settings_from_dict({str(k): v for k, v in resolved.items()})
    preflight(settings)  # what the model's structure rules out (config.json only, no weights)
    return settings
