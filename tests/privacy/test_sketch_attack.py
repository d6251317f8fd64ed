"""The sketch attack beats chance where the sketch must carry the label mix."""

from __future__ import annotations

import torch

from atlas_pl.data.synthetic import make_synthetic_split
from atlas_pl.models.split import SplitClientModel
from atlas_pl.privacy.config import SketchAttackConfig
from atlas_pl.privacy.sketch_attack import attack_sketches, label_mix_clients, majority
from atlas_pl.settings import FingerprintSettings


def test_near_single_class_clients_give_their_majority_label_away(tiny_backbone) -> None:
    # Dirichlet(0.05): almost every client holds one class; the plain (unbalanced) loss's gradient
    # then points along that class's direction, which the shadow clients teach the attacker
    data = make_synthetic_split(0, 1200, vocab_size=256, seq_len=24, seed=0, split="train")
    public = type(data)(
        *(getattr(data, k)[:600] for k in ("input_ids", "attention_mask", "token_type_ids", "labels"))
    )
    private = type(data)(
        *(getattr(data, k)[600:] for k in ("input_ids", "attention_mask", "token_type_ids", "labels"))
    )
    torch.manual_seed(0)
    model = SplitClientModel(tiny_backbone, 2, dict.fromkeys(range(4), 4), 2, alpha=8.0, seed=0)
    fp = FingerprintSettings(
        batches=2,
        layers=2,
        sketch_dim=128,
        dim=16,
        compression="sketch",
        class_balanced=False,
        recluster_every=0,
        dp=None,
    )
    cfg = SketchAttackConfig(shadows=14, victims=12, samples_per_client=32, dirichlet_alpha=0.05)
    result = attack_sketches(model, public, private, fp, cfg, seed=0)
    assert result["accuracy"] >= result["chance"] + 0.25, result


def test_label_mixes_have_the_asked_size_and_majority() -> None:
    import numpy as np

    labels = np.array([0] * 50 + [1] * 50)
    clients = label_mix_clients(labels, 5, 20, 0.5, np.random.default_rng(0))
    assert all(len(c) == 20 for c in clients)
    assert majority(np.array([1, 1, 0])) == 1
