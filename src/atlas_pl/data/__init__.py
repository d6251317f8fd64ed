"""Data layer: task registry, GLUE / synthetic loading, tokenization cache, partitioning, metrics.

Nothing here imports Lightning or `datasets` at import time (the hub reader imports `datasets` lazily).
The names below load on first use (PEP 562), so `atlas_pl.data.errors` or `atlas_pl.data.glue` can be
imported by the config checks without pulling in torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_WHERE = {
    "DataError": "atlas_pl.data.errors",
    "ClientData": "atlas_pl.data.federated",
    "FederatedData": "atlas_pl.data.federated",
    "build_federated_data": "atlas_pl.data.federated",
    "check_task_names": "atlas_pl.data.federated",
    "TextExamples": "atlas_pl.data.glue",
    "load_glue_split": "atlas_pl.data.glue",
    "read_glue_tsv": "atlas_pl.data.glue",
    "HashTokenizer": "atlas_pl.data.hash_tokenizer",
    "compute_metrics": "atlas_pl.data.metrics",
    "partition_indices": "atlas_pl.data.partition",
    "make_synthetic_split": "atlas_pl.data.synthetic",
    "max_synthetic_tasks": "atlas_pl.data.synthetic",
    "GLUE_TASKS": "atlas_pl.data.tasks",
    "LOCAL_TASKS": "atlas_pl.data.tasks",
    "TaskSpec": "atlas_pl.data.tasks",
    "is_synthetic": "atlas_pl.data.tasks",
    "task_spec": "atlas_pl.data.tasks",
    "cached_tokenize": "atlas_pl.data.tokenize_cache",
    "file_fingerprint": "atlas_pl.data.tokenize_cache",
    "fingerprint_examples": "atlas_pl.data.tokenize_cache",
    "tokenize_examples": "atlas_pl.data.tokenize_cache",
    "TokenDataset": "atlas_pl.data.tokenized",
    "TokenizedExamples": "atlas_pl.data.tokenized",
    "collate_trim": "atlas_pl.data.tokenized",
    "shuffled_loader": "atlas_pl.data.tokenized",
    "take_rows": "atlas_pl.data.tokenized",
}

if TYPE_CHECKING:
    from atlas_pl.data.errors import DataError
    from atlas_pl.data.federated import ClientData, FederatedData, build_federated_data, check_task_names
    from atlas_pl.data.glue import TextExamples, load_glue_split, read_glue_tsv
    from atlas_pl.data.hash_tokenizer import HashTokenizer
    from atlas_pl.data.metrics import compute_metrics
    from atlas_pl.data.partition import partition_indices
    from atlas_pl.data.synthetic import make_synthetic_split, max_synthetic_tasks
    from atlas_pl.data.tasks import GLUE_TASKS, LOCAL_TASKS, TaskSpec, is_synthetic, task_spec
    from atlas_pl.data.tokenize_cache import (
        cached_tokenize,
        file_fingerprint,
        fingerprint_examples,
        tokenize_examples,
    )
    from atlas_pl.data.tokenized import (
        TokenDataset,
        TokenizedExamples,
        collate_trim,
        shuffled_loader,
        take_rows,
    )


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'atlas_pl.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


__all__ = [
    "GLUE_TASKS",
    "LOCAL_TASKS",
    "ClientData",
    "DataError",
    "FederatedData",
    "HashTokenizer",
    "TaskSpec",
    "TextExamples",
    "TokenDataset",
    "TokenizedExamples",
    "build_federated_data",
    "cached_tokenize",
    "check_task_names",
    "collate_trim",
    "compute_metrics",
    "file_fingerprint",
    "fingerprint_examples",
    "is_synthetic",
    "shuffled_loader",
    "take_rows",
    "load_glue_split",
    "make_synthetic_split",
    "max_synthetic_tasks",
    "partition_indices",
    "read_glue_tsv",
    "task_spec",
    "tokenize_examples",
]
