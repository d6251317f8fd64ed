"""The coordinator's copy of every server half, as it last received it (topology=p2p with faults).

Under p2p a client's server half lives on its peers. The coordinator sees it only when it aggregates
(the hosts upload the adapter and head, and the coordinator sends the result back), and at the start,
when it initialised the adapters. When a host goes absent, what it held is gone: the half restarts on
its new host from this copy, with fresh optimizer moments, and the steps trained since the copy are
lost. That loss is what `lost_steps` in metrics.jsonl measures (an ablation that never aggregates, such
as local_only, loses everything since round 1 each time a host drops).

An `nn.Module` of plain parameters so that round checkpoints carry it like any model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
from torch import nn

from atlas_pl.parties.host import ServerHost, half_parameters


class CoordinatorCopies(nn.Module):
    def __init__(self, host: ServerHost, clients: Sequence[int]) -> None:
        super().__init__()
        self.halves = nn.ModuleDict(
            {
                str(k): nn.ParameterList(
                    [
                        nn.Parameter(p.detach().clone())
                        for _, p in half_parameters(host.modules[k].server_half)
                    ]
                )
                for k in clients
            }
        )
        self.steps = {int(k): 0 for k in clients}  # the client's trained steps when the copy was taken

    def _copy(self, client: int) -> nn.ParameterList:
        return cast(nn.ParameterList, self.halves[str(client)])

    @torch.no_grad()
    def take(self, host: ServerHost, client: int, steps: int) -> None:
        """The coordinator received the half (aggregation): its copy is now the half as it is."""
        for copy, (_, p) in zip(self._copy(client), half_parameters(host.modules[client].server_half)):
            copy.copy_(p)
        self.steps[client] = steps

    @torch.no_grad()
    def restore(self, host: ServerHost, client: int, blocks: set[int], head: bool, steps: int) -> int:
        """Put these blocks (and the head) of the half back to the copy, without optimizer moments;
        returns the steps lost (trained since the copy). The half now matches the copy, so a second
        loss before it trains again loses nothing more."""
        module = host.modules[client]
        for copy, (block, p) in zip(self._copy(client), half_parameters(module.server_half)):
            if block in blocks or (block is None and head):
                p.copy_(copy)
                module.optimizer.state.pop(p, None)
        lost = max(0, steps - self.steps[client])
        self.steps[client] = steps
        return lost
