"""The inversion attacks recover what an undefended split-1 half sends, and less as the noise grows."""

from __future__ import annotations

import pytest
import torch

from atlas_pl.privacy.attacks import (
    AttackModel,
    Sentences,
    bisr,
    invert,
    rmi,
    sent_activations,
    train_inverter,
    vmi,
)
from atlas_pl.privacy.config import InverterConfig, RMIConfig, VMIConfig
from atlas_pl.privacy.metrics import recovery
from atlas_pl.privacy.targets import pretrained_half

from .conftest import random_sentences


def _vmi_accuracy(backbone, noise: float) -> float:
    half = pretrained_half(backbone, 1)
    victims = random_sentences(24, 12, seed=1)
    target = sent_activations(half, victims, noise, seed=5)
    recovered = vmi(AttackModel(half), victims, target, VMIConfig())
    return recovery(victims.references(), victims.pick(recovered)).accuracy


def test_vmi_recovers_the_input_at_split_1_without_defense(tiny_backbone) -> None:
    assert _vmi_accuracy(tiny_backbone, 0.0) >= 0.9


@pytest.mark.integration  # trains an inverter: seconds the fast tier's 3-minute budget has no room for
def test_the_inverter_recovers_the_input_at_split_1_without_defense(tiny_backbone) -> None:
    half = pretrained_half(tiny_backbone, 1)
    attacker = AttackModel(half)
    victims, aux = random_sentences(24, 12, seed=1), random_sentences(300, 12, seed=2)
    inverter = train_inverter(attacker, aux, InverterConfig(epochs=10, width=64), noise=0.0, seed=0)
    recovered = invert(inverter, victims, sent_activations(half, victims, 0.0, seed=5))
    assert recovery(victims.references(), victims.pick(recovered)).accuracy >= 0.9


def test_attack_accuracy_falls_as_the_noise_grows(tiny_backbone) -> None:
    accuracies = [_vmi_accuracy(tiny_backbone, noise) for noise in (0.5, 1.0, 2.0)]
    assert accuracies[0] > accuracies[1] > accuracies[2], accuracies
    assert accuracies[2] < 0.5


def test_forward_from_word_vectors_equals_forward_from_ids(tiny_backbone) -> None:
    half = pretrained_half(tiny_backbone, 2)
    s = random_sentences(4, 9, seed=3)
    words = tiny_backbone.ops.word_embeddings()(s.input_ids)
    assert torch.equal(
        half(s.input_ids, s.attention_mask, s.token_type_ids),
        half.forward_words(words, s.attention_mask, s.token_type_ids),
    )


@pytest.mark.integration  # RMI's relaxed vocabulary steps and an inverter: too slow for the fast tier
def test_rmi_and_bisr_recover_the_input_at_split_1(tiny_backbone) -> None:
    half = pretrained_half(tiny_backbone, 1)
    attacker = AttackModel(half)
    victims, aux = random_sentences(12, 10, seed=1), random_sentences(200, 10, seed=2)
    target = sent_activations(half, victims, 0.0, seed=5)
    relaxed = rmi(attacker, victims, target, RMIConfig(steps=150))
    assert recovery(victims.references(), victims.pick(relaxed)).accuracy >= 0.9
    inverter = train_inverter(attacker, aux, InverterConfig(epochs=4, width=64), noise=0.0, seed=0)
    started = bisr(attacker, victims, target, inverter, VMIConfig(steps=30))
    assert recovery(victims.references(), victims.pick(started)).accuracy >= 0.9


def test_chunks_of_uneven_sentences_send_what_each_sentence_sends_alone(tiny_backbone) -> None:
    half = pretrained_half(tiny_backbone, 2)
    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([3, 5, 5, 8, 11, 12])  # sorted, as TextSource.sentences sorts them
    ids = torch.randint(4, 256, (6, 12), generator=g)
    mask = (torch.arange(12)[None] < lengths[:, None]).long()
    s = Sentences(ids * mask, mask, torch.zeros_like(ids), mask.bool())
    sent = sent_activations(half, s, 0.0, seed=0)  # chunks of 64, each trimmed to its longest member
    for i, n in enumerate(lengths.tolist()):
        alone = half(s.input_ids[i : i + 1, :n], mask[i : i + 1, :n], s.token_type_ids[i : i + 1, :n])
        assert torch.allclose(sent[i, :n], alone[0], atol=1e-5)
    parts = [(index, part.input_ids.shape[1]) for index, part in s.chunks(4)]
    assert parts == [(slice(0, 4), 8), (slice(4, 8), 12)]
