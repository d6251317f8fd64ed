"""Token-id tensors for one split, a Dataset over them, and a collate that drops padding columns."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from atlas_pl.data.errors import DataError

SEQ_KEYS = ("input_ids", "attention_mask", "token_type_ids")
KEYS = (*SEQ_KEYS, "labels")


@dataclass
class TokenizedExamples:
    """Right-padded `[N, T]` int64 id / mask / segment tensors and `[N]` int64 labels."""

    input_ids: Tensor
    attention_mask: Tensor
    token_type_ids: Tensor
    labels: Tensor

    def __post_init__(self) -> None:
        shape = tuple(self.input_ids.shape)
        if len(shape) != 2:
            raise DataError(f"TokenizedExamples: input_ids must be [N, T], got {shape}")
        for key in KEYS:
            value = getattr(self, key)
            if not isinstance(value, Tensor) or value.dtype != torch.long:
                raise DataError(f"TokenizedExamples.{key}: expected an int64 torch tensor, got {type(value)}")
            want = shape if key in SEQ_KEYS else shape[:1]
            if tuple(value.shape) != want:
                raise DataError(f"TokenizedExamples.{key}: expected shape {want}, got {tuple(value.shape)}")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.input_ids.shape[1])

    def subset(self, indices: Sequence[int] | np.ndarray | Tensor) -> TokenizedExamples:
        """Rows `indices` in that order (copies, so a client's slice never aliases another's)."""
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64).reshape(-1))
        return TokenizedExamples(**{key: getattr(self, key)[idx].clone() for key in KEYS})

    def as_dict(self) -> dict[str, Tensor]:
        return {key: getattr(self, key) for key in KEYS}


class TokenDataset(torch.utils.data.Dataset):
    """Map-style dataset yielding one dict of tensors per example, as `collate_trim` expects."""

    def __init__(self, examples: TokenizedExamples) -> None:
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        ex = self.examples
        return {
            "input_ids": ex.input_ids[index],
            "attention_mask": ex.attention_mask[index],
            "token_type_ids": ex.token_type_ids[index],
            "labels": ex.labels[index],
        }


class EpochShuffle(torch.utils.data.Sampler[int]):
    """A permutation of range(n) that is a function of (seed, epoch, pass) only.

    A stateful generator would make the order depend on how often the training loop calls `iter()`:
    Lightning creates and discards an extra iterator when a fit resumes, which advanced the shared
    generator and shifted every later epoch, so no other loop (the batched engine, a bare benchmark, a
    resumed job) could reproduce the order. Here the loop only names the epoch (`set_epoch`, which
    Lightning calls at each epoch start); a permutation is drawn when its iterator first yields, so an
    iterator that is discarded unused changes nothing. `pass` counts the loader's full or partial
    iterations within an epoch (a shorter loader cycled by a CombinedLoader gets a fresh order each time).
    """

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed = n, seed
        self.epoch, self.passes = 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.passes = int(epoch), 0

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        from atlas_pl.data.federated import derive_seed  # federated builds on this module

        seed = derive_seed(self.seed, "epoch", self.epoch, self.passes)
        self.passes += 1
        yield from torch.randperm(self.n, generator=torch.Generator().manual_seed(seed)).tolist()


def shuffled_loader(data: TokenizedExamples, *, batch_size: int, seed: int) -> torch.utils.data.DataLoader:
    """A client's shuffled, padding-trimmed minibatches, in an order fixed by `seed` and the epoch alone.

    The order leaves the global RNG untouched, so one consumer (e.g. fingerprinting) never shifts
    another's (training) batches. A loop other than Lightning's calls `loader.sampler.set_epoch(e)` before
    epoch e, as Lightning does. The loader's own generator only seeds worker processes.
    """
    return torch.utils.data.DataLoader(
        TokenDataset(data),
        batch_size=batch_size,
        sampler=EpochShuffle(len(data), seed),
        collate_fn=collate_trim,
        generator=torch.Generator().manual_seed(seed),
    )


def collate_trim(batch: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Stack a batch and cut the padding columns beyond its longest sequence.

    Examples are padded to the task's max length once, at tokenization; most batches are much shorter,
    and attention cost grows with the padded length, so trimming per batch saves real compute.
    Assumes right padding: only columns after the last real token anywhere in the batch are removed.
    """
    if not batch:
        raise DataError("collate_trim: empty batch")
    return _trim_padding({key: torch.stack([item[key] for item in batch]) for key in batch[0]})


def take_rows(data: TokenizedExamples, index: Tensor) -> dict[str, Tensor]:
    """The examples at `index` as one batch, trimmed like `collate_trim` (gathered, not item by item)."""
    return _trim_padding({key: getattr(data, key)[index] for key in KEYS})


def _trim_padding(out: dict[str, Tensor]) -> dict[str, Tensor]:
    """Cut the columns after the last real token anywhere in the batch (right padding)."""
    mask = out.get("attention_mask")
    if mask is None:
        return out
    used = torch.nonzero(mask.any(dim=0)).flatten()
    length = int(used[-1]) + 1 if used.numel() else 1
    for key in SEQ_KEYS:
        if key in out and out[key].dim() == 2:
            out[key] = out[key][:, :length].contiguous()
    return out
