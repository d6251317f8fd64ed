"""An attack on the Phase 1 sketch: infer a client's majority label from the fingerprint it sends.

The server knows the provisional model (it sent it), the sketch's projection seed (clients must share it
for sketches to be comparable) and public data of the task. It simulates shadow clients with known label
mixes, computes their sketches exactly as a client would, fits a classifier from sketch to majority
label, and applies it to the real clients' sketches. Success is compared with chance: the best constant
guess, i.e. the share of victims whose majority label is the most common one.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from atlas_pl.data.federated import derive_seed
from atlas_pl.data.tokenized import TokenizedExamples
from atlas_pl.models.split import SplitClientModel
from atlas_pl.parties.client import fingerprint_batches
from atlas_pl.parties.discovery import privatize, sent_vectors
from atlas_pl.phases.fingerprint import FingerprintGrads, client_gradients
from atlas_pl.privacy.config import SketchAttackConfig
from atlas_pl.settings import FingerprintSettings


def label_mix_clients(
    labels: np.ndarray, count: int, size: int, alpha: float, rng: np.random.Generator
) -> list[np.ndarray]:
    """`count` clients of `size` rows each, every client's label shares drawn from Dirichlet(alpha)."""
    classes = np.unique(labels)
    by_class = {c: np.flatnonzero(labels == c) for c in classes}
    clients = []
    for _ in range(count):
        shares = rng.dirichlet(np.full(len(classes), alpha))
        counts = rng.multinomial(size, shares)
        rows = [rng.choice(by_class[c], n, replace=n > len(by_class[c])) for c, n in zip(classes, counts)]
        clients.append(np.concatenate(rows))
    return clients


def majority(labels: np.ndarray) -> int:
    values, counts = np.unique(labels, return_counts=True)
    return int(values[np.argmax(counts)])


def _rows(data: TokenizedExamples, rows: np.ndarray) -> TokenizedExamples:
    index = torch.as_tensor(rows, dtype=torch.long)
    return TokenizedExamples(
        data.input_ids[index], data.attention_mask[index], data.token_type_ids[index], data.labels[index]
    )


def client_gradients_for(
    model: SplitClientModel,
    data: TokenizedExamples,
    fp: FingerprintSettings,
    *,
    seed: int,
    client: int,
    batch_size: int,
) -> FingerprintGrads:
    """What a client with `data` computes in Phase 1 (round 0), as the pipeline computes it."""
    batches = fingerprint_batches(
        data, batches=fp.batches, batch_size=batch_size, seed=derive_seed(seed, "fingerprint", client, 0)
    )
    return client_gradients(
        model,
        batches,
        last_layers=min(fp.layers, len(model.ranks)),
        include_head=True,
        class_balanced=fp.class_balanced,
    )


def sent_sketches(
    grads: list[FingerprintGrads], fp: FingerprintSettings, *, seed: int, first: int
) -> np.ndarray:
    """The sketches the clients send: one shared projection for all (as the pipeline draws it once),
    then each client's DP noise when on."""
    vectors = sent_vectors(grads, fp, seed)
    return np.stack(
        [privatize(v, fp, seed, first + i, 0).detach().cpu().double().numpy() for i, v in enumerate(vectors)]
    )


def attack_sketches(
    model: SplitClientModel,
    public: TokenizedExamples,
    private: TokenizedExamples,
    fp: FingerprintSettings,
    cfg: SketchAttackConfig,
    *,
    seed: int,
) -> dict[str, Any]:
    """Shadow clients on `public`, victims on `private` (disjoint data); accuracy against chance."""
    rng = np.random.default_rng(seed)
    shadow_rows = label_mix_clients(
        public.labels.numpy(), cfg.shadows, cfg.samples_per_client, cfg.dirichlet_alpha, rng
    )
    victim_rows = label_mix_clients(
        private.labels.numpy(), cfg.victims, cfg.samples_per_client, cfg.dirichlet_alpha, rng
    )

    def sketches(pool: TokenizedExamples, clients: list[np.ndarray], first: int) -> np.ndarray:
        grads = [
            client_gradients_for(
                model, _rows(pool, r), fp, seed=seed, client=first + i, batch_size=cfg.batch_size
            )
            for i, r in enumerate(clients)
        ]
        return sent_sketches(grads, fp, seed=seed, first=first)

    x_shadow = sketches(public, shadow_rows, 10_000)
    x_victim = sketches(private, victim_rows, 0)
    y_shadow = np.array([majority(public.labels.numpy()[r]) for r in shadow_rows])
    y_victim = np.array([majority(private.labels.numpy()[r]) for r in victim_rows])
    if len(np.unique(y_shadow)) < 2:
        raise ValueError(
            "every shadow client has the same majority label: raise sketch.shadows or lower its alpha"
        )
    scale = np.linalg.norm(x_shadow, axis=1, keepdims=True).clip(1e-12)
    classifier = LogisticRegression(max_iter=2000, C=10.0).fit(x_shadow / scale, y_shadow)
    predicted = classifier.predict(x_victim / np.linalg.norm(x_victim, axis=1, keepdims=True).clip(1e-12))
    _, counts = np.unique(y_victim, return_counts=True)
    return {
        "target": "majority label of a client's training data, from its Phase 1 sketch",
        "accuracy": float(np.mean(predicted == y_victim)),
        "chance": float(counts.max() / len(y_victim)),
        "shadows": cfg.shadows,
        "victims": cfg.victims,
        "samples_per_client": cfg.samples_per_client,
        "dirichlet_alpha": cfg.dirichlet_alpha,
        "class_balanced": fp.class_balanced,
        "dp": None if fp.dp is None else fp.dp.as_json(),
        "sketch_dim": fp.sketch_dim,
    }
