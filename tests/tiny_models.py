"""Random tiny RoBERTa / DistilBERT bases: the registry has no tiny entry for these families."""

from __future__ import annotations

import torch
import transformers

from atlas_pl.models.catalog import ENCODER, ModelSpec


def tiny_family(family: str, attn: str = "eager") -> tuple[ModelSpec, torch.nn.Module]:
    """A seeded, frozen 3-block model of `family` (roberta or distilbert) with 80 positions."""
    torch.manual_seed(0)
    if family == "roberta":
        cfg = transformers.RobertaConfig(
            hidden_size=32,
            num_hidden_layers=3,
            num_attention_heads=4,
            intermediate_size=64,
            vocab_size=256,
            max_position_embeddings=80,
            pad_token_id=1,
        )
    elif family == "distilbert":
        cfg = transformers.DistilBertConfig(
            dim=32, n_layers=3, n_heads=4, hidden_dim=64, vocab_size=256, max_position_embeddings=80
        )
    else:
        raise ValueError(f"no tiny builder for family {family!r}; valid: roberta, distilbert")
    cfg._attn_implementation = attn
    model = transformers.AutoModel.from_config(cfg).eval().requires_grad_(False)
    return ModelSpec(f"tiny_{family}", family, ENCODER, "random", 3), model
