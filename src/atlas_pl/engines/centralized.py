"""The centralized upper bounds: LoRA trained on the pooled data of the clients, no split.

`ablation=centralized`: one adapter over all blocks is shared by every task (the multi-task bound); each
task keeps its own head (label sets differ). `ablation=centralized_per_task` (`ablation.adapters=per_task`):
one adapter per task on the union of that task's clients (the per-task bound: pooling without the other
tasks' interference). Every training step sees one batch of every task (Lightning's CombinedLoader,
`max_size_cycle`), so no task is visited in long runs of its own; a shared adapter takes the mean of the
tasks' losses, separate adapters their sum, so each one gets exactly its own task's gradient. There is
no split, so no activation traffic; what a real deployment would have to move is the clients' raw data,
counted once in round 1 as `raw_data` (the real, unpadded token ids as int32, and the labels). Evaluation
and records use the per-client format of the federated ablations: a task's clients hold the task's model.
"""

from __future__ import annotations

import logging
import statistics
import time
from typing import Any, cast

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import CombinedLoader
from torch import Tensor, nn
from torch.nn import functional as F

from atlas_pl.data import shuffled_loader
from atlas_pl.data.federated import ClientData
from atlas_pl.data.tokenized import TokenizedExamples
from atlas_pl.engines.records import (
    ClientRound,
    FederationResult,
    RoundLog,
    check_not_diverged,
    log_round,
    round_record,
)
from atlas_pl.engines.setup import Federation, build_client_model
from atlas_pl.lightning.modules import adapter_head_adamw, task_class_weights
from atlas_pl.lightning.trainers import make_trainer, set_completed_epochs
from atlas_pl.models.split import SplitClientModel
from atlas_pl.parties.evaluation import evaluate
from atlas_pl.parties.link import COORDINATOR, TrafficLedger, client_name
from atlas_pl.settings import Settings
from atlas_pl.tracking.resume import RoundCheckpointer
from atlas_pl.tracking.tracker import Tracker

log = logging.getLogger(__name__)


def union(parts: list[TokenizedExamples]) -> TokenizedExamples:
    """The examples of several clients of one task, as one set (same task, so same padding length)."""

    def cat(name: str) -> torch.LongTensor:
        return cast(torch.LongTensor, torch.cat([getattr(p, name) for p in parts]))

    return TokenizedExamples(
        input_ids=cat("input_ids"),
        attention_mask=cat("attention_mask"),
        token_type_ids=cat("token_type_ids"),
        labels=cat("labels"),
    )


def share_adapters(models: dict[str, SplitClientModel]) -> None:
    """Make every task's model use the first one's adapters: one set of LoRA factors, one head per task."""
    first = next(iter(models.values()))
    for model in models.values():
        model.client.adapter = first.client.adapter
        model.server.adapter = first.server.adapter


class CentralModule(pl.LightningModule):
    """One head per task and one shared adapter (the loss: the mean over the tasks of a combined step) or
    one adapter per task (the sum, so each adapter's gradient is exactly its own task's)."""

    def __init__(
        self,
        models: dict[str, SplitClientModel],
        *,
        lr: float,
        head_lr: float,
        weight_decay: float,
        class_weights: dict[str, Tensor | None],
        shared: bool = True,
    ) -> None:
        super().__init__()
        self.task_models = nn.ModuleDict(models)
        self.class_weights = class_weights
        self.shared = shared
        self.losses: dict[str, list[float]] = {t: [] for t in models}
        owners = [next(iter(models.values()))] if shared else list(models.values())
        adapters = [p for m in owners for a in (m.client.adapter, m.server.adapter) for p in a.parameters()]
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
        total = torch.stack(losses)
        return total.mean() if self.shared else total.sum()


def _evaluate_unsplit(
    model: SplitClientModel, task: str, data: TokenizedExamples, settings: Settings, device
):
    was_training = model.training
    model.eval()  # LoRA dropout off while scoring
    try:
        return evaluate(
            lambda b: model(b["input_ids"], b["attention_mask"], b.get("token_type_ids")),
            task,
            data,
            batch_size=settings.fed.eval_batch_size,
            device=device,
        )
    finally:
        model.train(was_training)


def _personal(
    model: SplitClientModel, client: ClientData, settings: Settings, device: torch.device
) -> dict[str, float] | None:
    """The task's model on this client's own held-out rows (data.personal_share), if it has any."""
    if client.personal is None:
        return None
    return _evaluate_unsplit(model, client.task, client.personal, settings, device)


def _send_raw_data(fed: Federation, ledger: TrafficLedger) -> None:
    """What centralizing costs: every client's real tokens (int32) and labels, once, in round 1."""
    for k, client in enumerate(fed.data.clients):
        t = client.train
        tokens = t.input_ids[t.attention_mask.bool()].to(torch.int32)
        ledger.send(client_name(k), COORDINATOR, "raw_data", [tokens, t.labels])


def run_centralized(
    settings: Settings, fed: Federation, tracker: Tracker, checkpointer: RoundCheckpointer | None = None
) -> FederationResult:
    """Train the union model `fed.rounds` times `fed.local_epochs` epochs; log one record per round.

    Records use the federated format, so every pipeline's metrics.jsonl reads the same. With a
    `checkpointer`, every round ends with a checkpoint and a resumed job restores the shared adapter,
    the heads, the AdamW moments, the loaders' orders and the RNGs. The optimizer is created once, so
    its moments carry from round to round as in one long centralized run.
    """
    tasks = list(fed.data.specs)
    # no split and no device budget: one model at the largest candidate rank, built at model.split_point
    # (the split of an unsplit model only says which adapter object holds which block)
    top = max(settings.allocation.rank_candidates)
    ranks = dict.fromkeys(range(fed.backbone.num_layers), top)
    models = {
        t: build_client_model(
            settings, fed.backbone, fed.data.specs[t].num_labels, settings.model.split_point, ranks
        ).to(fed.device)
        for t in tasks
    }
    shared = settings.ablation.adapters != "per_task"
    if shared:
        share_adapters(models)
    for k, client in enumerate(fed.data.clients):  # a task's clients all hold the task's model
        fed.models[k] = models[client.task]
    data = {t: union([c.train for c in fed.data.clients if c.task == t]) for t in tasks}
    f = settings.fed
    module = CentralModule(
        models,
        lr=f.lr,
        head_lr=f.head_lr,
        weight_decay=f.weight_decay,
        class_weights={
            t: task_class_weights(f.balanced_tasks, t, data[t].labels, fed.data.specs[t].num_labels)
            for t in tasks
        },
        shared=shared,
    )
    loaders = {
        t: shuffled_loader(data[t], batch_size=f.batch_size, seed=f.loader_seed(i))
        for i, t in enumerate(tasks)
    }
    combined = CombinedLoader(loaders, mode="max_size_cycle")
    trainer = make_trainer(settings.trainer, fed.device)
    ledger = TrafficLedger()
    round_log = RoundLog()
    stateful: dict[str, Any] = {
        "modules": {f"model/{t}": m for t, m in models.items()},
        "optimizers": {"optim/central": module.optimizer},
        "generators": [loaders[t].generator for t in tasks],
        "scalers": {"precision/central": trainer.precision_plugin},
    }
    start_round = 1
    if checkpointer is not None and checkpointer.resume is not None:
        state = checkpointer.state
        round_log.load_json(state)
        ledger.load_json(state["ledger"])
        tracker.restore(round_log.records)
        checkpointer.restore(**stateful)
        start_round = checkpointer.start_round
        set_completed_epochs(trainer, (start_round - 1) * f.local_epochs)
    n = len(fed.data.clients)
    for round_index in range(start_round, f.rounds + 1):
        round_start = time.perf_counter()
        ledger.start_round(round_index)
        if round_index == 1:
            _send_raw_data(fed, ledger)
        module.losses = {t: [] for t in tasks}
        trainer.fit_loop.max_epochs = round_index * f.local_epochs
        start = time.perf_counter()
        trainer.fit(module, combined)
        seconds = time.perf_counter() - start
        scores = (
            {t: _evaluate_unsplit(models[t], t, fed.data.eval[t], settings, fed.device) for t in tasks}
            if f.evaluates(round_index)
            else {}
        )
        rows = []
        for k, client in enumerate(fed.data.clients):
            losses = module.losses[client.task]
            model = models[client.task]
            rows.append(
                ClientRound(
                    client.client_id,
                    client.task,
                    0 if shared else tasks.index(client.task),  # who shares a model
                    fed.devices[k],
                    split=model.split,
                    ranks=[model.ranks[b] for b in range(fed.backbone.num_layers)],
                    metrics=scores.get(client.task),
                    personal=_personal(model, client, settings, fed.device) if scores else None,
                    train_loss=statistics.fmean(losses) if losses else float("nan"),
                    train_seconds=seconds / n,  # one model: its time, shared out evenly
                )
            )
        record = round_record(round_index, rows, tasks, ledger)
        timing = {"round_seconds": time.perf_counter() - round_start, "orchestration_seconds": 0.0}
        tracker.log_round(round_log.add(record, timing))
        log_round(record, f.rounds)
        check_not_diverged(round_index, rows, f.lr)
        if checkpointer is not None:
            json_state = {**round_log.to_json(), "ledger": ledger.to_json()}
            checkpointer.save(round_index, json_state=json_state, **stateful)
    return FederationResult(
        log=round_log,
        ledger=ledger,
        elapsed_before=checkpointer.elapsed_before if checkpointer is not None else 0.0,
        trainers=[trainer],
    )
