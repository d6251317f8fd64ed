"""One Hydra job: build the federation and run it, writing the job's result files.

Training rounds arrive with the federation loop; for now a job builds the real model and data and
runs one real split forward/backward step per client (the protocol's unit of work), recording the
loss and the exact bytes that crossed the split.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from atlas_pl.data import TokenDataset, collate_trim
from atlas_pl.federation.setup import build_federation
from atlas_pl.models.split import split_step
from atlas_pl.tracking.results import peak_memory, versions, write_json

log = logging.getLogger(__name__)


def tensor_bytes(*tensors: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def run_job(cfg: DictConfig) -> float | None:
    """Run one job; returns the mean loss of the probe step (training rounds come next)."""
    started = time.perf_counter()
    out_dir = Path(str(cfg.paths.output_dir))
    fed = build_federation(cfg)
    build_seconds = time.perf_counter() - started

    clients = {}
    generator = torch.Generator().manual_seed(int(cfg.seed))
    for model, client in zip(fed.models, fed.data.clients):
        loader = torch.utils.data.DataLoader(
            TokenDataset(client.train),
            batch_size=int(cfg.fed.batch_size),
            shuffle=True,
            collate_fn=collate_trim,
            generator=generator,
        )
        batch = {k: v.to(fed.device) for k, v in next(iter(loader)).items()}
        model.zero_grad(set_to_none=True)
        loss, sent, grad = split_step(model, batch)
        grads_ok = all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
        clients[str(client.client_id)] = {
            "task": client.task,
            "train_samples": client.num_samples,
            "split": model.split,
            "ranks": [model.ranks[b] for b in range(fed.backbone.num_layers)],
            "probe_loss": float(loss),
            "upload_bytes": tensor_bytes(sent, batch["attention_mask"], batch["labels"]),
            "download_bytes": tensor_bytes(grad),
            "gradients_finite": bool(grads_ok),
            "trainable_params": sum(p.numel() for p in model.parameters()),
        }
        log.info("client %s (%s): split step loss %.4f", client.client_id, client.task, float(loss))

    mean_loss = sum(c["probe_loss"] for c in clients.values()) / len(clients)
    summary = {
        "status": "probe",
        "config": OmegaConf.to_container(cfg, resolve=True),
        "model": {
            "name": fed.spec.name,
            "family": fed.spec.family,
            "num_layers": fed.backbone.num_layers,
            "base_params": sum(p.numel() for p in fed.backbone.model.parameters()),
        },
        "clients": clients,
        "final": {"mean_probe_loss": mean_loss},
        "totals": {
            "upload_bytes": sum(c["upload_bytes"] for c in clients.values()),
            "download_bytes": sum(c["download_bytes"] for c in clients.values()),
            "build_seconds": build_seconds,
            "seconds": time.perf_counter() - started,
        },
        "peak_memory": peak_memory(),
        "versions": versions(),
    }
    write_json(out_dir / "summary.json", summary)
    log.info("wrote %s (mean probe loss %.4f)", out_dir / "summary.json", mean_loss)
    return mean_loss
