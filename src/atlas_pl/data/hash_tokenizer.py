"""A vocabulary-free tokenizer for randomly initialised tiny models.

Tiny random-init models have no trained vocabulary, and the hub is not reachable here, so we need a
tokenizer that works offline, needs no files and gives the same ids in every process and on every
machine. Hashing words with a stable hash (crc32, not Python's salted `hash`) does exactly that; hash
collisions only matter as much as they would for any small vocabulary.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence

import torch

from atlas_pl.data.errors import DataError

PAD_ID, CLS_ID, SEP_ID, UNK_ID = 0, 1, 2, 3
NUM_SPECIAL = 4
# Runs of letters/digits are words; every other non-space character is its own (punctuation) token.
_TOKEN_RE = re.compile(r"[^\W_]+|[^\w\s]|_")

TextInput = str | Sequence[str]


class HashTokenizer:
    """Word-level hashing tokenizer with the call shape of a Hugging Face tokenizer.

    ids: 0 pad, 1 cls, 2 sep, 3 unk, and each word maps to `4 + crc32(word) % (vocab_size - 4)`.
    Pairs are encoded `[CLS] a [SEP] b [SEP]` with token_type_ids 0 for `[CLS] a [SEP]`, 1 for `b [SEP]`.
    """

    pad_token_id = PAD_ID
    cls_token_id = CLS_ID
    sep_token_id = SEP_ID
    unk_token_id = UNK_ID
    padding_side = "right"
    model_input_names = ["input_ids", "token_type_ids", "attention_mask"]

    def __init__(self, vocab_size: int) -> None:
        if int(vocab_size) <= NUM_SPECIAL:
            raise DataError(
                f"HashTokenizer: vocab_size must be > {NUM_SPECIAL} (4 ids are reserved), got {vocab_size}"
            )
        self.vocab_size = int(vocab_size)
        self.name_or_path = f"hash-{self.vocab_size}"
        self.model_max_length = 1_000_000

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return f"HashTokenizer(vocab_size={self.vocab_size})"

    def tokenize(self, text: str) -> list[str]:
        """Lowercased words and punctuation marks."""
        return _TOKEN_RE.findall(text.lower())

    def token_id(self, token: str) -> int:
        """Stable id of one (already lowercased) token."""
        if not token:
            return UNK_ID
        return NUM_SPECIAL + zlib.crc32(token.encode("utf-8")) % (self.vocab_size - NUM_SPECIAL)

    def convert_tokens_to_ids(self, tokens: list[str]) -> list[int]:
        return [self.token_id(t) for t in tokens]

    def encode(
        self,
        text: str,
        text_pair: str | None = None,
        *,
        truncation: bool = True,
        max_length: int | None = None,
    ) -> list[int]:
        """Ids of one example with special tokens (no padding)."""
        return self._encode_one(text, text_pair, truncation, max_length)[0]

    def _encode_one(
        self, text: str, text_pair: str | None, truncation: bool, max_length: int | None
    ) -> tuple[list[int], list[int]]:
        a = self.convert_tokens_to_ids(self.tokenize(text))
        b = None if text_pair is None else self.convert_tokens_to_ids(self.tokenize(text_pair))
        if truncation and max_length is not None:
            special = 2 if b is None else 3
            budget = max_length - special
            if budget < 0:
                raise DataError(
                    f"HashTokenizer: max_length={max_length} leaves no room for {special} special tokens"
                )
            if b is None:
                a = a[:budget]
            else:
                a, b = _truncate_longest_first(a, b, budget)
        ids = [CLS_ID, *a, SEP_ID]
        types = [0] * len(ids)
        if b is not None:
            ids += [*b, SEP_ID]
            types += [1] * (len(b) + 1)
        return ids, types

    def __call__(
        self,
        text: TextInput,
        text_pair: TextInput | None = None,
        *,
        truncation: bool | str = True,
        max_length: int | None = None,
        padding: bool | str = "max_length",
        return_tensors: str | None = "pt",
        **_: object,
    ) -> dict:
        """Encode one text / pair or a batch; `padding` is "max_length", "longest"/True or False."""
        single = isinstance(text, str)
        texts: list[str] = [text] if isinstance(text, str) else list(text)
        if text_pair is None:
            pairs: list[str | None] = [None] * len(texts)
        else:
            pairs = [text_pair] if isinstance(text_pair, str) else list(text_pair)
            if len(pairs) != len(texts):
                raise DataError(f"HashTokenizer: {len(texts)} texts but {len(pairs)} text pairs")
        do_truncate = truncation not in (False, "do_not_truncate")
        if (do_truncate or padding == "max_length") and max_length is None:
            raise DataError("HashTokenizer: max_length is required for truncation or padding='max_length'")
        if padding not in ("max_length", "longest", True, False, "do_not_pad"):
            raise DataError(
                f"HashTokenizer: unknown padding {padding!r}; use 'max_length', 'longest' or False"
            )
        if return_tensors not in ("pt", None):
            raise DataError(f"HashTokenizer: return_tensors={return_tensors!r} unsupported; use 'pt' or None")

        encoded = [self._encode_one(a, b, do_truncate, max_length) for a, b in zip(texts, pairs)]
        ids = [e[0] for e in encoded]
        types = [e[1] for e in encoded]
        masks = [[1] * len(row) for row in ids]
        if padding not in (False, "do_not_pad"):
            longest = max((len(row) for row in ids), default=0)
            width = max(longest, max_length or 0) if padding == "max_length" else longest
            for rows, fill in ((ids, PAD_ID), (types, 0), (masks, 0)):
                for row in rows:
                    row.extend([fill] * (width - len(row)))
        out = {"input_ids": ids, "token_type_ids": types, "attention_mask": masks}
        if return_tensors == "pt":
            if len({len(row) for row in ids}) > 1:
                raise DataError("HashTokenizer: sequences differ in length; use padding to return tensors")
            return {k: torch.tensor(v, dtype=torch.long).reshape(len(v), -1) for k, v in out.items()}
        if single:
            return {k: v[0] for k, v in out.items()}
        return out


def _truncate_longest_first(a: list[int], b: list[int], budget: int) -> tuple[list[int], list[int]]:
    """Drop tokens from the end of the longer segment until both fit (HF's `longest_first`)."""
    len_a, len_b = len(a), len(b)
    while len_a + len_b > budget:
        if len_a > len_b:
            len_a -= 1
        else:
            len_b -= 1
    return a[:len_a], b[:len_b]
