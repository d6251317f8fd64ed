"""How to run one Hugging Face model family block by block.

A split model needs three things a stock `forward` does not expose: the embeddings alone, an arbitrary
block range, and the final norm alone. Each family adapter below reaches into the HF module tree for
exactly those and rebuilds the attention mask from the 2-D padding mask, so the server half can
reconstruct everything it needs from what the client actually sends (activations + attention mask).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from atlas_pl.models.catalog import DEFAULT_TARGETS  # noqa: F401  (re-exported)


def additive_mask(attention_mask: Tensor, dtype: torch.dtype, causal: bool) -> Tensor:
    """[B, T] 0/1 padding mask -> [B, 1, T, T] additive mask (0 keep, dtype-min drop).

    A finite minimum (not -inf) keeps fully padded query rows NaN-free.
    """
    bsz, length = attention_mask.shape
    keep = attention_mask[:, None, None, :].bool().expand(bsz, 1, length, length)
    if causal:
        tri = torch.ones(length, length, dtype=torch.bool, device=attention_mask.device).tril()
        keep = keep & tri
    mask = torch.zeros(bsz, 1, length, length, dtype=dtype, device=attention_mask.device)
    return mask.masked_fill(~keep, torch.finfo(dtype).min)


class FamilyOps:
    """Embeddings / blocks / final norm of one HF base model; subclasses per family."""

    causal = False

    def __init__(self, model: nn.Module) -> None:
        # Any: each family's HF module tree (encoder.layer, transformer.h, ...) is reached by attribute name
        self.model: Any = model

    def blocks(self) -> nn.ModuleList:
        raise NotImplementedError

    def embed(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None) -> Tensor:
        raise NotImplementedError

    def word_embeddings(self) -> nn.Module:
        """The token embedding table: what an inversion attack decodes recovered vectors against."""
        return self.model.get_input_embeddings()

    def token_table(self) -> Tensor:
        """The token embedding matrix [V, H]."""
        weight = getattr(self.word_embeddings(), "weight", None)
        if not isinstance(weight, Tensor):
            raise TypeError(f"{type(self.model).__name__}'s input embeddings have no weight matrix")
        return weight

    def embed_vectors(self, words: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None) -> Tensor:
        """`embed` with the token lookup replaced by given word vectors [B, T, H]; positions and token
        types are added as for real tokens, so an attack can optimise continuous inputs through the
        exact embedding layer the client runs."""
        raise NotImplementedError

    def block_context(self, hidden: Tensor, attention_mask: Tensor) -> dict:
        return {"mask": additive_mask(attention_mask, hidden.dtype, self.causal)}

    def run_block(self, index: int, hidden: Tensor, ctx: dict) -> Tensor:
        out = self.blocks()[index](hidden, attention_mask=ctx["mask"])
        return out[0] if isinstance(out, tuple) else out

    def finalize(self, hidden: Tensor) -> Tensor:
        return hidden

    @property
    def hidden_size(self) -> int:
        cfg = self.model.config
        return int(getattr(cfg, "hidden_size", None) or cfg.n_embd)


class BertOps(FamilyOps):
    def blocks(self) -> nn.ModuleList:
        return self.model.encoder.layer

    def embed(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None) -> Tensor:
        return self.model.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)

    def embed_vectors(self, words: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None) -> Tensor:
        return self.model.embeddings(inputs_embeds=words, token_type_ids=token_type_ids)


class RobertaOps(BertOps):
    def embed(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None) -> Tensor:
        # RoBERTa has a single token type; its position ids come from input_ids (padding-aware).
        return self.model.embeddings(input_ids=input_ids)

    def embed_vectors(self, words: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None) -> Tensor:
        # padded positions get sequential position ids here, not RoBERTa's padding id: they are masked
        return self.model.embeddings(inputs_embeds=words)


class DistilBertOps(FamilyOps):
    def blocks(self) -> nn.ModuleList:
        return self.model.transformer.layer

    def embed(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None) -> Tensor:
        return self.model.embeddings(input_ids)

    def embed_vectors(self, words: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None) -> Tensor:
        return self.model.embeddings(None, inputs_embeds=words)

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.dim)


class GPT2Ops(FamilyOps):
    causal = True

    def blocks(self) -> nn.ModuleList:
        return self.model.h

    def embed(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None) -> Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)[None]
        return self.model.drop(self.model.wte(input_ids) + self.model.wpe(positions))

    def embed_vectors(self, words: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None) -> Tensor:
        positions = torch.arange(words.shape[1], device=words.device)[None]
        return self.model.drop(words + self.model.wpe(positions))

    def run_block(self, index: int, hidden: Tensor, ctx: dict) -> Tensor:
        out = self.blocks()[index](hidden, attention_mask=ctx["mask"])
        return out[0] if isinstance(out, tuple) else out

    def finalize(self, hidden: Tensor) -> Tensor:
        return self.model.ln_f(hidden)


class LlamaOps(FamilyOps):
    causal = True

    def blocks(self) -> nn.ModuleList:
        return self.model.layers

    def embed(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None) -> Tensor:
        return self.model.embed_tokens(input_ids)

    def embed_vectors(self, words: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None) -> Tensor:
        return words

    def block_context(self, hidden: Tensor, attention_mask: Tensor) -> dict:
        positions = torch.arange(hidden.shape[1], device=hidden.device)[None]
        return {
            "mask": additive_mask(attention_mask, hidden.dtype, True),
            "positions": positions,
            "rope": self.model.rotary_emb(hidden, position_ids=positions),
        }

    def run_block(self, index: int, hidden: Tensor, ctx: dict) -> Tensor:
        out = self.blocks()[index](
            hidden,
            attention_mask=ctx["mask"],
            position_embeddings=ctx["rope"],
            position_ids=ctx["positions"],
        )
        return out[0] if isinstance(out, tuple) else out

    def finalize(self, hidden: Tensor) -> Tensor:
        return self.model.norm(hidden)


FAMILY_OPS: dict[str, type[FamilyOps]] = {
    "bert": BertOps,
    "roberta": RobertaOps,
    "distilbert": DistilBertOps,
    "gpt2": GPT2Ops,
    "llama": LlamaOps,
}
