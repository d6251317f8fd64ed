"""Run the configured attacks on one victim half and score what they recover."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from atlas_pl.models.split import ClientHalf
from atlas_pl.privacy.attacks import (
    AttackModel,
    Inverter,
    Sentences,
    bisr,
    invert,
    rmi,
    sent_activations,
    train_inverter,
    vmi,
)
from atlas_pl.privacy.config import AttackConfig
from atlas_pl.privacy.metrics import recovery

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Case:
    """One attacked setting: whose half, what the attacker knows, where it splits, how much noise."""

    victim: str  # "pretrained" or "<job dir>#client<c>"
    knowledge: str
    split: int
    noise: float


def _spread(items: list[Any], count: int) -> list[Any]:
    """`count` items evenly spaced through `items` (sentences are sorted by length: short to long)."""
    if count <= 0 or not items:
        return []
    step = max(1, len(items) // count)
    return items[::step][:count]


def _tokens(tokenizer: Any, ids: list[int]) -> str:
    if hasattr(tokenizer, "decode"):
        return str(tokenizer.decode(ids))
    return " ".join(str(i) for i in ids)


def _recover(
    name: str,
    attacker: AttackModel,
    s: Sentences,
    target: Tensor,
    cfg: AttackConfig,
    inverter: Inverter | None,
) -> Tensor:
    out = torch.zeros_like(s.input_ids)
    for index, part in s.chunks(cfg.chunk):
        width = part.input_ids.shape[1]
        h = target[index, :width]
        if name == "vmi":
            found = vmi(attacker, part, h, cfg.vmi)
        elif name == "rmi":
            found = rmi(attacker, part, h, cfg.rmi)
        elif name == "inverter":
            assert inverter is not None
            found = invert(inverter, part, h)
        else:
            assert inverter is not None
            found = bisr(attacker, part, h, inverter, cfg.bisr)
        out[index, :width] = found
    return out


def attack_case(
    case: Case,
    victim: ClientHalf,
    attacker: AttackModel,
    sentences: Sentences,
    aux: Sentences,
    cfg: AttackConfig,
    *,
    seed: int,
    tokenizer: Any,
    examples: int,
) -> list[dict[str, Any]]:
    """One row per attack: its recovery scores, wall seconds and a few recovered sentences."""
    target = sent_activations(victim, sentences, case.noise, seed)
    inverter = None
    started = time.perf_counter()
    if {"inverter", "bisr"} & set(cfg.names):
        inverter = train_inverter(attacker, aux, cfg.inverter, noise=case.noise, seed=seed + 7919)
    inverter_seconds = time.perf_counter() - started
    rows = []
    references = sentences.references()
    for name in cfg.names:
        started = time.perf_counter()
        recovered = sentences.pick(_recover(name, attacker, sentences, target, cfg, inverter))
        score = recovery(references, recovered)
        seconds = time.perf_counter() - started + (inverter_seconds if name in ("inverter", "bisr") else 0.0)
        log.info(
            "privacy: %s %s split %d noise %g %s: AP %.3f, token F1 %.3f, ROUGE-L %.3f (%.0f s)",
            case.victim,
            case.knowledge,
            case.split,
            case.noise,
            name,
            score.accuracy,
            score.token_f1,
            score.rouge_l,
            seconds,
        )
        rows.append(
            {
                **case.__dict__,
                "attack": name,
                **score.as_json(),
                "seconds": seconds,
                "examples": [
                    {"original": _tokens(tokenizer, ref), "recovered": _tokens(tokenizer, rec)}
                    for ref, rec in _spread(list(zip(references, recovered)), examples)
                ],
            }
        )
    return rows
