"""A job directory written in-process: tiny adapters with non-zero factors and per-block ranks.

A real job takes seconds; the export only reads job_config.json and the newest checkpoint, so the
tests write those the way a job does (save_checkpoint, module_tensors) around models they keep, to
compare the exported adapters' logits with.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from atlas_pl.models.catalog import resolve_model_spec
from atlas_pl.models.loading import load_base
from atlas_pl.models.split import SharedBackbone, SplitClientModel
from atlas_pl.tracking.checkpoint import module_tensors, save_checkpoint


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """The models here are a few hundred kilobytes: a second intra-op thread only adds synchronisation,
    which costs seconds when the cores are busy with other work."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@dataclass
class FakeJob:
    dir: Path
    models: dict[str, SplitClientModel]  # the atlas_pl models the checkpoint holds, by client id
    vocab_size: int


def _backbone(model: str, pooling: str | None, head: str, targets: Sequence[str] | None, seed: int):
    spec = resolve_model_spec(model)
    base, _ = load_base(spec, seed=seed)
    backbone = SharedBackbone(
        spec, base, targets=list(targets) if targets else None, pooling=pooling, head=head
    )
    return backbone, int(base.config.vocab_size)


def _randomized(model: SplitClientModel, gen: torch.Generator) -> SplitClientModel:
    with torch.no_grad():
        for p in model.parameters():  # B != 0: the adapters change the function
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return model.eval()


def _config(model: str, pooling: str | None, head: str, targets, alpha: float, seed: int, ablation: str):
    return {
        "seed": seed,
        "model": {"name": model, "pooling": pooling, "head": head, "lora_targets": list(targets or [])},
        "lora": {"rank": 8, "alpha": alpha, "dropout": 0.0},
        "ablation": {"name": ablation},
        "fed": {"eta": 0.5},
        "paths": {},
    }


def _save(root: Path, config: dict, record: dict, models: dict[str, SplitClientModel]) -> None:
    """job_config.json and checkpoint round 2 with `record` and every model's trainable tensors."""
    tensors: dict[str, torch.Tensor] = {}
    for name, m in models.items():
        tensors.update(module_tensors(f"model/{name}", m))
    root.mkdir(parents=True, exist_ok=True)
    (root / "job_config.json").write_text(json.dumps(config))
    save_checkpoint(
        root / "checkpoints", 2, {"records": [{"round": 2, "evaluated": True, **record}]}, tensors
    )


def write_job(
    root: Path,
    model: str = "tiny_bert",
    *,
    clients: Sequence[tuple[int, Sequence[int], int]] = ((1, (2, 8, 4, 2), 2), (3, (16, 2, 4, 8), 3)),
    pooling: str | None = None,
    head: str = "linear",
    targets: Sequence[str] | None = None,
    alpha: float = 16.0,
    seed: int = 0,
) -> FakeJob:
    """A job dir whose checkpoint holds one client per (split, per-block ranks, labels) in `clients`."""
    backbone, vocab = _backbone(model, pooling, head, targets, seed)
    gen = torch.Generator().manual_seed(7)
    models = {
        str(k): _randomized(
            SplitClientModel(backbone, split, dict(enumerate(ranks)), labels, alpha=alpha, seed=seed), gen
        )
        for k, (split, ranks, labels) in enumerate(clients)
    }
    entry = {"task": "synthetic1", "cluster": 1, "device": "cpu_2gb", "accuracy": 0.75, "primary": 0.75}
    config = _config(model, pooling, head, targets, alpha, seed, "atlas")
    _save(root, config, {"clients": {k: dict(entry) for k in models}}, models)
    return FakeJob(root, models, vocab)


def write_centralized_job(root: Path, tasks: dict[str, int], *, split: int = 2, rank: int = 4) -> FakeJob:
    """A centralized job (ablation=centralized) as engines/centralized.py checkpoints one: a model per task
    under `model/<task>/`, all sharing one adapter, each with its own head; records per client and per
    task, with the clients' ids, not the tasks, as the records' client keys."""
    backbone, vocab = _backbone("tiny_bert", "mean", "linear", None, 0)
    gen = torch.Generator().manual_seed(7)
    ranks = dict.fromkeys(range(backbone.num_layers), rank)
    models = {t: _randomized(SplitClientModel(backbone, split, ranks, n), gen) for t, n in tasks.items()}
    first = next(iter(models.values()))
    for (
        m
    ) in models.values():  # one set of LoRA factors, one head per task (engines/centralized.share_adapters)
        m.client.adapter, m.server.adapter = first.client.adapter, first.server.adapter
    clients = {
        str(k): {"task": t, "cluster": 0, "accuracy": 0.5, "primary": 0.5} for k, t in enumerate(tasks)
    }
    per_task = {
        t: {"accuracy": 0.25 + k / 2, "primary": 0.25 + k / 2, "worst_primary": 0.1}
        for k, t in enumerate(tasks)
    }
    config = _config("tiny_bert", "mean", "linear", None, 16.0, 0, "centralized")
    _save(root, config, {"clients": clients, "per_task": per_task}, models)
    return FakeJob(root, models, vocab)


def batch(vocab: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Three rows of token ids, two of them right-padded."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, vocab, (3, 10), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    mask[2, 3:] = 0
    return ids.masked_fill(mask == 0, 0), mask
