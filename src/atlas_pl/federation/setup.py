"""Turn a validated config into the simulated federation: shared backbone, client data, client models."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from atlas_pl.data import FederatedData, build_federated_data
from atlas_pl.models.catalog import ModelSpec, resolve_model_spec
from atlas_pl.models.loading import load_base
from atlas_pl.models.split import SharedBackbone, SplitClientModel
from atlas_pl.phases.devices import assign_devices

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class Federation:
    """Everything a run needs, built once: one backbone, every client's data and trainable state."""

    spec: ModelSpec
    backbone: SharedBackbone
    tokenizer: Any
    data: FederatedData
    models: list[SplitClientModel]
    device: torch.device
    meta: dict[str, Any] = field(default_factory=dict)


def seed_everything(seed: int) -> None:
    """Seed every RNG a run touches, so a seed fixes the run on CPU."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def pick_device(accelerator: str) -> torch.device:
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("trainer.accelerator=gpu but no CUDA device is visible; use cpu or auto")
        return torch.device("cuda")
    return torch.device("cpu")


def uniform_ranks(num_layers: int, rank: int) -> dict[int, int]:
    return {block: rank for block in range(num_layers)}


def build_client_model(
    cfg: DictConfig, backbone: SharedBackbone, num_labels: int, split: int, ranks: dict[int, int]
) -> SplitClientModel:
    """One client's trainable state on the shared base; its initial values depend only on the seed."""
    return SplitClientModel(
        backbone,
        split,
        ranks,
        num_labels,
        alpha=float(cfg.lora.alpha),
        dropout=float(cfg.lora.dropout),
        seed=int(cfg.seed),
    )


def load_backbone(cfg: DictConfig) -> tuple[ModelSpec, SharedBackbone, Any, torch.device]:
    """The frozen base the config names, wrapped for the split, on the device the trainer will use."""
    spec = resolve_model_spec(str(cfg.model.name))
    device = pick_device(str(cfg.trainer.accelerator))
    base, tokenizer = load_base(
        spec,
        attn_implementation=str(cfg.model.attn_implementation),
        dtype=DTYPES[str(cfg.model.dtype)],
        seed=int(cfg.seed),
        cache_dir=Path(str(cfg.paths.cache_dir)) / "models",
    )
    targets = OmegaConf.to_container(cfg.model.lora_targets) if cfg.model.lora_targets else None
    backbone = SharedBackbone(
        spec, base, targets=targets, pooling=str(cfg.model.pooling), head=str(cfg.model.get("head", "linear"))
    ).to(device)
    return spec, backbone, tokenizer, device


def build_federation(cfg: DictConfig) -> Federation:
    """Load the shared base once, build every client's data and its split model."""
    seed_everything(int(cfg.seed))
    if cfg.trainer.get("num_threads"):
        torch.set_num_threads(int(cfg.trainer.num_threads))
    spec, backbone, tokenizer, device = load_backbone(cfg)
    base = backbone.model
    tasks = list(cfg.task.names)
    data = build_federated_data(
        tasks=tasks,
        clients_per_task=int(cfg.fed.clients_per_task),
        tokenizer=tokenizer,
        model_key=spec.name.replace("/", "_"),
        max_len=int(cfg.data.max_len),
        samples_per_client=cfg.data.samples_per_client,
        eval_samples=cfg.data.eval_samples,
        partition=str(cfg.data.partition),
        dirichlet_alpha=float(cfg.data.dirichlet_alpha),
        glue_dir=str(cfg.data.glue_dir) if cfg.data.glue_dir else None,
        source=str(cfg.data.source),
        cache_dir=Path(str(cfg.data.cache_dir)),
        seed=int(cfg.seed),
        vocab_size=int(getattr(base.config, "vocab_size", 0)) or None,
        synthetic_train_size=int(cfg.data.synthetic_train_size),
        synthetic_eval_size=int(cfg.data.synthetic_eval_size),
    )
    # provisional models (model.split_point, lora.rank): Phase 1 fingerprints them, Phase 2 rebuilds them
    models = [
        build_client_model(
            cfg,
            backbone,
            data.specs[client.task].num_labels,
            int(cfg.model.split_point),
            uniform_ranks(backbone.num_layers, int(cfg.lora.rank)),
        ).to(device)
        for client in data.clients
    ]
    log.info(
        "federation: model=%s (%d blocks), %d clients over tasks %s, device=%s",
        spec.name,
        backbone.num_layers,
        len(models),
        tasks,
        device,
    )
    devices = assign_devices(
        len(models), list(cfg.devices.mix), seed=int(cfg.seed), rule=str(cfg.devices.assignment)
    )
    return Federation(spec, backbone, tokenizer, data, models, device, meta={"devices": devices})
