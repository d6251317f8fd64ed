"""Build every client's training data and the shared per-task evaluation sets for one run."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from atlas_pl.data.custom import CustomTask
from atlas_pl.data.custom_reader import load_custom_split
from atlas_pl.data.errors import DataError
from atlas_pl.data.glue import load_glue_split
from atlas_pl.data.partition import kept_rows, partition_indices, personal_split
from atlas_pl.data.synthetic import make_synthetic_split
from atlas_pl.data.tasks import (
    TaskSpec,
    is_synthetic,
    register_custom_tasks,
    synthetic_index,
    task_spec,
    valid_task_names,
)
from atlas_pl.data.tokenize_cache import cached_tokenize, file_fingerprint, fingerprint_examples
from atlas_pl.data.tokenized import TokenizedExamples

log = logging.getLogger(__name__)


@dataclass
class ClientData:
    """One simulated client: which task it serves and its private training examples."""

    client_id: int
    task: str
    train: TokenizedExamples
    num_samples: int
    indices: np.ndarray | None = None  # rows of the task's full training split, for audits and tests
    personal: TokenizedExamples | None = None  # its own held-out rows (data.personal_share), same mix
    personal_indices: np.ndarray | None = None


@dataclass
class FederatedData:
    """All clients (numbered in task order) plus one held-out evaluation set per task."""

    clients: list[ClientData]
    eval: dict[str, TokenizedExamples]
    specs: dict[str, TaskSpec]

    @property
    def tasks(self) -> list[str]:
        return list(self.specs)

    def clients_of(self, task: str) -> list[ClientData]:
        return [c for c in self.clients if c.task == task]


def check_task_names(tasks: list[str]) -> None:
    """Fail fast (before models or data load) on unknown, duplicate or empty task lists."""
    if isinstance(tasks, str) or not list(tasks):
        raise DataError(f"tasks must be a non-empty list of task names; valid tasks: {valid_task_names()}")
    bad = []
    for name in tasks:
        try:
            task_spec(name)
        except DataError:
            bad.append(name)
    if bad:
        raise DataError(f"unknown task name(s) {bad}; valid tasks: {valid_task_names()}")
    dupes = sorted({t for t in tasks if list(tasks).count(t) > 1})
    if dupes:
        raise DataError(f"duplicate task name(s) {dupes}; each task may appear once in the task list")


def derive_seed(seed: int, *parts: object) -> int:
    """A stable per-purpose seed, so e.g. a task's partition does not depend on the task order."""
    digest = hashlib.blake2b(repr((int(seed), *map(str, parts))).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def build_federated_data(
    *,
    tasks: list[str],
    clients_per_task: int,
    tokenizer: Any,
    model_key: str,
    max_len: int,
    samples_per_client: int | None,
    eval_samples: int | None,
    partition: str,
    dirichlet_alpha: float,
    glue_dir: str | None,
    source: str,
    cache_dir: Path,
    seed: int,
    vocab_size: int | None = None,
    synthetic_train_size: int = 2000,
    synthetic_eval_size: int = 400,
    custom_tasks: Mapping[str, CustomTask] | None = None,
    datasets_cache: Path | None = None,
    personal_share: float = 0.0,
) -> FederatedData:
    """Load, tokenize and partition each task; clients are numbered task by task (task 0's first).

    `custom_tasks` defines the tasks of `tasks` that come from the user's files (task.custom);
    `datasets_cache` is where `datasets` keeps its parsed copies of those files. `personal_share` > 0
    holds that share of each client's rows out as its personal test set (partition.personal_split);
    0 leaves every client's rows exactly as before personal sets existed.

    Under `partition="quantity"` `samples_per_client` is the MEAN training size, not a cap (clients'
    sizes are skewed around it, the task's total matching "iid" at the same value); see `_partition_cap`.
    """
    custom = dict(custom_tasks or {})
    register_custom_tasks(t.spec for t in custom.values())
    check_task_names(tasks)
    if clients_per_task < 1:
        raise DataError(f"clients_per_task must be >= 1, got {clients_per_task}")
    if samples_per_client is not None and samples_per_client < 1:
        raise DataError(f"samples_per_client must be >= 1 or None, got {samples_per_client}")
    if eval_samples is not None and eval_samples < 1:
        raise DataError(f"eval_samples must be >= 1 or None, got {eval_samples}")

    clients: list[ClientData] = []
    evals: dict[str, TokenizedExamples] = {}
    specs: dict[str, TaskSpec] = {}
    for task in tasks:
        specs[task] = task_spec(task)
        if is_synthetic(task):
            train, valid = _synthetic(
                task, vocab_size, tokenizer, max_len, seed, synthetic_train_size, synthetic_eval_size
            )
        elif task in custom:
            train, valid = (
                _custom(custom[task], split, tokenizer, model_key, max_len, cache_dir, datasets_cache)
                for split in ("train", "validation")
            )
        else:
            train, valid = (
                _glue(task, split, tokenizer, model_key, max_len, glue_dir, source, cache_dir)
                for split in ("train", "validation")
            )
        labels = train.labels.numpy()
        parts = partition_indices(
            labels,
            clients_per_task,
            scheme=partition,
            alpha=dirichlet_alpha,
            cap=_partition_cap(partition, samples_per_client, personal_share),
            seed=derive_seed(seed, task, "partition"),
        )
        for part in parts:
            k = len(clients)
            if not personal_share:
                clients.append(ClientData(k, task, train.subset(part), int(len(part)), part))
                continue
            rows, held = personal_split(
                part,
                labels,
                share=personal_share,
                cap=None if partition == "quantity" else samples_per_client,
                seed=derive_seed(seed, "personal", k),
            )
            clients.append(
                ClientData(k, task, train.subset(rows), int(len(rows)), rows, train.subset(held), held)
            )
        evals[task] = _eval_subset(valid, eval_samples, derive_seed(seed, task, "eval"))
        log.info(
            "data %s: %d train -> %d clients x %s%s, eval %d",
            task,
            len(train),
            clients_per_task,
            "mean " if partition == "quantity" else "<=",
            samples_per_client,
            len(evals[task]),
        )
    return FederatedData(clients, evals, specs)


def _partition_cap(partition: str, samples_per_client: int | None, personal_share: float) -> int | None:
    """The `cap` partition_indices gets: a per-client cap for iid/dirichlet, the mean size for quantity.

    iid/dirichlet with personal sets are split uncapped and personal_split then keeps
    `kept_rows(samples_per_client, share)` rows of each client, so each still trains on
    `samples_per_client`. A quantity client's whole partition is its data (personal_split must not trim
    it, or the size skew would be cut off at the top), so the analogous budget is set here instead: a
    mean of `kept_rows(...)` rows, leaving a mean training size of ~`samples_per_client` and the same
    total training data as iid, with or without personal sets."""
    if partition == "quantity":
        if samples_per_client is None or not personal_share:
            return samples_per_client
        return kept_rows(samples_per_client, personal_share)
    return None if personal_share else samples_per_client


def _synthetic(
    task: str, vocab_size: int | None, tokenizer: Any, max_len: int, seed: int, n_train: int, n_eval: int
) -> tuple[TokenizedExamples, TokenizedExamples]:
    vocab = vocab_size or getattr(tokenizer, "vocab_size", None)
    if not vocab:
        raise DataError(f"synthetic task {task!r} needs vocab_size (the model's vocabulary size)")
    index = synthetic_index(task)
    kwargs = {"vocab_size": int(vocab), "seq_len": int(max_len), "seed": int(seed)}
    return (
        make_synthetic_split(index, n_train, split="train", **kwargs),
        make_synthetic_split(index, n_eval, split="validation", **kwargs),
    )


def _glue(
    task: str,
    split: str,
    tokenizer: Any,
    model_key: str,
    max_len: int,
    glue_dir: str | None,
    source: str,
    cache_dir: Path,
) -> TokenizedExamples:
    if tokenizer is None:
        raise DataError(f"GLUE task {task!r} needs a tokenizer")
    text = load_glue_split(task, split, glue_dir, source)
    return cached_tokenize(
        tokenizer,
        text,
        cache_dir=Path(cache_dir),
        model_key=model_key,
        task=task,
        split=split,
        max_len=max_len,
        source_fingerprint=fingerprint_examples(text),
    )


def _custom(
    task: CustomTask,
    split: str,
    tokenizer: Any,
    model_key: str,
    max_len: int,
    cache_dir: Path,
    datasets_cache: Path | None,
) -> TokenizedExamples:
    """A custom task's split, tokenized through the cache.

    The entry is named by the task and a hash of its definition (files, columns, label order), and
    stamped with the file's content hash and the examples' own: an edited file, or the same name with
    other files, re-tokenizes instead of being served stale ids."""
    if tokenizer is None:
        raise DataError(f"custom task {task.name!r} needs a tokenizer")
    text = load_custom_split(task, split, datasets_cache)
    origin = f"hub:{task.where(split)}" if task.hub else f"sha256:{file_fingerprint(task.source(split))}"
    return cached_tokenize(
        tokenizer,
        text,
        cache_dir=Path(cache_dir),
        model_key=model_key,
        task=f"custom-{task.name}-{task.digest()}",
        split=split,
        max_len=max_len,
        source_fingerprint=f"{origin}:{fingerprint_examples(text)}",
    )


def _eval_subset(valid: TokenizedExamples, eval_samples: int | None, seed: int) -> TokenizedExamples:
    """A fixed seeded subset (kept in file order), so every method is scored on the same examples."""
    if eval_samples is None or eval_samples >= len(valid):
        return valid
    rng = np.random.default_rng(seed)
    return valid.subset(np.sort(rng.choice(len(valid), size=eval_samples, replace=False)))
