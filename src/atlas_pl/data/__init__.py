"""Data layer: task registry, GLUE / synthetic loading, tokenization cache, partitioning, metrics.

Nothing here imports Lightning or `datasets` at import time (the hub reader imports `datasets` lazily).
"""

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
from atlas_pl.data.tokenized import TokenDataset, TokenizedExamples, collate_trim, shuffled_loader

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
    "load_glue_split",
    "make_synthetic_split",
    "max_synthetic_tasks",
    "partition_indices",
    "read_glue_tsv",
    "task_spec",
    "tokenize_examples",
]
