"""Seeded synthetic classification tasks, generated directly as token ids.

They exist so that the federated machinery (clustering by task, split training, aggregation) can be
tested in seconds without a tokenizer or files, while still being a meaningful multi-task setting:

- each task draws its tokens from its own region of the vocabulary (different input distributions), and
- each task has its own labelling rule: inside the region, a task-specific set P_t of "positive" ids and
  N_t of "negative" ids carry task-specific weights (1 or 2), the rest are neutral filler; the label is 1
  iff the weighted vote of P_t tokens beats that of N_t tokens (ties are never generated).

The rule is linear in bag-of-token counts, so it is learnable, and each task's rule depends only on the
task index (the seed changes the samples, never the task). Labels are exactly balanced.
"""

from __future__ import annotations

from typing import TypedDict

import numpy as np
import torch

from atlas_pl.data.errors import DataError
from atlas_pl.data.tokenized import TokenizedExamples

PAD_ID, CLS_ID, SEP_ID = 0, 1, 2
NUM_SPECIAL = 4  # 0 pad, 1 cls, 2 sep, 3 unk
REGION_SIZE = 24  # ids per task: (128 - 4) // 24 = 5 tasks fit a 128-token vocabulary
N_SIGNAL = 8  # |P_t| = |N_t| = 8, the other 8 ids of the region are neutral
MIN_SEQ_LEN = 8
_RULE_SALT = 0x5EED_7A5C
_SPLIT_CODES = {"train": 0, "validation": 1}


def max_synthetic_tasks(vocab_size: int) -> int:
    """How many distinct synthetic tasks fit into a vocabulary of this size."""
    return max(0, (int(vocab_size) - NUM_SPECIAL) // REGION_SIZE)


def task_region(task_index: int) -> tuple[int, int]:
    """The half-open id range [start, stop) that task `task_index` draws its tokens from."""
    start = NUM_SPECIAL + task_index * REGION_SIZE
    return start, start + REGION_SIZE


class TaskRule(TypedDict):
    """A task's labelling rule (see the module docstring)."""

    positive: np.ndarray  # ids of P_t
    negative: np.ndarray  # ids of N_t
    neutral: np.ndarray  # the region's filler ids
    positive_weight: np.ndarray  # vote of each P_t id (1 or 2)
    negative_weight: np.ndarray  # vote of each N_t id (1 or 2)
    signal_rate: float  # share of a sequence's tokens that carry signal


def task_rule(task_index: int) -> TaskRule:
    """The task's fixed definition: token ids of P_t, N_t, neutral, their weights and signal rate."""
    rng = np.random.default_rng([_RULE_SALT, task_index])
    start, _ = task_region(task_index)
    perm = start + rng.permutation(REGION_SIZE)
    return {
        "positive": perm[:N_SIGNAL],
        "negative": perm[N_SIGNAL : 2 * N_SIGNAL],
        "neutral": perm[2 * N_SIGNAL :],
        "positive_weight": rng.integers(1, 3, size=N_SIGNAL),
        "negative_weight": rng.integers(1, 3, size=N_SIGNAL),
        # share of a sequence's tokens that carry signal; varies per task, like real tasks' density
        "signal_rate": float(rng.uniform(0.3, 0.6)),
    }


def make_synthetic_split(
    task_index: int, n: int, *, vocab_size: int, seq_len: int, seed: int, split: str
) -> TokenizedExamples:
    """`n` examples `[CLS] tokens... [SEP] pad...` of task `task_index`; same arguments, same data."""
    if task_index < 0:
        raise DataError(f"synthetic task index must be >= 0, got {task_index}")
    if split not in _SPLIT_CODES:
        raise DataError(
            f"unknown split {split!r} for a synthetic task; valid splits: {', '.join(_SPLIT_CODES)}"
        )
    if n < 1:
        raise DataError(f"synthetic{task_index}: need n >= 1 examples, got {n}")
    if seq_len < MIN_SEQ_LEN:
        raise DataError(f"synthetic{task_index}: seq_len (max_len) must be >= {MIN_SEQ_LEN}, got {seq_len}")
    needed = task_region(task_index)[1]
    if vocab_size < needed:
        fits = max_synthetic_tasks(vocab_size)
        valid = f"synthetic0..synthetic{fits - 1}" if fits else "none"
        raise DataError(
            f"synthetic{task_index} needs vocab_size >= {needed} (ids 0-3 reserved, "
            f"{REGION_SIZE} ids per task), got {vocab_size}; valid synthetic tasks for this vocab: {valid}"
        )

    rule = task_rule(task_index)
    weight = np.zeros(vocab_size, dtype=np.int64)
    weight[rule["positive"]] = rule["positive_weight"]
    weight[rule["negative"]] = -np.asarray(rule["negative_weight"])
    rng = np.random.default_rng([int(seed) % 2**63, task_index, _SPLIT_CODES[split]])

    max_content = seq_len - 2
    min_content = max(4, max_content // 3)
    n_pos, n_neg = n // 2, n - n // 2
    pos_rows: list[np.ndarray] = []
    neg_rows: list[np.ndarray] = []
    have_pos = have_neg = 0
    while have_pos < n_pos or have_neg < n_neg:
        ids = _draw(rng, rule, 2 * n + 16, seq_len, min_content, max_content)
        score = weight[ids].sum(axis=1)
        pos, neg = ids[score > 0], ids[score < 0]
        pos_rows.append(pos[: n_pos - have_pos])
        neg_rows.append(neg[: n_neg - have_neg])
        have_pos += len(pos_rows[-1])
        have_neg += len(neg_rows[-1])

    input_ids = np.concatenate(pos_rows + neg_rows)
    labels = np.concatenate([np.ones(n_pos, dtype=np.int64), np.zeros(n_neg, dtype=np.int64)])
    order = rng.permutation(n)
    input_ids, labels = input_ids[order], labels[order]
    ids_t = torch.from_numpy(np.ascontiguousarray(input_ids))
    return TokenizedExamples(
        input_ids=ids_t,
        attention_mask=(ids_t != PAD_ID).long(),
        token_type_ids=torch.zeros_like(ids_t),
        labels=torch.from_numpy(labels),
    )


def _draw(
    rng: np.random.Generator, rule: TaskRule, m: int, seq_len: int, min_content: int, max_content: int
) -> np.ndarray:
    """`m` candidate sequences (unlabelled), right-padded to `seq_len`."""
    lengths = rng.integers(min_content, max_content + 1, size=m)
    rate = rule["signal_rate"]
    kind = rng.choice(3, size=(m, max_content), p=[rate / 2, rate / 2, 1 - rate])
    pools = (rule["positive"], rule["negative"], rule["neutral"])
    pick = rng.integers(0, 1 << 30, size=(m, max_content))
    content = np.empty((m, max_content), dtype=np.int64)
    for k, pool in enumerate(pools):
        sel = kind == k
        content[sel] = np.asarray(pool)[pick[sel] % len(pool)]
    positions = np.arange(max_content)
    content[positions[None, :] >= lengths[:, None]] = PAD_ID
    ids = np.full((m, seq_len), PAD_ID, dtype=np.int64)
    ids[:, 0] = CLS_ID
    ids[:, 1 : 1 + max_content] = content
    ids[np.arange(m), 1 + lengths] = SEP_ID
    return ids
