"""Exact communication accounting from the tensors actually sent (DESIGN.md §4)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from torch import Tensor


def nbytes(tensors: Iterable[Tensor]) -> int:
    """Bytes on the wire for these tensors at their own dtype (no compression assumed)."""
    return sum(t.numel() * t.element_size() for t in tensors)


class CommMeter:
    """Per-client, per-round upload/download byte counters, split by what was sent."""

    def __init__(self) -> None:
        self.round = 0
        self._up: dict[tuple[int, int], dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self._down: dict[tuple[int, int], dict[str, int]] = defaultdict(lambda: defaultdict(int))

    def start_round(self, round_index: int) -> None:
        self.round = round_index

    def upload(self, client: int, kind: str, tensors: Iterable[Tensor]) -> int:
        size = nbytes(tensors)
        self._up[(self.round, client)][kind] += size
        return size

    def download(self, client: int, kind: str, tensors: Iterable[Tensor]) -> int:
        size = nbytes(tensors)
        self._down[(self.round, client)][kind] += size
        return size

    def upload_bytes(self, round_index: int, client: int) -> int:
        return sum(self._up[(round_index, client)].values())

    def download_bytes(self, round_index: int, client: int) -> int:
        return sum(self._down[(round_index, client)].values())

    def breakdown(self, round_index: int, client: int) -> dict[str, dict[str, int]]:
        return {
            "upload": dict(self._up[(round_index, client)]),
            "download": dict(self._down[(round_index, client)]),
        }

    def totals(self) -> dict[str, int]:
        return {
            "upload_bytes": sum(sum(v.values()) for v in self._up.values()),
            "download_bytes": sum(sum(v.values()) for v in self._down.values()),
        }

    def to_json(self) -> dict[str, list[list]]:
        """Every counter as [round, client, kind, bytes] rows (what a checkpoint stores)."""
        return {
            name: [[r, c, kind, size] for (r, c), kinds in table.items() for kind, size in kinds.items()]
            for name, table in (("upload", self._up), ("download", self._down))
        }

    def load_json(self, payload: dict[str, list[list]]) -> None:
        """Replace every counter by what `to_json` wrote."""
        self._up.clear()
        self._down.clear()
        for name, table in (("upload", self._up), ("download", self._down)):
            for r, c, kind, size in payload[name]:
                table[(int(r), int(c))][str(kind)] = int(size)
