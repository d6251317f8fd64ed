"""How a party writes an aggregated update into the factors it holds (either half, same rule)."""

from __future__ import annotations

import torch

from atlas_pl.models.lora import LoRAAdapter
from atlas_pl.parties.messages import AdapterUpdate


@torch.no_grad()
def apply_factors(
    adapter: LoRAAdapter, update: AdapterUpdate, optimizer: torch.optim.Optimizer | None
) -> None:
    """Copy the update's factors for the modules this adapter holds (others belong to the other half).

    The SVD expresses an update in a new basis, so AdamW's moments (per coordinate of the old basis) no
    longer describe the rewritten factors: their state is dropped. `reset_optimizer` drops all of it.
    """
    if update.reset_optimizer and optimizer is not None:
        optimizer.state.clear()
    for key, (new_a, new_b) in update.factors.items():
        if key not in adapter.keys:
            continue
        a, b = adapter.pair(key)
        a.copy_(new_a)
        b.copy_(new_b)
        if optimizer is not None:
            optimizer.state.pop(a, None)
            optimizer.state.pop(b, None)
