"""`python -m atlas_pl.privacy`'s work once its settings are checked: load, attack, score, write."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from atlas_pl.engines.setup import DTYPES
from atlas_pl.models.catalog import resolve_model_spec
from atlas_pl.models.loading import load_base
from atlas_pl.models.split import SharedBackbone, SplitClientModel
from atlas_pl.privacy.attacks import AttackModel, Sentences
from atlas_pl.privacy.config import PrivacySettings
from atlas_pl.privacy.errors import PrivacyConfigError
from atlas_pl.privacy.evaluate import Case, attack_case
from atlas_pl.privacy.jobs import TrainedClient
from atlas_pl.privacy.metrics import dcs
from atlas_pl.privacy.targets import TextSource, pretrained_half, trained_half

log = logging.getLogger(__name__)


def check_invertible(backbone: SharedBackbone) -> None:
    """Decoding recovered vectors needs a token table whose rows tell tokens apart."""
    table = backbone.ops.word_embeddings()
    if not isinstance(table, nn.Embedding):
        raise PrivacyConfigError(
            f"model {backbone.spec.name}: its input embeddings are a {type(table).__name__}, not a token "
            "table, so recovered vectors cannot be decoded to tokens"
        )
    weight = table.weight.detach().float()
    distinct = torch.unique(weight, dim=0).shape[0]
    if distinct < 0.99 * weight.shape[0]:
        raise PrivacyConfigError(
            f"model {backbone.spec.name}: only {distinct} of its {weight.shape[0]} token embeddings are "
            "distinct, so nearest-embedding decoding cannot tell its tokens apart"
        )


def _load(s: PrivacySettings) -> tuple[SharedBackbone, Any]:
    spec = resolve_model_spec(s.model.name)
    base, tokenizer = load_base(
        spec, attn_implementation=s.model.attn_implementation, dtype=DTYPES[s.model.dtype], seed=s.seed
    )
    targets = list(s.model.lora_targets) if s.model.lora_targets else None
    return SharedBackbone(spec, base, targets=targets, pooling=s.model.pooling, head=s.model.head), tokenizer


class Evaluation:
    """The loaded model, tokenizer and sentence sets a privacy run shares between its cases."""

    def __init__(self, s: PrivacySettings) -> None:
        self.s = s
        self.backbone, self.tokenizer = _load(s)
        check_invertible(self.backbone)
        self.vocab = int(self.backbone.ops.token_table().shape[0])
        self._sentences: dict[tuple[str, str, int], Sentences] = {}
        self.text = TextSource(self.tokenizer, self.vocab, s.max_len, s.glue_dir, s.source, s.seed)

    def sentences(self, task: str, split: str, count: int) -> Sentences:
        key = (task, split, count)
        if key not in self._sentences:
            self._sentences[key] = self.text.sentences(task, split, count)
        return self._sentences[key]

    def attack(self, case: Case, victim: TrainedClient | None, task: str) -> list[dict[str, Any]]:
        b = self.backbone
        victim_half = (
            pretrained_half(b, case.split) if victim is None else trained_half(b, victim, case.split)
        )
        known = victim_half if case.knowledge == "white_box" else pretrained_half(b, case.split)
        return attack_case(
            case,
            victim_half,
            AttackModel(known),
            self.sentences(task, "validation", self.s.samples),
            self.sentences(self.s.aux_task, "train", self.s.aux_samples),
            self.s.attack,
            seed=self.s.seed,
            tokenizer=self.tokenizer,
            examples=self.s.examples,
        )


def _name(victim: TrainedClient | None) -> str:
    return "pretrained" if victim is None else f"{victim.job_dir}#client{victim.client}"


def split_rows(ev: Evaluation) -> list[dict[str, Any]]:
    """Every split x knowledge x noise: a pretrained victim makes white- and semi-white-box the same."""
    s = ev.s
    levels = s.knowledge if s.victim is not None else ("semi_white_box",)
    rows: list[dict[str, Any]] = []
    for split in s.splits:
        for knowledge in levels:
            for noise in s.noises:
                rows += ev.attack(Case(_name(s.victim), knowledge, split, noise), s.victim, s.task)
    return rows


def tradeoff_rows(ev: Evaluation) -> list[dict[str, Any]]:
    """Per defended job: AP (max over attacks, white-box, at the split it trained with) against its MP."""
    jobs = ev.s.tradeoff
    if not jobs:
        return []
    mp_star = next(t.primary for t in jobs if t.activation_noise == 0.0)
    out = []
    for t in sorted(jobs, key=lambda j: j.activation_noise):
        rows = ev.attack(Case(_name(t), "white_box", t.split, t.activation_noise), t, t.task)
        best = max(rows, key=lambda r: r["accuracy"])
        mp = t.primary
        out.append(
            {
                "job_dir": str(t.job_dir),
                "client": t.client,
                "task": t.task,
                "split": t.split,
                "activation_noise": t.activation_noise,
                "ap": best["accuracy"],
                "ap_attack": best["attack"],
                "mp": mp,
                "mp_star": mp_star,
                "dcs": None
                if mp is None or mp_star is None
                else dcs(best["accuracy"], mp, mp_star=mp_star, beta=ev.s.beta),
                "attacks": rows,
            }
        )
    return out


def sketch_result(ev: Evaluation) -> dict[str, Any] | None:
    s = ev.s
    if s.sketch is None:
        return None
    from atlas_pl.privacy.sketch_attack import attack_sketches

    size = max(s.sketch.shadows, s.sketch.victims) * s.sketch.samples_per_client
    public, private = ev.text.public_and_private(s.task, size)
    torch.manual_seed(s.seed)
    num_labels = int(torch.unique(public.labels).numel())
    model = SplitClientModel(
        ev.backbone,
        s.model.split_point,
        dict.fromkeys(range(s.num_layers), 8),
        num_labels,
        alpha=16.0,
        seed=s.seed,
    )
    result = attack_sketches(model, public, private, s.fingerprint, s.sketch, seed=s.seed)
    log.info(
        "privacy: sketch attack on %s: accuracy %.3f (chance %.3f)",
        s.task,
        result["accuracy"],
        result["chance"],
    )
    return {"task": s.task, **result}


def ap_table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """AP (max over attacks) per case: the number a defense is judged by."""
    best: dict[tuple, dict[str, Any]] = {}
    for r in rows:
        key = (r["victim"], r["knowledge"], r["split"], r["noise"])
        if key not in best or r["accuracy"] > best[key]["ap"]:
            best[key] = {
                "victim": r["victim"],
                "knowledge": r["knowledge"],
                "split": r["split"],
                "noise": r["noise"],
                "ap": r["accuracy"],
                "attack": r["attack"],
            }
    return list(best.values())


def run_privacy(s: PrivacySettings) -> dict[str, Any]:
    """Attack, score, and write privacy.json and the figures into `s.out_dir`."""
    s.out_dir.mkdir(parents=True, exist_ok=True)
    ev = Evaluation(s)
    result: dict[str, Any] = {
        "model": s.model.name,
        "dtype": s.model.dtype,
        "task": s.task,
        "samples": s.samples,
        "auxiliary": {"task": s.aux_task, "samples": s.aux_samples},
        "beta": s.beta,
        "attacks": [],
        "ap": [],
        "tradeoff": [],
        "sketch": None,
        "complete": False,  # true once every stage ran: a partial file is a crashed or running evaluation
        "config": s.config,
    }
    # each stage's results are written as soon as they exist: a later failure loses nothing before it
    result["attacks"] = split_rows(ev) if s.splits else []
    result["ap"] = ap_table(result["attacks"])
    _write_json(s.out_dir / "privacy.json", result)
    result["tradeoff"] = tradeoff_rows(ev)
    _write_json(s.out_dir / "privacy.json", result)
    result["sketch"] = sketch_result(ev)
    result["complete"] = True
    _write_json(s.out_dir / "privacy.json", result)
    from atlas_pl.privacy.figures import write_figures

    result["figures"] = [str(p) for p in write_figures(result, s.out_dir)]
    _write_json(s.out_dir / "privacy.json", result)
    return result


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")
    tmp.replace(path)
