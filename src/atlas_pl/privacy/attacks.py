"""Inversion attacks on the activations h a client sends: recover its input tokens (DESIGN.md §11).

The attacker holds a copy of the client half (`AttackModel`): the real one (white-box, e.g. a server
that aggregates the adapters) or the pretrained one (semi-white-box). Four attacks, after VFLAIR-LLM and
SplitLLM, written here:

- VMI optimises continuous input word vectors so the half reproduces h, then decodes each position to
  the nearest token embedding (cosine). The anchors' default loss is cross-entropy between hidden
  states, which treats the sequence axis as classes; the distance here is cosine (or MSE).
- RMI optimises logits over the vocabulary, feeding softmax(z / T) @ E, and decodes argmax z.
- The learned inverter maps h to token logits; it is trained on auxiliary public text run through the
  attacker's half, with the defense's noise added, since a defense's setting is no secret.
- BiSR(f) starts VMI from the inverter's output instead of from zeros.

Attacks optimise sentences in chunks; the loss is a sum over sentences and Adam is element-wise, so a
chunk gives each sentence exactly what optimising it alone would.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from atlas_pl.models.split import ClientHalf
from atlas_pl.privacy.config import InverterConfig, RMIConfig, VMIConfig
from atlas_pl.privacy.noise import add_activation_noise


@dataclass(frozen=True)
class Sentences:
    """Tokenised sentences: ids, padding mask, token types (or None), and the positions that are scored."""

    input_ids: Tensor
    attention_mask: Tensor
    token_type_ids: Tensor | None
    scored: Tensor  # bool [N, T]: real tokens that are not special tokens

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def rows(self, index: slice) -> Sentences:
        """Rows `index`, trimmed to their longest member (sentences are sorted by length)."""
        width = max(1, int(self.attention_mask[index].sum(1).max()))
        cut = (index, slice(0, width))
        types = None if self.token_type_ids is None else self.token_type_ids[cut]
        return Sentences(self.input_ids[cut], self.attention_mask[cut], types, self.scored[cut])

    def chunks(self, size: int) -> Iterator[tuple[slice, Sentences]]:
        for start in range(0, len(self), size):
            index = slice(start, start + size)
            yield index, self.rows(index)

    def references(self) -> list[list[int]]:
        return [ids[keep].tolist() for ids, keep in zip(self.input_ids, self.scored)]

    def pick(self, recovered: Tensor) -> list[list[int]]:
        """The recovered ids at the scored positions, sentence by sentence."""
        return [ids[keep].tolist() for ids, keep in zip(recovered, self.scored)]


@torch.no_grad()
def sent_activations(half: ClientHalf, s: Sentences, noise: float, seed: int) -> Tensor:
    """What the victim sends for `s`: its half's output with the defense's noise (seeded)."""
    generator = torch.Generator().manual_seed(seed)
    out = torch.zeros(*s.input_ids.shape, half.backbone.hidden_size)
    for index, part in s.chunks(64):
        h = half(part.input_ids, part.attention_mask, part.token_type_ids).float()
        out[index, : h.shape[1]] = add_activation_noise(h, part.attention_mask, noise, generator)
    return out


class AttackModel:
    """The client half as the attacker holds it, with the token table it decodes against."""

    def __init__(self, half: ClientHalf) -> None:
        self.half = half.eval().requires_grad_(False)
        table = half.backbone.ops.token_table().detach()
        self.dtype = table.dtype
        self.table = table.float()
        self.unit_table = F.normalize(self.table, dim=-1)

    def run(self, words: Tensor, s: Sentences) -> Tensor:
        return self.half.forward_words(words.to(self.dtype), s.attention_mask, s.token_type_ids).float()

    def nearest(self, words: Tensor) -> Tensor:
        """Each position's token whose embedding has the highest cosine with the recovered vector."""
        flat = F.normalize(words.detach().float().reshape(-1, words.shape[-1]), dim=-1)
        ids = torch.cat([(part @ self.unit_table.T).argmax(-1) for part in flat.split(4096)])
        return ids.view(words.shape[:-1])


def distance(produced: Tensor, target: Tensor, mask: Tensor, how: str) -> Tensor:
    """Sum over sentences of the mean per-position distance on real positions."""
    keep = mask.float()
    if how == "cosine":
        per_position = 1.0 - F.cosine_similarity(produced, target, dim=-1)
    elif how == "mse":
        per_position = ((produced - target) ** 2).mean(-1)
    else:
        raise ValueError(f"attack loss {how!r}; valid: cosine, mse")
    return ((per_position * keep).sum(1) / keep.sum(1).clamp_min(1.0)).sum()


def _optimise(parameter: Tensor, lr: float, steps: int, loss_of: Callable[[], Tensor]) -> None:
    optimizer = torch.optim.Adam([parameter], lr=lr)
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        loss_of().backward()
        optimizer.step()


def vmi(
    model: AttackModel, s: Sentences, target: Tensor, cfg: VMIConfig, start: Tensor | None = None
) -> Tensor:
    """Recovered ids [N, T]: word vectors optimised (from zeros, or `start`) to reproduce `target`."""
    words = (torch.zeros_like(target) if start is None else start.clone().float()).requires_grad_(True)
    _optimise(
        words, cfg.lr, cfg.steps, lambda: distance(model.run(words, s), target, s.attention_mask, cfg.loss)
    )
    return model.nearest(words)


def rmi(model: AttackModel, s: Sentences, target: Tensor, cfg: RMIConfig) -> Tensor:
    """Recovered ids [N, T]: vocabulary logits z, relaxed to softmax(z / T) @ E, optimised on `target`."""
    vocab = model.table.shape[0]
    logits = torch.zeros(*target.shape[:-1], vocab, requires_grad=True)

    def loss() -> Tensor:
        words = torch.softmax(logits / cfg.temperature, dim=-1) @ model.table
        return distance(model.run(words, s), target, s.attention_mask, cfg.loss)

    _optimise(logits, cfg.lr, cfg.steps, loss)
    return logits.detach().argmax(-1)


class Inverter(nn.Module):
    """h -> token logits: a projection, one self-attention layer (each position sees its neighbours,
    which deeper splits have mixed into it) and a linear read-out over the vocabulary. The anchors use a
    GRU; attention computes all positions at once, several times faster on a CPU for the same accuracy."""

    def __init__(self, hidden: int, vocab: int, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.project = nn.Linear(hidden, width)
        heads = 4 if width % 4 == 0 else 1
        self.mix = nn.TransformerEncoderLayer(
            width, heads, dim_feedforward=2 * width, dropout=0.1, batch_first=True, norm_first=True
        )
        self.out = nn.Linear(width, vocab)

    def features(self, hidden: Tensor, attention_mask: Tensor) -> Tensor:
        x = self.project(self.norm(hidden.float()))
        return self.mix(x, src_key_padding_mask=~attention_mask.bool())

    def forward(self, hidden: Tensor, attention_mask: Tensor) -> Tensor:
        return self.out(self.features(hidden, attention_mask))


def train_inverter(
    model: AttackModel, aux: Sentences, cfg: InverterConfig, *, noise: float, seed: int
) -> Inverter:
    """An inverter fitted on the auxiliary sentences' h (fresh defense noise every epoch)."""
    generator = torch.Generator().manual_seed(seed)
    clean = sent_activations(model.half, aux, 0.0, seed)  # the defense's noise is drawn per epoch below
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        inverter = Inverter(clean.shape[-1], model.table.shape[0], cfg.width)
    optimizer = torch.optim.Adam(inverter.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    inverter.train()
    with torch.random.fork_rng(devices=[]):  # dropout from its own seed: a case's result is its own
        torch.manual_seed(seed + 1)
        _fit(inverter, optimizer, aux, clean, cfg, noise, generator)
    return inverter.eval()


def _fit(
    inverter: Inverter,
    optimizer: torch.optim.Optimizer,
    aux: Sentences,
    clean: Tensor,
    cfg: InverterConfig,
    noise: float,
    generator: torch.Generator,
) -> None:
    for _ in range(cfg.epochs):
        order = torch.randperm(len(aux), generator=generator)
        for start in range(0, len(aux), cfg.batch_size):
            rows = order[start : start + cfg.batch_size]
            mask = aux.attention_mask[rows]
            h = add_activation_noise(clean[rows], mask, noise, generator)
            keep = mask.bool()  # the vocabulary read-out dominates the cost: real positions only
            logits = inverter.out(inverter.features(h, mask)[keep])
            loss = F.cross_entropy(logits, aux.input_ids[rows][keep])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()


@torch.no_grad()
def invert(inverter: Inverter, s: Sentences, target: Tensor) -> Tensor:
    return inverter(target, s.attention_mask).argmax(-1)


def bisr(model: AttackModel, s: Sentences, target: Tensor, inverter: Inverter, cfg: VMIConfig) -> Tensor:
    """BiSR(f): VMI started from the embeddings of the inverter's tokens."""
    start = model.table[invert(inverter, s, target)]
    return vmi(model, s, target, cfg, start=start)
