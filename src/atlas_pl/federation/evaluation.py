"""Evaluation of one client's split model on its task's validation data."""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from atlas_pl.data import TokenDataset, TokenizedExamples, collate_trim, compute_metrics
from atlas_pl.models.split import SplitClientModel


@torch.no_grad()
def evaluate(
    model: SplitClientModel, task: str, data: TokenizedExamples, *, batch_size: int, device: torch.device
) -> dict[str, float]:
    """Metrics (accuracy, primary, f1/mcc where defined) and mean loss of `model` on `data`."""
    was_training = model.training
    model.eval()  # LoRA dropout off while scoring
    loader = torch.utils.data.DataLoader(TokenDataset(data), batch_size=batch_size, collate_fn=collate_trim)
    preds, labels, loss_sum = [], [], 0.0
    for batch in loader:
        batch = {k: v.to(device) for k, v in batch.items()}
        logits = model(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
        loss_sum += float(F.cross_entropy(logits, batch["labels"], reduction="sum"))
        preds.append(logits.argmax(-1).cpu().numpy())
        labels.append(batch["labels"].cpu().numpy())
    model.train(was_training)
    y_pred, y_true = np.concatenate(preds), np.concatenate(labels)
    metrics = compute_metrics(task, y_pred, y_true)
    metrics["loss"] = loss_sum / max(1, len(y_true))
    return metrics
