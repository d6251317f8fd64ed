"""Read the history of an offline W&B run directly from its `run-*.wandb` transaction log.

Recent wandb releases no longer ship a Python reader for this file, but tests and reports want to
check what an offline run recorded without syncing it. The file is a LevelDB-style log (32 KiB blocks
of checksummed, possibly fragmented records) holding serialized `wandb_internal_pb2.Record` messages.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

_BLOCK = 32 * 1024
_HEADER = 7  # checksum (4) + length (2) + type (1)
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _records(raw: bytes) -> list[bytes]:
    if raw[:4] != b":W&B":
        raise ValueError("not a W&B transaction log (missing ':W&B' header)")
    out: list[bytes] = []
    pos, pending = 7, b""
    while pos + _HEADER <= len(raw):
        left_in_block = _BLOCK - (pos % _BLOCK)
        if left_in_block < _HEADER:  # block trailer padding
            pos += left_in_block
            continue
        _, length, kind = struct.unpack("<IHB", raw[pos : pos + _HEADER])
        data = raw[pos + _HEADER : pos + _HEADER + length]
        pos += _HEADER + length
        if kind == _FULL:
            out.append(data)
        elif kind == _FIRST:
            pending = data
        elif kind == _MIDDLE:
            pending += data
        elif kind == _LAST:
            out.append(pending + data)
            pending = b""
        elif kind == 0 and length == 0:
            continue
    return out


def read_offline_run(run_dir: str | Path) -> dict[str, Any]:
    """Return {'history': [row dicts], 'id', 'group', 'job_type', 'tags', 'project'} of an offline run dir."""
    from wandb.proto import wandb_internal_pb2 as pb

    files = sorted(Path(run_dir).glob("run-*.wandb"))
    if not files:
        raise FileNotFoundError(f"no run-*.wandb file in {run_dir}")
    info: dict[str, Any] = {"history": []}
    for data in _records(files[0].read_bytes()):
        record = pb.Record()  # type: ignore[attr-defined]  # protobuf-generated: no stub names it
        record.ParseFromString(data)
        kind = record.WhichOneof("record_type")
        if kind == "history":
            row = {}
            for item in record.history.item:
                key = item.key or "/".join(item.nested_key)
                row[key] = json.loads(item.value_json)
            info["history"].append(row)
        elif kind == "run":
            info.update(
                id=record.run.run_id,
                group=record.run.run_group,
                job_type=record.run.job_type,
                tags=list(record.run.tags),
                project=record.run.project,
            )
    return info
