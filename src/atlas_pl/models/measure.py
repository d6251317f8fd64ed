"""Measure what autograd really keeps for a client-half backward, to check the Phase 2 memory model.

CPU has no allocator peak to read, so the measurement is the set of tensors autograd saves during the
client forward (`torch.autograd.graph.saved_tensors_hooks`): exactly what the activation estimate models.
"""

from __future__ import annotations

import torch

from atlas_pl.models.split import SharedBackbone, SplitClientModel


def saved_activation_bytes(
    model: SplitClientModel, backbone: SharedBackbone, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> int:
    """Bytes autograd keeps for backward during the client forward: distinct storages, parameters excluded.

    Parameters (frozen base weights kept by linear backward, LoRA factors) are accounted as base and
    adapter state, not activations; views of one storage are counted once.
    """
    params = {p.untyped_storage().data_ptr() for p in [*backbone.model.parameters(), *model.parameters()]}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model.client(input_ids, attention_mask)
    return sum(storages.values())
