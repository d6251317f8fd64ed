"""Who is there and how fast, round by round (pure functions, no Lightning): DESIGN.md §10's faults.

Edge devices come and go and some run slow (thermal limits, a user on the phone, a weak link). A round's
faults are drawn from the job's seed and the round number alone, not from what happened before, so a
resumed job draws the same faults as an uninterrupted one, and two ablations of one seed face the same
absences (a paired comparison).

The model, stated:
- absence: each client (with its device) is absent for the whole round with probability `drop`,
  independently across clients and rounds. An absent device neither trains nor hosts; what it hosted for
  others is lost with it (they re-pair); its own state is kept and it rejoins when drawn present.
- stragglers: each present device straggles with probability `straggle`; a straggler computes and sends
  `factor` times slower, `factor` log-uniform on [low, high] (so 2x and 4x are as likely as 4x and 8x:
  slowdowns spread over orders of magnitude, as measured device traces do).
- deadline: a round closes at `deadline` simulated seconds, or at a multiple of the median client's path
  (what a coordinator that knows the usual round length would set). A host that cannot finish its own
  half and its guests' segments by then is "too slow" and its guests re-pair; a client whose own path
  misses it is late: left out of the round's aggregation, or (`late=partial`) it trains only the steps
  that fit and contributes those.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

_STREAM = 0xFA175  # separates fault draws from every other seeded stream of the job


@dataclass(frozen=True)
class RoundFaults:
    """One round's draw: who is absent, and each present straggler's slowdown factor (> 1)."""

    round: int
    absent: frozenset[int]
    slowdown: dict[int, float]

    def factor(self, client: int) -> float:
        return self.slowdown.get(client, 1.0)


def draw_faults(
    seed: int,
    round_index: int,
    clients: Sequence[int],
    *,
    drop: float,
    straggle: float,
    slowdown: tuple[float, float],
) -> RoundFaults:
    """The round's absences and slowdowns for `clients` (indices), from (seed, round, client) alone.

    Each client has its own stream and the same three draws whatever the probabilities, so raising
    `drop` never changes who straggles among those still present, and which other clients take part
    (Phase 2 drops, another ablation) never changes a client's draws."""
    if not 0.0 <= drop < 1.0 or not 0.0 <= straggle <= 1.0:
        raise ValueError(f"drop must be in [0, 1) and straggle in [0, 1]; got {drop}, {straggle}")
    low, high = slowdown
    if not 1.0 <= low <= high:
        raise ValueError(f"slowdown bounds must satisfy 1 <= low <= high; got {slowdown}")
    absent, slow = set(), {}
    for k in clients:
        u_drop, u_slow, u_factor = np.random.default_rng([seed, round_index, _STREAM, int(k)]).random(3)
        if u_drop < drop:
            absent.add(int(k))
        elif u_slow < straggle and high > 1.0:
            slow[int(k)] = math.exp(math.log(low) + u_factor * (math.log(high) - math.log(low)))
    return RoundFaults(round_index, frozenset(absent), slow)


def deadline_seconds(
    paths: Mapping[int, float], *, seconds: float | None, median_multiple: float | None
) -> float | None:
    """The round's deadline: fixed seconds, or a multiple of the median path among `paths` (None:
    rounds wait for everyone)."""
    if seconds is not None:
        return seconds
    if median_multiple is None or not paths:
        return None
    return median_multiple * statistics.median(paths.values())


def too_slow_hosts(busy: Mapping[int, float], hosting: Sequence[int], deadline: float | None) -> set[int]:
    """Hosts whose work this round (own half plus hosted segments, at their slowed speed) ends after
    the deadline: their guests are moved rather than made late with them."""
    if deadline is None:
        return set()
    return {h for h in hosting if busy.get(h, 0.0) > deadline}


def late_clients(paths: Mapping[int, float], deadline: float | None) -> set[int]:
    """Clients whose round path ends after the deadline."""
    if deadline is None:
        return set()
    return {k for k, seconds in paths.items() if seconds > deadline}


def steps_by_deadline(path: float, steps: int, deadline: float) -> int:
    """Steps of a `steps`-step round done by the deadline: each step costs the same time on a path
    (compute and exchange per step), so the share of the path that fits is the share of the steps."""
    if path <= deadline:
        return steps
    return max(0, math.floor(steps * deadline / path))


def parse_deadline(value: Any) -> tuple[float | None, float | None]:
    """faults.deadline: a number of simulated seconds, "<m>x" (m times the median client), or null;
    returns (seconds, multiple). Raises ValueError on anything else."""
    if value is None:
        return None, None
    if isinstance(value, str) and value.strip().lower().endswith("x"):
        return None, float(value.strip()[:-1])
    if isinstance(value, bool):
        raise ValueError(value)
    return float(value), None
