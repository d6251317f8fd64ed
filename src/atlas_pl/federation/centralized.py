"""The centralized upper bound: one LoRA model trained on the union of every client's data, no split.

One adapter over all blocks is shared by every task; each task keeps its own head (label sets differ).
Every training step sees one batch of every task (Lightning's CombinedLoader, `max_size_cycle`) and
averages their losses, so no task is visited in long runs of its own. There is no split, so no
activation traffic; what a real deployment would have to move is the clients' raw data, counted once
in round 1 as `raw_data` (the real, unpadded token ids as int32, and the labels). Evaluation and
records use the per-client format of the federated ablations: a task's clients hold the task's model.
"""

from __future__ import annotations

import logging
import statistics
import time
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import CombinedLoader
from omegaconf import DictConfig
from torch import Tensor, nn
from torch.nn import functional as F

from atlas_pl.data import shuffled_loader
from atlas_pl.data.tokenized import TokenizedExamples
from atlas_pl.federation.evaluation import evaluate
from atlas_pl.federation.modules import adapter_head_adamw, balanced_class_weights
from atlas_pl.federation.setup import Federation, build_client_model
from atlas_pl.federation.trainers import make_trainer, set_completed_epochs
from atlas_pl.models.split import SplitClientModel

log = logging.getLogger(__name__)


def union(parts: list[TokenizedExamples]) -> TokenizedExamples:
    """The examples of several clients of one task, as one set (same task, so same padding length)."""
    return TokenizedExamples(
        input_ids=torch.cat([p.input_ids for p in parts]),
        attention_mask=torch.cat([p.attention_mask for p in parts]),
        token_type_ids=torch.cat([p.token_type_ids for p in parts]),
        labels=torch.cat([p.labels for p in parts]),
    )


def share_adapters(models: dict[str, SplitClientModel]) -> None:
    """Make every task's model use the first one's adapters: one set of LoRA factors, one head per task."""
    first = next(iter(models.values()))
    for model in models.values():
        model.client.adapter = first.client.adapter
        model.server.adapter = first.server.adapter


class CentralModule(pl.LightningModule):
    """One shared adapter, one head per task; the loss is the mean over the tasks of one combined step."""

    def __init__(
        self,
        models: dict[str, SplitClientModel],
        *,
        lr: float,
        head_lr: float,
        weight_decay: float,
        class_weights: dict[str, Tensor | None],
    ) -> None:
        super().__init__()
        self.task_models = nn.ModuleDict(models)
        self.class_weights = class_weights
        self.losses: dict[str, list[float]] = {t: [] for t in models}
        first = next(iter(models.values()))
        adapters = [*first.client.adapter.parameters(), *first.server.adapter.parameters()]
        heads = [p for m in models.values() for p in m.server.head.parameters()]
        # created once: every round's `fit` continues with the same AdamW moments, as one long
        # centralized run would (a fresh optimizer per round would restart its bias correction)
        self.optimizer = adapter_head_adamw(adapters, heads, lr, head_lr, weight_decay)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optimizer

    def training_step(self, batch: dict[str, dict[str, Tensor]], batch_idx: int) -> Tensor:
        losses = []
        for task, tb in batch.items():
            logits = self.task_models[task](tb["input_ids"], tb["attention_mask"], tb.get("token_type_ids"))
            weight = self.class_weights.get(task)
            loss = F.cross_entropy(logits, tb["labels"], weight=None if weight is None else weight.to(logits))
            self.losses[task].append(float(loss.detach()))
            losses.append(loss)
        return torch.stack(losses).mean()


def run_centralized(
    cfg: DictConfig,
    fed: Federation,
    result: Any,
    record_round: Any,
    checkpointer: Any = None,
    json_state: Any = None,
) -> None:
    """Train the union model `fed.rounds` times `fed.local_epochs` epochs; log one record per round.

    `record_round(round_index, evals, train_loss, train_seconds)` builds and logs the metrics.jsonl
    record (the federated loop's), so both pipelines write the same format. With a `checkpointer`,
    every round ends with a checkpoint (`json_state()` gives its JSON part) and a resumed job restores
    the shared adapter, the heads, the AdamW moments, the loaders' orders and the RNGs. The optimizer
    is created once, so its moments carry from round to round as in one long centralized run.
    """

    tasks = list(fed.data.specs)
    # no split and no device budget: one model at the largest candidate rank, built at model.split_point
    # (the split of an unsplit model only says which adapter object holds which block)
    top = max(int(r) for r in cfg.allocation.rank_candidates)
    ranks = dict.fromkeys(range(fed.backbone.num_layers), top)
    models = {
        t: build_client_model(
            cfg, fed.backbone, fed.data.specs[t].num_labels, int(cfg.model.split_point), ranks
        ).to(fed.device)
        for t in tasks
    }
    share_adapters(models)
    for k, client in enumerate(fed.data.clients):
        fed.models[k] = models[client.task]
    data = {t: union([c.train for c in fed.data.clients if c.task == t]) for t in tasks}
    balanced = set(cfg.fed.get("balanced_tasks") or [])
    module = CentralModule(
        models,
        lr=float(cfg.fed.lr),
        head_lr=float(cfg.fed.get("head_lr") or cfg.fed.lr),
        weight_decay=float(cfg.fed.get("weight_decay", 0.0)),
        class_weights={
            t: balanced_class_weights(data[t].labels, fed.data.specs[t].num_labels) if t in balanced else None
            for t in tasks
        },
    )
    loaders = {
        t: shuffled_loader(data[t], batch_size=int(cfg.fed.batch_size), seed=int(cfg.seed) * 7919 + i)
        for i, t in enumerate(tasks)
    }
    combined = CombinedLoader(loaders, mode="max_size_cycle")
    device = fed.device
    trainer = make_trainer(cfg, fed.device)
    result.trainers = [trainer]
    comm = result.comm
    stateful = {
        "modules": {f"model/{t}": m for t, m in models.items()},
        "optimizers": {"optim/central": module.optimizer},
        "generators": [loaders[t].generator for t in tasks],
        "scalers": {"precision/central": trainer.precision_plugin},
    }
    start_round = 1
    if checkpointer is not None and checkpointer.resume is not None:
        checkpointer.restore(**stateful)
        start_round = checkpointer.start_round
        set_completed_epochs(trainer, (start_round - 1) * int(cfg.fed.local_epochs))
    for round_index in range(start_round, int(cfg.fed.rounds) + 1):
        round_start = time.perf_counter()
        comm.start_round(round_index)
        if round_index == 1:  # what centralizing costs: every client's real tokens (int32) and labels, once
            for k, client in enumerate(fed.data.clients):
                t = client.train
                tokens = t.input_ids[t.attention_mask.bool()].to(torch.int32)
                comm.upload(k, "raw_data", [tokens, t.labels])
        module.losses = {t: [] for t in tasks}
        trainer.fit_loop.max_epochs = round_index * int(cfg.fed.local_epochs)
        start = time.perf_counter()
        trainer.fit(module, combined)
        seconds = time.perf_counter() - start
        evals_by_task = {
            t: evaluate(
                models[t],
                t,
                fed.data.eval[t],
                batch_size=max(32, int(cfg.fed.batch_size)),
                device=device,
            )
            for t in tasks
        }
        n = len(fed.data.clients)
        evals = {k: evals_by_task[c.task] for k, c in enumerate(fed.data.clients)}
        train_loss = {
            k: statistics.fmean(module.losses[c.task]) if module.losses[c.task] else float("nan")
            for k, c in enumerate(fed.data.clients)
        }
        train_seconds = {k: seconds / n for k in range(n)}  # one model: its time, shared out evenly
        record_round(round_index, evals, train_loss, train_seconds, round_start)
        if checkpointer is not None:
            checkpointer.save(round_index, json_state=json_state(), **stateful)
