"""Scoring a model on a task's validation data, whatever computes its logits.

Evaluation was ~40% of a default-job round when it ran file-order batches of 32 padded to their longest
sentence. Here the examples are sorted by length and cut into batches of about `EVAL_TOKENS` real
tokens each (short sentences make wide batches, long ones narrow), so almost no padding is computed and
the matmuls are large; the forward runs under `torch.inference_mode`. Metrics do not depend on the order
(with privacy.activation_noise, on the noise each batch draws: the same on every scoring, from the seed).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from atlas_pl.data import TokenizedExamples, compute_metrics, take_rows
from atlas_pl.data.metrics import confusion_counts
from atlas_pl.data.tasks import task_spec
from atlas_pl.models.split import SplitClientModel

Forward = Callable[[dict[str, Tensor]], Tensor]  # a batch -> logits

EVAL_TOKENS = 8192  # tokens per evaluation batch: large matmuls, a few MB of activations on MiniLM


def length_sorted_batches(
    data: TokenizedExamples, *, max_tokens: int = EVAL_TOKENS, max_batch: int = 1024
) -> Iterator[tuple[Tensor, dict[str, Tensor]]]:
    """(indices, batch) over `data` by increasing length, each batch trimmed to its longest member.

    A batch holds up to `max_tokens // length` sequences (at least one, at most `max_batch`), so its
    padded size stays about `max_tokens` whatever the lengths are.
    """
    lengths = data.attention_mask.sum(dim=1)
    order = torch.argsort(lengths, stable=True)
    start, n = 0, len(data)
    while start < n:
        # the batch's length is its last (longest) member's; grow while the padded size fits
        size = 1
        while start + size < n and size < max_batch:
            longest = max(1, int(lengths[order[start + size]]))
            if (size + 1) * longest > max_tokens:
                break
            size += 1
        index = order[start : start + size]
        yield index, take_rows(data, index)
        start += size


@torch.inference_mode()
def evaluate(
    forward: Forward, task: str, data: TokenizedExamples, *, batch_size: int, device: torch.device
) -> dict[str, float]:
    """Metrics (accuracy, primary, f1/mcc where defined), mean loss and the confusion counts
    (`confusion_<true>_<predicted>`, which a task's pooled personal score sums) of `forward` on `data`.

    The caller puts its modules in eval mode (dropout off) for the duration. `batch_size` caps the
    sequences per batch; the token budget usually binds first.
    """
    preds = np.empty(len(data), dtype=np.int64)
    loss_sum = 0.0
    for index, batch in length_sorted_batches(data, max_batch=max(1, batch_size)):
        batch = {k: v.to(device) for k, v in batch.items()}
        logits = forward(batch).float()
        loss_sum += float(F.cross_entropy(logits, batch["labels"], reduction="sum"))
        preds[index.numpy()] = logits.argmax(-1).cpu().numpy()
    y_true = data.labels.numpy()
    metrics = compute_metrics(task, preds, y_true)
    metrics["loss"] = loss_sum / max(1, len(y_true))
    metrics.update(confusion_counts(preds, y_true, task_spec(task).num_labels))
    return metrics


def model_digest(model: SplitClientModel) -> str:
    """A hash of the function a client's model computes: its LoRA factors per (block, module) and head.

    The split point is left out on purpose: the client half's output enters the server half unchanged,
    so two clients with the same factors compute the same logits whatever their split. After cluster
    averaging many clients hold identical models; evaluating one per digest gives the others' metrics.
    """
    digest = hashlib.blake2b(digest_size=16)
    for half in (model.client, model.server):
        adapter = half.adapter
        for key in adapter.keys:
            a, b = adapter.pair(key)
            _hash_tensors(digest, {f"{key}/A/{adapter.scaling(key[0])}": a, f"{key}/B": b})
    _hash_tensors(digest, model.server.head.state_dict())
    return digest.hexdigest()


def _hash_tensors(digest: Any, tensors: Mapping[str, Tensor]) -> None:
    """Each tensor's name, dtype, shape and bytes into `digest`."""
    for name, tensor in tensors.items():
        digest.update(repr((name, tensor.dtype, tuple(tensor.shape))).encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
