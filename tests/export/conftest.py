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
    spec = resolve_model_spec(model)
    base, _ = load_base(spec, seed=seed)
    backbone = SharedBackbone(
        spec, base, targets=list(targets) if targets else None, pooling=pooling, head=head
    )
    gen = torch.Generator().manual_seed(7)
    models: dict[str, SplitClientModel] = {}
    tensors: dict[str, torch.Tensor] = {}
    for k, (split, ranks, labels) in enumerate(clients):
        m = SplitClientModel(backbone, split, dict(enumerate(ranks)), labels, alpha=alpha, seed=seed)
        with torch.no_grad():
            for p in m.parameters():  # B != 0: the adapters change the function
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
        models[str(k)] = m.eval()
        tensors.update(module_tensors(f"model/{k}", m))
    config = {
        "seed": seed,
        "model": {"name": model, "pooling": pooling, "head": head, "lora_targets": list(targets or [])},
        "lora": {"rank": 8, "alpha": alpha, "dropout": 0.0},
        "ablation": {"name": "atlas"},
        "fed": {"eta": 0.5},
        "paths": {},
    }
    root.mkdir(parents=True, exist_ok=True)
    (root / "job_config.json").write_text(json.dumps(config))
    entry = {"task": "synthetic1", "cluster": 1, "device": "cpu_2gb", "accuracy": 0.75, "primary": 0.75}
    records = [{"round": 2, "evaluated": True, "clients": {k: dict(entry) for k in models}}]
    save_checkpoint(root / "checkpoints", 2, {"records": records}, tensors)
    return FakeJob(root, models, int(base.config.vocab_size))


def batch(vocab: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Three rows of token ids, two of them right-padded."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, vocab, (3, 10), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    mask[2, 3:] = 0
    return ids.masked_fill(mask == 0, 0), mask
