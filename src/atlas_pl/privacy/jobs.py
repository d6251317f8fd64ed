"""What the privacy evaluation reads from a finished training job directory, without torch.

A job directory holds the resolved config (job_config.json), each client's split and ranks
(allocation.json), its final metrics (summary.json) and the round checkpoints whose tensors carry every
client's adapters (`model/<client>/client.adapter...` and `.../server.adapter...`). A white-box attacker
is given exactly those adapters.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from atlas_pl.privacy.errors import PrivacyConfigError
from atlas_pl.tracking import job_files


@dataclass(frozen=True)
class TrainedClient:
    """One client of a finished job: where its adapters are, and what it trained with."""

    job_dir: Path
    client: int
    task: str
    split: int
    ranks: dict[int, int]
    alpha: float
    model: str
    activation_noise: float
    checkpoint: Path  # the newest complete round's directory
    primary: float | None  # the client's task metric at the end (mean over the task's clients)
    seed: int


def _check_adapters(checkpoint: Path, client: int, split: int) -> None:
    prefix = f"model/{client}/"
    tensors = checkpoint / job_files.TENSORS
    names = [n for n in job_files.tensor_names(tensors, PrivacyConfigError) if n.startswith(prefix)]
    if not any(".adapter.factors." in n for n in names):
        raise PrivacyConfigError(
            f"{checkpoint} holds no adapter tensors for client {client} "
            f"(model/{client}/...adapter.factors...)"
        )
    blocks = {int(n.split(".adapter.factors.b", 1)[1].split("__", 1)[0]) for n in names if ".factors.b" in n}
    missing = sorted(set(range(split)) - blocks)
    if missing:
        raise PrivacyConfigError(f"{checkpoint} lacks client {client}'s adapters of blocks {missing}")


def noise_of(config: dict[str, Any]) -> float:
    privacy = config.get("privacy") or {}
    return float(privacy.get("activation_noise", 0.0) or 0.0)


def trained_client(job_dir: str | Path, client: int) -> TrainedClient:
    """Client `client` of `job_dir`, checked: the directory, the client index and its adapters exist."""
    root = Path(job_dir).expanduser()
    if not root.is_dir():
        raise PrivacyConfigError(f"target.job_dir={str(job_dir)!r} is not a directory")
    config = job_files.read_json(root / "job_config.json", "the job's resolved config", PrivacyConfigError)
    allocation = job_files.read_json(
        root / "allocation.json", "each client's split and ranks", PrivacyConfigError
    )
    clients = allocation.get("clients") or []
    if not 0 <= client < len(clients):
        raise PrivacyConfigError(
            f"target.client={client} but job dir {root} has {len(clients)} clients; "
            f"valid: 0..{len(clients) - 1}"
        )
    entry = clients[client]
    if entry.get("dropped"):
        raise PrivacyConfigError(f"client {client} of {root} was dropped by Phase 2: it trained nothing")
    checkpoint = job_files.newest_checkpoint(root, PrivacyConfigError)
    _check_adapters(checkpoint, client, int(entry.get("built_split", entry["split"])))
    summary = (
        job_files.read_json(root / "summary.json", "the job's final metrics", PrivacyConfigError)
        if (root / "summary.json").exists()
        else {}
    )
    per_task = (summary.get("final") or {}).get("per_task") or {}
    task = str(entry["task"])
    return TrainedClient(
        job_dir=root,
        client=client,
        task=task,
        split=int(entry.get("built_split", entry["split"])),
        ranks={b: int(r) for b, r in enumerate(entry.get("built_ranks", entry["ranks"]))},
        alpha=float(config["lora"]["alpha"]),
        model=str(config["model"]["name"]),
        activation_noise=noise_of(config),
        checkpoint=checkpoint,
        primary=float(per_task[task]["primary"]) if task in per_task else None,
        seed=int(config.get("seed", 0)),
    )
