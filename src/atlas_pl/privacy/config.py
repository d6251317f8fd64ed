"""Typed settings of `python -m atlas_pl.privacy`, checked before torch or a model is loaded.

Every value that cannot work (a split outside 1..L-1, an attack or knowledge level that does not exist,
a job directory without adapters or trained on another model) is refused here with what is wrong and
what would be valid, so a bad request costs a second, not a model load.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from atlas_pl.data.tasks import is_synthetic, valid_task_names
from atlas_pl.data.tasks import task_spec as _task_spec
from atlas_pl.models.catalog import resolve_model_spec
from atlas_pl.privacy.errors import PrivacyConfigError
from atlas_pl.privacy.jobs import TrainedClient, trained_client
from atlas_pl.settings import FingerprintSettings, ModelSettings, _fingerprint, _model

ATTACKS = ("vmi", "rmi", "inverter", "bisr")
KNOWLEDGE = ("white_box", "semi_white_box")


@dataclass(frozen=True)
class VMIConfig:
    steps: int = 100
    lr: float = 0.01
    loss: str = "cosine"  # cosine | mse


@dataclass(frozen=True)
class RMIConfig:
    steps: int = 500
    lr: float = 0.005
    temperature: float = 0.05
    loss: str = "cosine"


@dataclass(frozen=True)
class InverterConfig:
    epochs: int = 20
    lr: float = 1e-3
    weight_decay: float = 1e-5
    width: int = 256
    batch_size: int = 32


@dataclass(frozen=True)
class AttackConfig:
    names: tuple[str, ...] = ATTACKS
    chunk: int = 32  # sentences optimised together
    vmi: VMIConfig = VMIConfig()
    rmi: RMIConfig = RMIConfig()
    inverter: InverterConfig = InverterConfig()
    bisr: VMIConfig = VMIConfig()


@dataclass(frozen=True)
class SketchAttackConfig:
    shadows: int = 60  # clients the attacker simulates on public data
    victims: int = 30  # real clients attacked
    samples_per_client: int = 64
    dirichlet_alpha: float = 0.5  # label skew of both populations (data.partition=dirichlet)
    batch_size: int = 16


@dataclass(frozen=True)
class PrivacySettings:
    model: ModelSettings
    num_layers: int
    task: str  # the victim's task
    samples: int
    splits: tuple[int, ...]
    knowledge: tuple[str, ...]
    noises: tuple[float, ...]
    victim: TrainedClient | None  # None: the pretrained half is the victim
    aux_task: str
    aux_samples: int
    attack: AttackConfig
    tradeoff: tuple[TrainedClient, ...]
    beta: float
    sketch: SketchAttackConfig | None
    fingerprint: FingerprintSettings
    glue_dir: str | None
    source: str
    max_len: int
    seed: int
    examples: int
    out_dir: Path
    config: dict[str, Any] = field(default_factory=dict)


def _fail(key: str, value: Any, valid: str) -> PrivacyConfigError:
    return PrivacyConfigError(f"{key}={value!r}; valid: {valid}")


def _splits(value: Any, layers: int) -> tuple[int, ...]:
    valid = (
        f"integers in 1..{layers - 1} (the model has {layers} blocks), a list of them, 'all', "
        "or [] (no inversion attacks: only the sketch attack and the trade-off)"
    )
    if value == "all":
        return tuple(range(1, layers))
    items = value if isinstance(value, list | tuple) else [value]
    for s in items:
        if isinstance(s, bool) or not isinstance(s, int) or not 1 <= s <= layers - 1:
            raise _fail("target.splits", value, valid)
    return tuple(int(s) for s in items)


def _names(key: str, value: Any, known: tuple[str, ...]) -> tuple[str, ...]:
    items = value if isinstance(value, list | tuple) else [value]
    unknown = [v for v in items if v not in known]
    if unknown or not items:
        raise _fail(key, value, f"a non-empty list of {', '.join(known)}")
    return tuple(str(v) for v in items)


def _noises(value: Any) -> tuple[float, ...]:
    items = value if isinstance(value, list | tuple) else [value]
    for v in items:
        if isinstance(v, bool) or not isinstance(v, int | float) or v < 0:
            raise _fail("target.activation_noise", value, "numbers >= 0 (multiples of rms(h))")
    return tuple(float(v) for v in items)


def _task(key: str, name: Any) -> str:
    try:
        _task_spec(str(name))
    except Exception as err:  # noqa: BLE001  (the task registry's own error names the valid tasks)
        raise _fail(key, name, valid_task_names()) from err
    return str(name)


def _positive(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _fail(key, value, "an integer >= 1")
    return int(value)


def _attack(c: dict[str, Any]) -> AttackConfig:
    def part(name: str, cls: type) -> Any:
        block = dict(c.get(name) or {})
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(block) - set(known))
        if unknown:
            raise _fail(f"attack.{name}.{unknown[0]}", block[unknown[0]], ", ".join(known))
        return cls(**block)

    cfg = AttackConfig(
        names=_names("attack.names", c.get("names", list(ATTACKS)), ATTACKS),
        chunk=_positive("attack.chunk", c.get("chunk", 32)),
        vmi=part("vmi", VMIConfig),
        rmi=part("rmi", RMIConfig),
        inverter=part("inverter", InverterConfig),
        bisr=part("bisr", VMIConfig),
    )
    for name, loss in (("vmi", cfg.vmi.loss), ("rmi", cfg.rmi.loss), ("bisr", cfg.bisr.loss)):
        if loss not in ("cosine", "mse"):
            raise _fail(
                f"attack.{name}.loss",
                loss,
                "cosine, mse (cross-entropy over hidden states is not a distance)",
            )
    if cfg.rmi.temperature <= 0:
        raise _fail("attack.rmi.temperature", cfg.rmi.temperature, "a number > 0")
    return cfg


def _trained(key: str, job_dir: Any, client: int, model: str) -> TrainedClient:
    found = trained_client(job_dir, client)
    if found.model != model:
        raise PrivacyConfigError(
            f"{key}={str(job_dir)!r} was trained on model {found.model!r}, but model.name={model!r}; "
            f"run with model={found.model}"
        )
    return found


def _sketch(c: dict[str, Any] | None) -> SketchAttackConfig | None:
    if not c or not c.get("enabled", False):
        return None
    block = {k: v for k, v in c.items() if k != "enabled"}
    known = [f.name for f in fields(SketchAttackConfig)]
    unknown = sorted(set(block) - set(known))
    if unknown:
        raise _fail(f"sketch.{unknown[0]}", block[unknown[0]], ", ".join(known))
    return SketchAttackConfig(**block)


def _check_tradeoff(jobs: tuple[TrainedClient, ...]) -> None:
    """Trade-off points differ in the noise only: same task and split, and each with its final metric."""
    for t in jobs:
        if t.primary is None:
            raise _fail(
                "tradeoff.jobs", str(t.job_dir), "finished jobs: this one has no final metric in summary.json"
            )
    if len({(t.task, t.split) for t in jobs}) > 1:
        found = sorted({(t.task, t.split) for t in jobs})
        raise _fail(
            "tradeoff.jobs",
            [str(t.job_dir) for t in jobs],
            f"jobs whose client has the same task and split (found {found}; "
            "train them with allocation.split=<s>)",
        )


def privacy_settings(c: dict[str, Any]) -> PrivacySettings:
    """Typed, checked settings from the resolved config (a plain dict)."""
    model = _model(c["model"], "cpu")
    layers = resolve_model_spec(model.name).num_layers
    target, aux, data = c["target"], c["auxiliary"], c["data"]
    client = int(target.get("client", 0))
    victim = (
        None
        if not target.get("job_dir")
        else _trained("target.job_dir", target["job_dir"], client, model.name)
    )
    task = victim.task if victim is not None else _task("task.names", c["task"]["names"][0])
    aux_task = _task("auxiliary.task", aux["task"])
    if aux_task == task and not is_synthetic(task):
        raise _fail(
            "auxiliary.task",
            aux_task,
            f"another task than the victim's ({task}): public text, not the victim's",
        )
    tradeoff = tuple(
        _trained("tradeoff.jobs", job, client, model.name)
        for job in (c.get("tradeoff") or {}).get("jobs") or []
    )
    _check_tradeoff(tradeoff)
    beta = float((c.get("tradeoff") or {}).get("beta", 0.5))
    if not 0.0 <= beta <= 1.0:
        raise _fail("tradeoff.beta", beta, "a number in 0..1 (the weight of the utility gap in DCS)")
    if tradeoff and len({t.activation_noise for t in tradeoff}) != len(tradeoff):
        raise _fail(
            "tradeoff.jobs", [str(t.job_dir) for t in tradeoff], "jobs with distinct privacy.activation_noise"
        )
    if tradeoff and 0.0 not in {t.activation_noise for t in tradeoff}:
        raise _fail(
            "tradeoff.jobs", [str(t.job_dir) for t in tradeoff], "including one undefended job (MP* of DCS)"
        )
    return PrivacySettings(
        model=model,
        num_layers=layers,
        task=task,
        samples=_positive("target.samples", target.get("samples", 100)),
        splits=_splits(target.get("splits", "all"), layers),
        knowledge=_names("target.knowledge", target.get("knowledge", ["white_box"]), KNOWLEDGE),
        noises=_noises(
            target["activation_noise"]
            if target.get("activation_noise") is not None
            else [victim.activation_noise if victim is not None else 0.0]
        ),
        victim=victim,
        aux_task=aux_task,
        aux_samples=_positive("auxiliary.samples", aux.get("samples", 1000)),
        attack=_attack(c.get("attack") or {}),
        tradeoff=tradeoff,
        beta=beta,
        sketch=_sketch(c.get("sketch")),
        fingerprint=_fingerprint(c["fingerprint"]),
        glue_dir=str(data["glue_dir"]) if data.get("glue_dir") else None,
        source=str(data.get("source", "auto")),
        max_len=_positive("data.max_len", data.get("max_len", 64)),
        seed=int(c.get("seed", 0)),
        examples=int(c.get("examples", 5)),
        out_dir=Path(c["out_dir"]),
        config=c,
    )
