"""Faults (phases/availability.py): seeded, independent of history, and the deadline rules."""

from __future__ import annotations

import math

import pytest

from atlas_pl.phases.availability import (
    deadline_seconds,
    draw_faults,
    late_clients,
    parse_deadline,
    steps_by_deadline,
    too_slow_hosts,
)

CLIENTS = list(range(200))


def _draw(round_index: int = 3, **kw):
    args = {"drop": 0.3, "straggle": 0.2, "slowdown": (2.0, 8.0), **kw}
    return draw_faults(7, round_index, CLIENTS, **args)


def test_a_round_s_faults_depend_on_the_seed_and_round_alone() -> None:
    assert _draw() == _draw()  # resume draws what the uninterrupted job drew
    assert _draw(4) != _draw(3)
    assert draw_faults(8, 3, CLIENTS, drop=0.3, straggle=0.2, slowdown=(2.0, 8.0)) != _draw()
    # a client draws the same whoever else takes part (a Phase 2 drop, another ablation)
    some = CLIENTS[::3]
    assert draw_faults(7, 3, some, drop=0.3, straggle=0.2, slowdown=(2.0, 8.0)).absent == {
        k for k in _draw().absent if k in some
    }


def test_rates_and_factors_follow_the_stated_distribution() -> None:
    rounds = [_draw(r) for r in range(1, 21)]
    absent = sum(len(f.absent) for f in rounds) / (20 * len(CLIENTS))
    assert abs(absent - 0.3) < 0.03
    slow = [f for r in rounds for f in r.slowdown.values()]
    assert abs(len(slow) / (20 * len(CLIENTS) * 0.7) - 0.2) < 0.03  # among the present
    assert all(2.0 <= f <= 8.0 for f in slow)
    # log-uniform: half the factors below the geometric middle, 4
    assert abs(sum(f < 4.0 for f in slow) / len(slow) - 0.5) < 0.06
    assert all(not (set(r.slowdown) & r.absent) for r in rounds)


def test_raising_drop_only_removes_clients_and_keeps_the_stragglers_factors() -> None:
    low, high = _draw(drop=0.1), _draw(drop=0.4)
    assert low.absent <= high.absent
    assert {k: f for k, f in low.slowdown.items() if k not in high.absent} == high.slowdown


def test_no_faults_draws_nothing() -> None:
    none = _draw(drop=0.0, straggle=0.0)
    assert none.absent == frozenset() and none.slowdown == {}


@pytest.mark.parametrize("bad", [{"drop": 1.0}, {"drop": -0.1}, {"straggle": 1.5}, {"slowdown": (0.5, 2.0)}])
def test_out_of_range_settings_are_refused(bad) -> None:
    with pytest.raises(ValueError):
        _draw(**bad)


def test_deadline_rules() -> None:
    paths = {0: 1.0, 1: 2.0, 2: 10.0}
    assert deadline_seconds(paths, seconds=None, median_multiple=None) is None
    assert deadline_seconds(paths, seconds=3.0, median_multiple=None) == 3.0
    assert deadline_seconds(paths, seconds=None, median_multiple=1.5) == 3.0  # 1.5 x median 2.0
    assert late_clients(paths, 3.0) == {2} and late_clients(paths, None) == set()
    assert too_slow_hosts({0: 1.0, 1: 5.0}, [0, 1], 3.0) == {1}
    assert too_slow_hosts({0: 1.0, 1: 5.0}, [0, 1], None) == set()
    assert steps_by_deadline(10.0, 25, 3.0) == 7 and steps_by_deadline(2.0, 25, 3.0) == 25
    assert steps_by_deadline(100.0, 25, 3.0) == 0


def test_deadline_parsing() -> None:
    assert parse_deadline(None) == (None, None)
    assert parse_deadline(12) == (12.0, None)
    assert parse_deadline("2x") == (None, 2.0) and parse_deadline("1.5X") == (None, 1.5)
    for bad in ("soon", True, [1]):
        with pytest.raises((ValueError, TypeError)):
            parse_deadline(bad)
    assert math.isnan(parse_deadline("nanx")[1])  # caught by the config check (m > 0, finite)
