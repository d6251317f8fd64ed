"""How much of a sentence an attack recovered, and the VFLAIR privacy-utility score (DESIGN.md §11).

Every metric compares token ids position by position on the victim's real tokens only: padding and the
tokenizer's special tokens ([CLS], [SEP], ...) are the same for every sentence, so counting them would
credit an attack with what it was given. VFLAIR's precision/recall are bag-of-token tests that ignore
positions; the positional accuracy here (AP) is the stricter number, and token-set F1 is reported
beside it for comparison with that literature.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Recovery:
    """Mean scores of one attack over a set of sentences."""

    accuracy: float  # positional token accuracy AP, pooled over every scored position
    token_f1: float  # token-set F1, mean over sentences
    rouge_l: float  # ROUGE-L F-measure on token sequences, mean over sentences
    sentences: int
    tokens: int

    def as_json(self) -> dict[str, float | int]:
        return {
            "accuracy": self.accuracy,
            "token_f1": self.token_f1,
            "rouge_l": self.rouge_l,
            "sentences": self.sentences,
            "tokens": self.tokens,
        }


def _lcs(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common subsequence (row-by-row dynamic programme)."""
    if not a or not b:
        return 0
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(reference: Sequence[int], candidate: Sequence[int]) -> float:
    """ROUGE-L F1: the longest common subsequence against both lengths."""
    common = _lcs(reference, candidate)
    if common == 0:
        return 0.0
    precision, recall = common / len(candidate), common / len(reference)
    return 2 * precision * recall / (precision + recall)


def token_set_f1(reference: Sequence[int], candidate: Sequence[int]) -> float:
    """F1 of the two sets of distinct tokens: what was recovered regardless of where."""
    ref, cand = set(reference), set(candidate)
    hits = len(ref & cand)
    if hits == 0:
        return 0.0
    precision, recall = hits / len(cand), hits / len(ref)
    return 2 * precision * recall / (precision + recall)


def recovery(references: Sequence[Sequence[int]], candidates: Sequence[Sequence[int]]) -> Recovery:
    """Scores of recovered token sequences against the true ones (same positions, same lengths)."""
    if len(references) != len(candidates):
        raise ValueError(f"{len(references)} reference sentences but {len(candidates)} recovered ones")
    if not references:
        raise ValueError("no sentences to score")
    hits = tokens = 0
    f1s: list[float] = []
    rouges: list[float] = []
    for ref, cand in zip(references, candidates):
        if len(ref) != len(cand):
            raise ValueError(f"a recovered sentence has {len(cand)} tokens, its reference {len(ref)}")
        hits += sum(int(r == c) for r, c in zip(ref, cand))
        tokens += len(ref)
        f1s.append(token_set_f1(ref, cand) if ref else 0.0)
        rouges.append(rouge_l(ref, cand) if ref else 0.0)
    return Recovery(
        accuracy=hits / max(1, tokens),
        token_f1=sum(f1s) / len(f1s),
        rouge_l=sum(rouges) / len(rouges),
        sentences=len(references),
        tokens=tokens,
    )


def dcs(ap: float, mp: float, *, mp_star: float, ap_star: float = 0.0, beta: float = 0.5) -> float:
    """VFLAIR's defense capability score: 1 at (AP*, MP*), lower the more the attack recovers and the
    more utility the defense costs. Gaps are one-sided, so doing better than the reference is no bonus.
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta={beta}; valid: 0..1")
    d_ap = max(ap - ap_star, 0.0)
    d_mp = max(mp_star - mp, 0.0)
    return 1.0 / (1.0 + math.sqrt((1.0 - beta) * d_ap**2 + beta * d_mp**2))
