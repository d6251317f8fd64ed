"""The split backbone: one frozen base shared by all clients, and per-client client/server halves.

Client half = embeddings + blocks [0, s) with the client's adapter; server half = blocks [s, L) + final
norm + pooling + task head with the server-side adapter kept for that client (SFL-V1). The halves hold
a *reference* to the shared backbone, not a registered submodule, so their `parameters()`/state dicts
are the client's trainable state only and the base is never copied.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from atlas_pl.models.catalog import ModelSpec
from atlas_pl.models.families import DEFAULT_TARGETS, FAMILY_OPS, FamilyOps
from atlas_pl.models.lora import LoRAAdapter, LoRAHost, ModuleKey


class SharedBackbone:
    """The frozen base plus LoRA hosts installed once on its target projections."""

    def __init__(
        self,
        spec: ModelSpec,
        model: nn.Module,
        *,
        targets: Sequence[str] | None = None,
        pooling: str | None = None,
        head: str = "linear",
    ) -> None:
        self.spec = spec
        self.model = model
        self.ops: FamilyOps = FAMILY_OPS[spec.family](model)
        self.pooling = pooling or spec.default_pooling
        if self.pooling not in ("cls", "mean", "last"):
            raise ValueError(f"model.pooling={self.pooling!r}; valid: cls, mean, last")
        self.head = head
        self.targets = tuple(targets or DEFAULT_TARGETS[spec.family])
        self.hosts: dict[ModuleKey, LoRAHost] = {}
        blocks = self.ops.blocks()
        self.num_layers = len(blocks)
        for index, block in enumerate(blocks):
            found = self._wrap_targets(index, block)
            if not found:
                names = [n for n, m in block.named_modules() if hasattr(m, "weight") and n]
                raise ValueError(
                    f"model.lora_targets={list(self.targets)} matches no projection in block {index} of "
                    f"{spec.name}; projections there: {names}"
                )

    def _wrap_targets(self, index: int, block: nn.Module) -> int:
        found = 0
        for path, module in list(block.named_modules()):
            if not path or isinstance(module, LoRAHost):
                continue
            if not any(path == t or path.endswith("." + t) for t in self.targets):
                continue
            if not (isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"):
                continue
            parent_path, _, leaf = path.rpartition(".")
            parent = block.get_submodule(parent_path) if parent_path else block
            host = LoRAHost(module)
            setattr(parent, leaf, host)
            self.hosts[(index, path)] = host
            found += 1
        return found

    @property
    def hidden_size(self) -> int:
        return self.ops.hidden_size

    def shapes(self, blocks: range) -> dict[ModuleKey, tuple[int, int]]:
        """(in, out) of every LoRA target in the given blocks, keyed like the adapters."""
        return {k: (h.in_features, h.out_features) for k, h in self.hosts.items() if k[0] in blocks}

    def to(self, device: torch.device | str) -> SharedBackbone:
        self.model.to(device)
        return self


def _masked_pool(hidden: Tensor, attention_mask: Tensor, how: str) -> Tensor:
    if how == "cls":
        return hidden[:, 0]
    mask = attention_mask.to(hidden.dtype)
    if how == "mean":
        return (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp_min(1.0)
    # the last position whose mask is 1, so left padding (what HF decoder pipelines often use) pools the
    # same token as right padding; a row without real tokens pools position 0
    positions = torch.arange(1, attention_mask.shape[1] + 1, device=attention_mask.device)
    last = (attention_mask.long() * positions).argmax(1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


class ClassificationHead(nn.Module):
    """Pooling + task head: a linear score layer, or BERT's dense/tanh/classifier (`kind="mlp"`).

    Linear is the default: with a few hundred samples per client a fresh hidden x hidden layer mostly
    memorises, and the pooled features of a pretrained encoder are already linearly informative.
    """

    def __init__(
        self, hidden: int, num_labels: int, *, pooling: str, kind: str = "linear", seed: int = 0
    ) -> None:
        super().__init__()
        if kind not in ("linear", "mlp"):
            raise ValueError(f"model.head={kind!r}; valid: linear, mlp")
        self.pooling = pooling
        self.num_labels = num_labels
        self.net: nn.Module
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if kind == "linear":
                self.net = nn.Linear(hidden, num_labels)
            else:
                self.net = nn.Sequential(nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, num_labels))

    def forward(self, hidden: Tensor, attention_mask: Tensor) -> Tensor:
        pooled = _masked_pool(hidden, attention_mask, self.pooling)
        return self.net(pooled.to(self.net.weight.dtype if isinstance(self.net, nn.Linear) else pooled.dtype))


class ClientHalf(nn.Module):
    """Embeddings + blocks [0, split) of the shared base, with the client's own LoRA adapter."""

    backbone: SharedBackbone  # a reference set in __init__, not a registered submodule

    def __init__(
        self,
        backbone: SharedBackbone,
        split: int,
        ranks: Mapping[int, int],
        *,
        alpha: float,
        dropout: float = 0.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        object.__setattr__(self, "backbone", backbone)  # a reference, not a submodule
        self.split = split
        self.adapter = LoRAAdapter(
            backbone.shapes(range(0, split)),
            {b: ranks[b] for b in range(split)},
            alpha=alpha,
            dropout=dropout,
            seed=seed,
        )

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None
    ) -> Tensor:
        with self.adapter.active(self.backbone.hosts):
            hidden = self.backbone.ops.embed(input_ids, attention_mask, token_type_ids)
            return self._run_blocks(hidden, attention_mask)

    def forward_words(
        self, words: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None
    ) -> Tensor:
        """The same half from word vectors [B, T, H] instead of token ids: differentiable in the input,
        which is what an inversion attack optimises (atlas_pl.privacy)."""
        with self.adapter.active(self.backbone.hosts):
            hidden = self.backbone.ops.embed_vectors(words, attention_mask, token_type_ids)
            return self._run_blocks(hidden, attention_mask)

    def _run_blocks(self, hidden: Tensor, attention_mask: Tensor) -> Tensor:
        ops = self.backbone.ops
        ctx = ops.block_context(hidden, attention_mask)
        for index in range(self.split):
            hidden = ops.run_block(index, hidden, ctx)
        return hidden


class ServerHalf(nn.Module):
    """Blocks [split, L) + final norm + head, with the server-side adapter kept for one client."""

    backbone: SharedBackbone  # a reference set in __init__, not a registered submodule

    def __init__(
        self,
        backbone: SharedBackbone,
        split: int,
        ranks: Mapping[int, int],
        num_labels: int,
        *,
        alpha: float,
        dropout: float = 0.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        object.__setattr__(self, "backbone", backbone)
        self.split = split
        blocks = range(split, backbone.num_layers)
        self.adapter = LoRAAdapter(
            backbone.shapes(blocks), {b: ranks[b] for b in blocks}, alpha=alpha, dropout=dropout, seed=seed
        )
        self.head = ClassificationHead(
            backbone.hidden_size, num_labels, pooling=backbone.pooling, kind=backbone.head, seed=seed
        )

    def forward(self, hidden: Tensor, attention_mask: Tensor) -> Tensor:
        ops = self.backbone.ops
        with self.adapter.active(self.backbone.hosts):
            ctx = ops.block_context(hidden, attention_mask)
            for index in range(self.split, self.backbone.num_layers):
                hidden = ops.run_block(index, hidden, ctx)
            hidden = ops.finalize(hidden)
        return self.head(hidden, attention_mask)


class SplitClientModel(nn.Module):
    """One client's complete trainable state: both halves. `forward` is the unsplit reference path."""

    def __init__(
        self,
        backbone: SharedBackbone,
        split: int,
        ranks: Mapping[int, int],
        num_labels: int,
        *,
        alpha: float = 16.0,
        dropout: float = 0.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not 1 <= split < backbone.num_layers:
            raise ValueError(f"split point {split} out of range; valid: 1..{backbone.num_layers - 1}")
        missing = [b for b in range(backbone.num_layers) if b not in ranks]
        if missing:
            raise ValueError(f"ranks missing for blocks {missing}")
        self.client = ClientHalf(backbone, split, ranks, alpha=alpha, dropout=dropout, seed=seed)
        self.server = ServerHalf(backbone, split, ranks, num_labels, alpha=alpha, dropout=dropout, seed=seed)

    @property
    def split(self) -> int:
        return self.client.split

    @property
    def ranks(self) -> dict[int, int]:
        return {**self.client.adapter.ranks, **self.server.adapter.ranks}

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None
    ) -> Tensor:
        return self.server(self.client(input_ids, attention_mask, token_type_ids), attention_mask)

    def deltas(self) -> dict[ModuleKey, Tensor]:
        """Dense dW per (block, module) over both halves: the input of aggregation."""
        return {**self.client.adapter.deltas(), **self.server.adapter.deltas()}


def split_step(
    model: SplitClientModel, batch: Mapping[str, Tensor], loss_fn: nn.Module | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """One split forward/backward as the protocol runs it; returns (loss, h sent, g returned).

    The client sends h detached; the server computes the loss and returns g = dL/dh; the client then
    backpropagates g through its half. Gradients land in both halves' parameters.
    """
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    h = model.client(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
    sent = h.detach().requires_grad_(True)
    logits = model.server(sent, batch["attention_mask"])
    loss = loss_fn(logits, batch["labels"])
    loss.backward()
    grad = sent.grad
    h.backward(grad)
    return loss.detach(), sent.detach(), grad
