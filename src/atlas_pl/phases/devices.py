"""Assignment of device profiles to clients (pure, seeded)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def assign_devices(n_clients: int, mix: Sequence[str], *, seed: int, rule: str = "seeded") -> list[str]:
    """Give each client a device from the mix.

    `round_robin` cycles through the mix in order; `seeded` deals the same balanced multiset in a
    seeded random order, so every device type is represented whatever the client count, yet which
    client is weak is not tied to its task (clients are numbered task by task).
    """
    if not mix:
        raise ValueError("devices.mix is empty; name at least one device profile")
    dealt = [mix[k % len(mix)] for k in range(n_clients)]
    if rule == "round_robin":
        return dealt
    if rule != "seeded":
        raise ValueError(f"devices.assignment={rule!r}; valid: seeded, round_robin")
    order = np.random.default_rng(seed).permutation(n_clients)
    return [dealt[i] for i in order]
