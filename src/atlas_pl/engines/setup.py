"""Turn settings into the simulated federation: one shared backbone, client data, client models."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import threadpoolctl
import torch

from atlas_pl.data import FederatedData, build_federated_data
from atlas_pl.models.catalog import ModelSpec, resolve_model_spec
from atlas_pl.models.loading import load_base
from atlas_pl.models.split import SharedBackbone, SplitClientModel
from atlas_pl.phases.devices import assign_devices
from atlas_pl.preflight import check_accelerator
from atlas_pl.settings import Settings

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class Federation:
    """Everything a run needs, built once: one backbone, every client's data, provisional models, devices."""

    spec: ModelSpec
    backbone: SharedBackbone
    tokenizer: Any
    data: FederatedData
    models: list[SplitClientModel]
    device: torch.device
    devices: list[str]  # each client's device profile


def seed_everything(seed: int) -> None:
    """Seed every RNG a run touches, so a seed fixes the run on CPU."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def pick_device(accelerator: str) -> torch.device:
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        check_accelerator(accelerator)
        return torch.device("cuda")
    return torch.device("cpu")


def build_client_model(
    settings: Settings, backbone: SharedBackbone, num_labels: int, split: int, ranks: dict[int, int]
) -> SplitClientModel:
    """One client's trainable state on the shared base; its initial values depend only on the seed."""
    return SplitClientModel(
        backbone,
        split,
        ranks,
        num_labels,
        alpha=settings.lora.alpha,
        dropout=settings.lora.dropout,
        seed=settings.seed,
    )


def load_backbone(settings: Settings) -> tuple[ModelSpec, SharedBackbone, Any, torch.device]:
    """The frozen base the settings name, wrapped for the split, on the device the trainer will use."""
    m = settings.model
    spec = resolve_model_spec(m.name)
    device = pick_device(settings.trainer.accelerator)
    base, tokenizer = load_base(
        spec,
        attn_implementation=m.attn_implementation,
        dtype=DTYPES[m.dtype],
        seed=settings.seed,
        cache_dir=settings.cache_dir / "models",
    )
    targets = list(m.lora_targets) if m.lora_targets else None
    backbone = SharedBackbone(spec, base, targets=targets, pooling=m.pooling, head=m.head).to(device)
    return spec, backbone, tokenizer, device


def build_federation(settings: Settings) -> Federation:
    """Load the shared base once, build every client's data and its provisional split model."""
    seed_everything(settings.seed)
    if settings.trainer.num_threads:
        torch.set_num_threads(settings.trainer.num_threads)
        # scipy's own BLAS (Phase 4's eigensolver) does not follow torch's setting
        threadpoolctl.threadpool_limits(settings.trainer.num_threads, user_api="blas")
    spec, backbone, tokenizer, device = load_backbone(settings)
    d = settings.data
    data = build_federated_data(
        tasks=list(settings.tasks),
        clients_per_task=settings.fed.clients_per_task,
        tokenizer=tokenizer,
        model_key=spec.name.replace("/", "_"),
        max_len=d.max_len,
        samples_per_client=d.samples_per_client,
        eval_samples=d.eval_samples,
        partition=d.partition,
        dirichlet_alpha=d.dirichlet_alpha,
        glue_dir=d.glue_dir,
        source=d.source,
        cache_dir=d.cache_dir,
        seed=settings.seed,
        vocab_size=int(getattr(backbone.model.config, "vocab_size", 0)) or None,
        synthetic_train_size=d.synthetic_train_size,
        synthetic_eval_size=d.synthetic_eval_size,
        custom_tasks=settings.custom_tasks,
        datasets_cache=settings.cache_dir / "datasets",
        personal_share=d.personal_share,
    )
    # provisional models (model.split_point, lora.rank): Phase 1 fingerprints them, Phase 2 rebuilds them
    ranks = dict.fromkeys(range(backbone.num_layers), settings.lora.rank)
    models = [
        build_client_model(
            settings, backbone, data.specs[c.task].num_labels, settings.model.split_point, dict(ranks)
        ).to(device)
        for c in data.clients
    ]
    log.info(
        "federation: model=%s (%d blocks), %d clients over tasks %s, device=%s",
        spec.name,
        backbone.num_layers,
        len(models),
        list(settings.tasks),
        device,
    )
    devices = assign_devices(
        len(models), list(settings.devices.mix), seed=settings.seed, rule=settings.devices.assignment
    )
    return Federation(spec, backbone, tokenizer, data, models, device, devices)
