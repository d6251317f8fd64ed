"""What atlas_pl's messages become on Flower's wire: tensors in ArrayRecords, the rest as JSON text.

ArrayRecord carries numpy arrays, which have no bfloat16: bf16 (and fp16) tensors travel as float32,
with their dtype written beside them so the receiver casts back exactly (fp32 holds every bf16 value);
0-d tensors (AdamW's step) are marked too, as an Array comes back at least 1-d.
Structured values (an update's module keys, ledger rows, the job's config) go as one JSON string in a
ConfigRecord, which keeps nested lists and mixed types that records cannot hold directly.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from atlas_pl.parties.messages import AdapterUpdate

WIDENED = {torch.bfloat16: "bfloat16", torch.float16: "float16"}
NARROW = {name: dtype for dtype, name in WIDENED.items()}
JSON_KEY = "json"


def to_arrays(tensors: Mapping[str, torch.Tensor]) -> tuple[ArrayRecord, dict[str, dict[str, Any]]]:
    """The tensors as an ArrayRecord, and how to restore those the wire changes: the original dtype of
    each one widened to float32, and `scalar` for 0-d tensors (an Array comes back at least 1-d)."""
    record = ArrayRecord()
    restore: dict[str, dict[str, Any]] = {}
    for name, tensor in tensors.items():
        value = tensor.detach().cpu()
        if value.dtype in WIDENED:
            restore.setdefault(name, {})["dtype"] = WIDENED[value.dtype]
            value = value.float()
        if value.dim() == 0:
            restore.setdefault(name, {})["scalar"] = True
        record[name] = Array(np.ascontiguousarray(value.numpy()))
    return record, restore


def from_arrays(
    record: ArrayRecord, restore: Mapping[str, Mapping[str, Any]] | None = None
) -> dict[str, torch.Tensor]:
    restore = restore or {}
    out = {}
    for name in record:
        tensor = torch.from_numpy(record[name].numpy().copy())
        how = restore.get(name, {})
        if "dtype" in how:
            tensor = tensor.to(NARROW[how["dtype"]])
        out[name] = tensor.reshape(()) if how.get("scalar") else tensor
    return out


def json_record(value: Any) -> ConfigRecord:
    return ConfigRecord({JSON_KEY: json.dumps(value)})


def read_json(content: RecordDict, key: str) -> Any:
    return json.loads(str(content[key][JSON_KEY]))


def put_tensors(content: RecordDict, key: str, tensors: Mapping[str, torch.Tensor]) -> None:
    """Tensors under `key`, how to restore them exactly under `key.dtypes`."""
    record, widened = to_arrays(tensors)
    content[key] = record
    content[f"{key}.dtypes"] = json_record(widened)


def get_tensors(content: RecordDict, key: str) -> dict[str, torch.Tensor]:
    record = content[key]
    if not isinstance(record, ArrayRecord):
        raise TypeError(f"{key}: expected an ArrayRecord, got {type(record).__name__}")
    return from_arrays(record, read_json(content, f"{key}.dtypes"))


# -- adapter updates: the coordinator's answers, delivered with a client's next message ------------------
def _factor_name(index: int, module: tuple[int, str], part: str) -> str:
    return f"{index}|{module[0]}|{module[1]}|{part}"


def put_updates(content: RecordDict, updates: list[AdapterUpdate]) -> None:
    """Updates in the order the coordinator made them (one per aggregated round not yet delivered)."""
    tensors: dict[str, torch.Tensor] = {}
    meta = []
    for i, update in enumerate(updates):
        for key, (a, b) in update.factors.items():
            tensors[_factor_name(i, key, "A")] = a
            tensors[_factor_name(i, key, "B")] = b
        for j, value in enumerate(update.head or []):
            tensors[f"{i}|head|{j}"] = value
        meta.append(
            {
                "client": update.client,
                "modules": [[int(k[0]), str(k[1])] for k in update.factors],
                "head": None if update.head is None else len(update.head),
                "reset_optimizer": update.reset_optimizer,
            }
        )
    put_tensors(content, "updates", tensors)
    content["updates.meta"] = json_record(meta)


def get_updates(content: RecordDict) -> list[AdapterUpdate]:
    if "updates.meta" not in content:
        return []
    tensors = get_tensors(content, "updates")
    updates = []
    for i, meta in enumerate(read_json(content, "updates.meta")):
        keys = [(int(block), str(path)) for block, path in meta["modules"]]
        factors = {k: (tensors[_factor_name(i, k, "A")], tensors[_factor_name(i, k, "B")]) for k in keys}
        heads = meta["head"]
        head = None if heads is None else [tensors[f"{i}|head|{j}"] for j in range(heads)]
        updates.append(AdapterUpdate(int(meta["client"]), factors, head, bool(meta["reset_optimizer"])))
    return updates
