"""The halves the evaluation attacks and the sentences it attacks them with.

The victim half is the client's real one: its trained adapters from a job directory, or the pretrained
base when no job is given. The attacker's copy is the same half (white-box) or the pretrained base
(semi-white-box). A pretrained half is a rank-1 LoRA whose B factor is zero: exactly the base function.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from safetensors import safe_open

from atlas_pl.data.glue import load_glue_split
from atlas_pl.data.synthetic import make_synthetic_split
from atlas_pl.data.tasks import is_synthetic, synthetic_index
from atlas_pl.data.tokenize_cache import tokenize_examples
from atlas_pl.data.tokenized import TokenizedExamples
from atlas_pl.models.split import ClientHalf, SharedBackbone
from atlas_pl.privacy.attacks import Sentences
from atlas_pl.privacy.jobs import TrainedClient

_SPECIAL_NAMES = (
    "pad_token_id",
    "cls_token_id",
    "sep_token_id",
    "bos_token_id",
    "eos_token_id",
    "unk_token_id",
)


def pretrained_half(backbone: SharedBackbone, split: int) -> ClientHalf:
    return ClientHalf(backbone, split, dict.fromkeys(range(split), 1), alpha=1.0)


def trained_half(backbone: SharedBackbone, client: TrainedClient, split: int) -> ClientHalf:
    """The client's model up to block `split` with its trained adapters.

    Below the client's own split these are its client-half adapters; above it, the server-half adapters
    trained for it: the half it would send from had it split at `split`.
    """
    half = ClientHalf(backbone, split, {b: client.ranks[b] for b in range(split)}, alpha=client.alpha)
    wanted = {f"factors.{name.split('factors.', 1)[1]}" for name, _ in half.adapter.named_parameters()}
    found: dict[str, torch.Tensor] = {}
    prefix = f"model/{client.client}/"
    with safe_open(str(client.checkpoint / "tensors.safetensors"), "pt") as tensors:
        for key in tensors.keys():  # noqa: SIM118  (safe_open is not a mapping)
            if not key.startswith(prefix) or ".adapter.factors." not in key:
                continue
            name = "factors." + key.split(".adapter.factors.", 1)[1]
            if name in wanted:
                found[name] = tensors.get_tensor(key)
    missing = sorted(wanted - set(found))
    if missing:
        raise ValueError(f"{client.checkpoint} lacks client {client.client}'s adapter tensors {missing[:3]}")
    half.adapter.load_state_dict(found, strict=True)
    return half


def special_ids(tokenizer: Any) -> list[int]:
    ids = getattr(tokenizer, "all_special_ids", None)
    if ids:
        return sorted({int(i) for i in ids})
    return sorted({int(v) for n in _SPECIAL_NAMES if isinstance(v := getattr(tokenizer, n, None), int)})


def as_sentences(data: TokenizedExamples, special: list[int], max_rows: int | None = None) -> Sentences:
    # shortest first: chunks of similar lengths carry little padding through the attacks
    rows = torch.argsort(data.attention_mask.sum(1), stable=True)[:max_rows]
    ids, mask = data.input_ids[rows], data.attention_mask[rows]
    width = max(1, int(mask.sum(1).max()))  # trim the common padding
    ids, mask, types = ids[:, :width], mask[:, :width], data.token_type_ids[rows][:, :width]
    scored = mask.bool() & ~torch.isin(ids, torch.tensor(special, dtype=ids.dtype))
    return Sentences(ids, mask, types, scored)


@dataclass(frozen=True)
class TextSource:
    """Where the evaluation's sentences come from, tokenised as the training pipeline tokenises them."""

    tokenizer: Any
    vocab_size: int
    max_len: int
    glue_dir: str | None
    source: str
    seed: int

    def sample(self, task: str, split: str, count: int, *, salt: int = 0) -> TokenizedExamples:
        """`count` examples of a task's split: a seeded shuffle's first (GLUE), a seeded draw (synthetic)."""
        seed = self.seed + salt
        if is_synthetic(task):
            return make_synthetic_split(
                synthetic_index(task),
                count,
                vocab_size=self.vocab_size,
                seq_len=self.max_len,
                seed=seed,
                split=split,
            )
        text = load_glue_split(task, split, self.glue_dir, self.source)
        order = np.random.default_rng(seed).permutation(len(text))[:count]
        return tokenize_examples(self.tokenizer, text.subset(order), self.max_len)

    def sentences(self, task: str, split: str, count: int) -> Sentences:
        return as_sentences(self.sample(task, split, count), special_ids(self.tokenizer))

    def public_and_private(self, task: str, size: int) -> tuple[TokenizedExamples, TokenizedExamples]:
        """Two disjoint halves of a task's training data: the attacker's public pool, the clients' data."""
        data = self.sample(task, "train", 2 * size, salt=1)
        half = len(data) // 2
        return tuple(  # type: ignore[return-value]
            TokenizedExamples(
                *(getattr(data, k)[rows] for k in ("input_ids", "attention_mask", "token_type_ids", "labels"))
            )
            for rows in (slice(0, half), slice(half, len(data)))
        )
