"""Scoring a model on a task's validation data, whatever computes its logits."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from atlas_pl.data import TokenDataset, TokenizedExamples, collate_trim, compute_metrics

Forward = Callable[[dict[str, Tensor]], Tensor]  # a batch -> logits


@torch.no_grad()
def evaluate(
    forward: Forward, task: str, data: TokenizedExamples, *, batch_size: int, device: torch.device
) -> dict[str, float]:
    """Metrics (accuracy, primary, f1/mcc where defined) and mean loss of `forward` on `data`.

    The caller puts its modules in eval mode (dropout off) for the duration; batches come in file order.
    """
    loader = torch.utils.data.DataLoader(TokenDataset(data), batch_size=batch_size, collate_fn=collate_trim)
    preds, labels, loss_sum = [], [], 0.0
    for batch in loader:
        batch = {k: v.to(device) for k, v in batch.items()}
        logits = forward(batch)
        loss_sum += float(F.cross_entropy(logits, batch["labels"], reduction="sum"))
        preds.append(logits.argmax(-1).cpu().numpy())
        labels.append(batch["labels"].cpu().numpy())
    y_pred, y_true = np.concatenate(preds), np.concatenate(labels)
    metrics = compute_metrics(task, y_pred, y_true)
    metrics["loss"] = loss_sum / max(1, len(y_true))
    return metrics
