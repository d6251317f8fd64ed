"""A tiny random BERT and random-token sentences for the privacy tests."""

from __future__ import annotations

import pytest
import torch

from atlas_pl.models.catalog import resolve_model_spec
from atlas_pl.models.loading import load_base
from atlas_pl.models.split import SharedBackbone
from atlas_pl.privacy.attacks import Sentences


@pytest.fixture(scope="module")
def tiny_backbone() -> SharedBackbone:
    spec = resolve_model_spec("tiny_bert")
    model, _ = load_base(spec, attn_implementation="eager")
    return SharedBackbone(spec, model)


def random_sentences(count: int, length: int, seed: int, vocab: int = 256) -> Sentences:
    """Sentences of random tokens (ids 4.. so none is special), some padded; ids 0..3 are special."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, vocab, (count, length), generator=g)
    mask = torch.ones_like(ids)
    mask[::3, length - 3 :] = 0
    ids = ids * mask
    return Sentences(ids, mask, torch.zeros_like(ids), mask.bool())
