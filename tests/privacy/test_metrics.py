"""Recovery metrics and DCS against values worked out by hand."""

from __future__ import annotations

import math

import pytest

from atlas_pl.privacy.metrics import dcs, recovery, rouge_l, token_set_f1


def test_positional_accuracy_counts_positions_not_bags() -> None:
    # the second sentence has the right tokens in the wrong order: token-set F1 1, positions 0 of 3
    score = recovery([[1, 2, 3, 4], [5, 6, 7]], [[1, 2, 9, 4], [7, 5, 6]])
    assert score.accuracy == pytest.approx(3 / 7)
    assert score.tokens == 7 and score.sentences == 2
    assert score.token_f1 == pytest.approx((0.75 + 1.0) / 2)  # first: 3 of 4 distinct tokens both ways


def test_rouge_l_is_the_lcs_f_measure() -> None:
    # LCS of (1 2 3 4 5) and (1 3 5 9 9) is 1 3 5: P = R = 3/5
    assert rouge_l([1, 2, 3, 4, 5], [1, 3, 5, 9, 9]) == pytest.approx(0.6)
    assert rouge_l([1, 2], [3, 4]) == 0.0
    assert rouge_l([4, 5, 6], [4, 5, 6]) == 1.0


def test_token_set_f1_ignores_repeats_and_order() -> None:
    # sets {1, 2, 3} and {2, 3, 4}: 2 common, P = R = 2/3
    assert token_set_f1([1, 2, 2, 3], [4, 3, 2, 2]) == pytest.approx(2 / 3)


def test_recovery_refuses_misaligned_sentences() -> None:
    with pytest.raises(ValueError, match="2 tokens, its reference 3"):
        recovery([[1, 2, 3]], [[1, 2]])


def test_dcs_matches_hand_computed_values() -> None:
    # undefended: AP 0.95 at MP = MP*: 1 / (1 + sqrt(0.5 * 0.95^2)) = 0.5981
    assert dcs(0.95, 0.80, mp_star=0.80) == pytest.approx(1 / (1 + math.sqrt(0.5 * 0.95**2)))
    assert dcs(0.95, 0.80, mp_star=0.80) == pytest.approx(0.5981, abs=1e-4)
    # AP 0.2, MP 0.7 against MP* 0.8: sqrt(0.5 * 0.04 + 0.5 * 0.01) = 0.1581 -> 0.8635
    assert dcs(0.2, 0.7, mp_star=0.8) == pytest.approx(1 / (1 + math.sqrt(0.5 * 0.04 + 0.5 * 0.01)))
    assert dcs(0.2, 0.7, mp_star=0.8) == pytest.approx(0.8635, abs=1e-4)
    # one-sided: a defended run that scores above MP* gets no bonus; AP 0 at MP* is perfect
    assert dcs(0.2, 0.9, mp_star=0.8) == pytest.approx(1 / (1 + math.sqrt(0.5 * 0.04)))
    assert dcs(0.0, 0.8, mp_star=0.8) == 1.0
