"""One client party inside a ClientApp: built from its node's state for each message, saved back after.

A ClientApp may run in any worker process, so nothing of a client lives in the process between messages
except what every client shares: the frozen base and the federation's data (`federation_for`; in a Ray
simulation built once per worker; under `flwr run`, Flower 1.42 starts a process per message, so every
message builds them again). The client's own state goes in `Context.state` (Flower keeps it per node):
its allocation, its trainable tensors (both halves' LoRA factors and the head), both AdamW states, its
loader's generator and its own stream of torch's global RNG (LoRA dropout and activation noise draw from
it). Rebuilding a client from that state is what a resumed in-process job does for every client, so a
round here trains what the in-process engine's round trains. One difference is by construction: the
in-process engine's clients draw dropout and noise from one global stream in turn, a Flower client from
its own; jobs with `lora.dropout` or `privacy.activation_noise` are reproducible on either engine, equal
across them only without those draws.

The client runs both halves of its split locally: split learning per step over Flower would cost a
message round trip (>= 100 ms) per step. Its LocalLink counts every activation exchange in a ledger of
its own, which the reply carries back to the coordinator's.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import socket
import time
from dataclasses import dataclass
from typing import Any

import torch
from flwr.app import RecordDict

from atlas_pl.data import shuffled_loader
from atlas_pl.data.federated import derive_seed
from atlas_pl.engines.flower.codec import get_tensors, json_record, put_tensors, read_json
from atlas_pl.engines.setup import Federation, build_client_model, build_federation
from atlas_pl.errors import EngineError
from atlas_pl.lightning.modules import ClientModule, ServerModule, task_class_weights
from atlas_pl.lightning.trainers import make_trainer, server_grad_scaler
from atlas_pl.lightning.training import ClientTraining
from atlas_pl.models.split import SplitClientModel
from atlas_pl.parties.client import ClientParty
from atlas_pl.parties.discovery import privatize, sent_vectors
from atlas_pl.parties.host import ServerHost
from atlas_pl.parties.link import LocalLink, TrafficLedger
from atlas_pl.parties.messages import AdapterUpdate
from atlas_pl.settings import Settings, settings_from_dict
from atlas_pl.tracking.checkpoint import (
    module_tensors,
    optimizer_tensors,
    restore_module,
    restore_optimizer,
)

JOB, CLIENT, MODEL, OPTIM, RNG = "atlas.job", "atlas.client", "atlas.model", "atlas.optim", "atlas.rng"

# node_config keys a SuperNode may set for where its own files are (flower-supernode --node-config)
NODE_PATHS = {"glue-dir": ("data", "glue_dir"), "cache-dir": ("paths", "cache_dir")}

_federations: dict[str, Federation] = {}  # per worker process: the job's base and data, by config digest


def node_config_paths(config: dict[str, Any], node_config: dict[str, Any]) -> dict[str, Any]:
    """The job's config with this node's own data and cache folders where its node config names them."""
    config = json.loads(json.dumps(config))
    for key, (section, field) in NODE_PATHS.items():
        if key in node_config:
            config[section][field] = str(node_config[key])
            if key == "cache-dir":
                config["data"]["cache_dir"] = f"{node_config[key]}/tokenized"
    return config


def federation_for(settings: Settings) -> Federation:
    """The job's shared base and data in this process (built on a job's first message, then reused)."""
    key = hashlib.sha256(json.dumps(settings.config, sort_keys=True).encode()).hexdigest()
    if key not in _federations:
        _federations.clear()  # one job per process at a time: a new job frees the last one's base
        _federations[key] = build_federation(settings)
    return _federations[key]


@dataclass
class Allocation:
    split: int
    ranks: dict[int, int]

    def to_json(self) -> dict[str, Any]:
        return {"split": self.split, "ranks": {str(b): r for b, r in self.ranks.items()}}

    @staticmethod
    def from_json(value: dict[str, Any]) -> Allocation:
        return Allocation(int(value["split"]), {int(b): int(r) for b, r in value["ranks"].items()})


class ClientNode:
    """Client `index` of the job, as its node's state left it."""

    def __init__(self, state: RecordDict, index: int) -> None:
        self.state = state
        self.index = index
        self.settings = settings_from_dict(read_json(state, JOB))
        self.fed = federation_for(self.settings)
        if not 0 <= index < len(self.fed.data.clients):
            raise EngineError(
                f"partition-id={index}, but the job has {len(self.fed.data.clients)} clients: "
                f"give each node one of 0..{len(self.fed.data.clients) - 1}"
            )
        self.data = self.fed.data.clients[index]
        self._resume_rng()
        self.ledger = TrafficLedger()
        saved = read_json(state, CLIENT) if CLIENT in state else {}
        self.allocation = Allocation.from_json(saved["allocation"]) if saved.get("allocation") else None
        self.model = self._build_model()
        self.host = ServerHost()
        self.party = ClientParty(index, self.data, self.model, self.ledger, self.settings.seed)
        self.training: ClientTraining | None = None
        self.loader: torch.utils.data.DataLoader | None = None
        if self.allocation is not None:
            self._attach()

    # -- building -------------------------------------------------------------------------------------
    def _resume_rng(self) -> None:
        """torch's global generator where this client left it (first: seeded by the job and the client),
        so its dropout and noise neither depend on which process ran it nor repeat between messages."""
        if RNG in self.state:
            saved = get_tensors(self.state, RNG)
            torch.set_rng_state(saved["torch"])
            if "cuda" in saved and torch.cuda.is_available():  # dropout on a GPU draws from CUDA's
                torch.cuda.set_rng_state(saved["cuda"])
        else:
            torch.manual_seed(derive_seed(self.settings.seed, "flower_client", self.data.client_id))

    def _build_model(self) -> SplitClientModel:
        """At its allocation with its saved tensors, or (before Phase 2) the provisional seeded model."""
        s = self.settings
        if self.allocation is None:
            split, ranks = (
                s.model.split_point,
                dict.fromkeys(range(self.fed.backbone.num_layers), s.lora.rank),
            )
        else:
            split, ranks = self.allocation.split, dict(self.allocation.ranks)
        num_labels = self.fed.data.specs[self.data.task].num_labels
        model = build_client_model(s, self.fed.backbone, num_labels, split, ranks).to(self.fed.device)
        if self.allocation is not None and MODEL in self.state:
            restore_module("model", model, get_tensors(self.state, MODEL))
        return model

    def _attach(self) -> None:
        """Its server half on a host of its own, its ClientModule over a LocalLink, optimizers restored."""
        s, fed = self.settings, self.fed
        server = ServerModule(
            self.model.server,
            lr=s.fed.lr,
            head_lr=s.fed.head_lr,
            weight_decay=s.fed.weight_decay,
            class_weights=task_class_weights(
                s.fed.balanced_tasks,
                self.data.task,
                self.data.train.labels,
                self.model.server.head.num_labels,
            ),
            scaler=server_grad_scaler(s.trainer, fed.device),
        )
        self.host.host(self.index, server)
        link = LocalLink(self.index, self.host, self.ledger, noise=s.privacy.activation_noise)
        module = ClientModule(
            self.index, self.model.client, link, lr=s.fed.lr, weight_decay=s.fed.weight_decay
        )
        self.loader = shuffled_loader(
            self.data.train, batch_size=s.fed.batch_size, seed=s.fed.loader_seed(self.data.client_id)
        )
        trainer = make_trainer(s.trainer, fed.device, [])
        self.training = ClientTraining(module, trainer, self.loader)
        self.party.attach(self.training)
        if OPTIM in self.state:
            saved = get_tensors(self.state, OPTIM)
            restore_optimizer("client", module.optimizer, saved)
            restore_optimizer("server", server.optimizer, saved)
            self.loader.generator.set_state(saved["loader"])
            scales = read_json(self.state, f"{OPTIM}.scalers")
            if server.scaler is not None and scales.get("server"):
                server.scaler.load_state_dict(scales["server"])
            if scales.get("precision"):
                trainer.precision_plugin.load_state_dict(scales["precision"])

    def allocate(self, allocation: Allocation) -> None:
        """Phase 2's split and ranks: a fresh seeded model at them, as the in-process engine rebuilds."""
        if self.allocation == allocation:
            return
        self.allocation = allocation
        for key in (MODEL, OPTIM, f"{OPTIM}.scalers", f"{MODEL}.dtypes", f"{OPTIM}.dtypes"):
            if key in self.state:
                del self.state[key]
        self.model = self.party.model = self._build_model()
        self.host = ServerHost()
        self._attach()

    # -- what the messages ask ------------------------------------------------------------------------
    def apply(self, updates: list[AdapterUpdate]) -> None:
        """The coordinator's updates since the last message, written as the in-process parties write them."""
        for update in updates:
            self.party.apply(update)
            self.host.apply(update)

    def fingerprint(self, round_index: int, include_head: bool) -> dict[str, torch.Tensor]:
        """Phase 1 on its own minibatches: what leaves the client is the privatized sketch and importance."""
        s = self.settings
        grads = self.party.fingerprint_gradients(
            s.fingerprint,
            round_index,
            batch_size=s.fed.batch_size,
            include_head=include_head,
            device=self.fed.device,
        )
        vector = sent_vectors([grads], s.fingerprint, s.seed)[0]
        sent = privatize(vector, s.fingerprint, s.seed, self.data.client_id, round_index)
        return {"vector": sent, "importance": torch.as_tensor(grads.importance)}

    def train(self, round_index: int) -> dict[str, Any]:
        """One round of local training, both halves here; its ledger entries go back with the report."""
        assert self.training is not None, "train before allocation"
        self.ledger.start_round(round_index)
        report = self.party.train_round(round_index, self.settings.fed.local_epochs)
        module = self.training.module
        return {
            "loss": report.loss,
            "seconds": report.seconds,
            "step_seconds": module.step_seconds,
            "steps": module.steps_this_round,
            "ledger": self.ledger.to_json(),
        }

    def evaluate(self) -> dict[str, float]:
        s = self.settings
        return self.party.evaluate(
            self.fed.data.eval[self.data.task], batch_size=s.fed.eval_batch_size, device=self.fed.device
        )

    def evaluate_personal(self) -> dict[str, float] | None:
        """Its own held-out rows (data.personal_share), which never leave the node."""
        if self.data.personal is None:
            return None
        batch = self.settings.fed.eval_batch_size
        return self.party.evaluate(self.data.personal, batch_size=batch, device=self.fed.device)

    def trainable(self) -> dict[str, torch.Tensor]:
        return module_tensors("model", self.model)

    def save(self) -> None:
        """Allocation, tensors, optimizer moments, loader generator, loss scales and RNG into the state."""
        rng = {"torch": torch.get_rng_state()}
        if self.fed.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state()
        put_tensors(self.state, RNG, rng)
        self.state[CLIENT] = json_record(
            {"index": self.index, "allocation": self.allocation.to_json() if self.allocation else None}
        )
        if self.allocation is None or self.training is None:
            return
        put_tensors(self.state, MODEL, self.trainable())
        server = self.host.modules[self.index]
        optim = {
            **optimizer_tensors("client", self.training.optimizer),
            **optimizer_tensors("server", server.optimizer),
            "loader": self.training.loader.generator.get_state(),
        }
        put_tensors(self.state, OPTIM, optim)
        scales = {
            "server": server.scaler.state_dict() if server.scaler is not None else {},
            "precision": self.training.trainer.precision_plugin.state_dict(),
        }
        self.state[f"{OPTIM}.scalers"] = json_record(scales)


def handler_report(started: float) -> dict[str, Any]:
    """This handler's wall-clock interval (for the server's measure of Flower's own time), and its
    process's peak memory (a job's ClientApps run in other processes than its own)."""
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return {
        "busy": [started, time.time()],
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "rss_mib": rss_mib,
    }
