"""Clients trained in one batched step get the same losses and gradients as one after another.

The batched step pads batches and ranks and stacks every client's factors; each of those could route a
gradient to the wrong client or leak padding into a result, so every parameter's gradient is compared
with the sequential split step's, after randomising all trainable state (LoRA B starts at zero, which
would make many gradients trivially equal).
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import Tensor, nn

from atlas_pl.models.batched import batched_split_step
from atlas_pl.models.catalog import REGISTRY
from atlas_pl.models.loading import load_base
from atlas_pl.models.split import SharedBackbone, SplitClientModel, split_step
from atlas_pl.parties.link import nbytes

# fp32 sums in another order differ by ~1e-6 whatever the maths: the sequential fp32 step itself is up to
# 1.1e-6 off its own fp64 values on these models. So fp32 is checked at 5e-6 of the gradient's scale (a
# misrouted gradient is off by ~1e-1) and the exactness claim rests on fp64, checked at 1e-12.
ATOL = 5e-6
SCALE = 0.1


@dataclass
class Case:
    split: int
    ranks: dict[int, int]
    num_labels: int
    rows: int
    length: int
    weighted: bool = False


MIXED = [  # different splits, per-block ranks, batch shapes and label counts; one weighted loss
    Case(1, {0: 2, 1: 3, 2: 1, 3: 4}, 2, 4, 12),
    Case(2, {0: 4, 1: 4, 2: 4, 3: 4}, 3, 3, 9, weighted=True),
    Case(3, {0: 1, 1: 5, 2: 2, 3: 3}, 5, 5, 7),
    Case(2, {0: 3, 1: 1, 2: 6, 3: 2}, 2, 2, 12),
]
UNIFORM = [Case(2, dict.fromkeys(range(4), 4), 2, 3, 10) for _ in range(3)]  # no padding at all


def _backbone(name: str, attn: str) -> SharedBackbone:
    model, _ = load_base(REGISTRY[name], attn_implementation=attn)
    return SharedBackbone(REGISTRY[name], model)


def _batch(case: Case, seed: int, with_types: bool) -> dict[str, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 256, (case.rows, case.length), generator=gen)
    mask = torch.ones_like(ids)
    for row in range(1, case.rows, 2):  # padding inside the client's own batch too
        mask[row, max(1, case.length - 2 * row) :] = 0
    ids = ids.masked_fill(mask == 0, 0)
    labels = torch.randint(0, case.num_labels, (case.rows,), generator=gen)
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    if with_types:
        batch["token_type_ids"] = (torch.arange(case.length)[None] >= case.length // 2).long().expand_as(ids)
    return batch


def _randomize(model: nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * SCALE)


def _clients(backbone: SharedBackbone, cases: list[Case]) -> tuple[list[SplitClientModel], ...]:
    """Two identical sets of client models: one trained sequentially, one batched."""
    seq, bat = [], []
    for k, case in enumerate(cases):
        a = SplitClientModel(backbone, case.split, case.ranks, case.num_labels, seed=k)
        b = SplitClientModel(backbone, case.split, case.ranks, case.num_labels, seed=k)
        _randomize(a, seed=100 + k)
        b.load_state_dict(a.state_dict())
        seq.append(a)
        bat.append(b)
    return seq, bat


def _weights(cases: list[Case]) -> list[Tensor | None]:
    return [torch.linspace(0.5, 2.0, c.num_labels) if c.weighted else None for c in cases]


def _optimizers(model: SplitClientModel) -> list[torch.optim.Optimizer]:
    """One AdamW per half, as the client and server modules own them."""
    return [torch.optim.AdamW(h.parameters(), lr=1e-3) for h in (model.client, model.server)]


def _compare(seq: list[SplitClientModel], bat: list[SplitClientModel]) -> float:
    worst = 0.0
    for k, (a, b) in enumerate(zip(seq, bat)):
        grads_b = dict(b.named_parameters())
        for name, p in a.named_parameters():
            q = grads_b[name]
            assert p.grad is not None and q.grad is not None, f"client {k} {name}: no gradient"
            assert p.grad.abs().max() > 0, f"client {k} {name}: zero gradient makes the check vacuous"
            diff = float((p.grad - q.grad).abs().max()) / max(1.0, float(p.grad.abs().max()))
            worst = max(worst, diff)
            assert diff <= ATOL, f"client {k} {name}: batched grad differs from sequential by {diff:.3g}"
    return worst


@pytest.mark.parametrize(
    ("name", "attn"),
    [("tiny_bert", "eager"), ("tiny_bert", "sdpa"), ("tiny_gpt2", "eager"), ("tiny_llama", "sdpa")],
)
@pytest.mark.parametrize("layout", ["mixed", "uniform"])
def test_batched_step_equals_sequential_steps_over_two_optimizer_steps(
    name: str, attn: str, layout: str
) -> None:
    torch.manual_seed(0)
    backbone = _backbone(name, attn)
    cases = MIXED if layout == "mixed" else UNIFORM
    seq, bat = _clients(backbone, cases)
    weights = _weights(cases)
    opts_seq = [_optimizers(m) for m in seq]
    opts_bat = [_optimizers(m) for m in bat]
    for step in range(2):  # the second step checks each client's own AdamW state moved it identically
        batches = [_batch(c, seed=10 * step + k, with_types=name == "tiny_bert") for k, c in enumerate(cases)]
        for opts in (*opts_seq, *opts_bat):
            for opt in opts:
                opt.zero_grad(set_to_none=True)
        expected = []
        for model, batch, weight in zip(seq, batches, weights):
            loss, _, _ = split_step(model, batch, nn.CrossEntropyLoss(weight=weight))
            expected.append(float(loss))
        result = batched_split_step(bat, batches, weights)
        got = [float(loss) for loss in result.losses]
        assert got == pytest.approx(expected, abs=ATOL), f"step {step}: losses {got} != {expected}"
        worst = _compare(seq, bat)
        print(f"{name}/{attn}/{layout} step {step}: max scaled |grad diff| {worst:.3g}")
        for opts in (*opts_seq, *opts_bat):
            for opt in opts:
                opt.step()
    for a, b in zip(seq, bat):  # after two steps the trained states still agree
        for (name_a, p), q in zip(a.state_dict().items(), b.state_dict().values()):
            assert float((p - q).abs().max()) <= 10 * ATOL, f"{name_a}: parameters drifted apart"
    assert all(h.active is None and not h._forward_hooks for h in backbone.hosts.values())


def test_batched_traffic_counts_what_the_split_protocol_sends() -> None:
    backbone = _backbone("tiny_gpt2", "eager")
    seq, bat = _clients(backbone, MIXED)
    batches = [_batch(c, seed=k, with_types=False) for k, c in enumerate(MIXED)]
    result = batched_split_step(bat, batches, _weights(MIXED))
    for model, batch, traffic in zip(seq, batches, result.traffic):
        _, sent, grad = split_step(model, batch)
        assert traffic.activation_bytes == nbytes((sent, batch["attention_mask"], batch["labels"]))
        assert traffic.grad_bytes == nbytes((grad,))


def test_batched_step_refuses_mismatched_inputs() -> None:
    backbone = _backbone("tiny_bert", "eager")
    _, bat = _clients(backbone, MIXED[:2])
    batches = [_batch(c, seed=k, with_types=False) for k, c in enumerate(MIXED[:2])]
    with pytest.raises(ValueError, match="one batch per model"):
        batched_split_step(bat, batches[:1], None)
    other = SplitClientModel(_backbone("tiny_bert", "eager"), 1, MIXED[0].ranks, 2)
    with pytest.raises(ValueError, match="same shared backbone"):
        batched_split_step([bat[0], other], batches, None)


@pytest.mark.parametrize("name", ["tiny_bert", "tiny_gpt2", "tiny_llama"])
def test_batched_step_is_exact_maths_in_float64(name: str) -> None:
    """fp32 agreement at 1e-6 leaves room for rounding; in fp64 only a real error could exceed 1e-12."""
    backbone = _backbone(name, "eager")
    backbone.model.double()
    seq, bat = _clients(backbone, MIXED)
    for model in (*seq, *bat):
        model.double()
    weights = [None if w is None else w.double() for w in _weights(MIXED)]
    batches = [_batch(c, seed=k, with_types=False) for k, c in enumerate(MIXED)]
    for model, batch, weight in zip(seq, batches, weights):
        split_step(model, batch, nn.CrossEntropyLoss(weight=weight))
    batched_split_step(bat, batches, weights)
    for k, (a, b) in enumerate(zip(seq, bat)):
        for (pname, p), q in zip(a.named_parameters(), b.parameters()):
            assert p.grad is not None and q.grad is not None
            diff = float((p.grad - q.grad).abs().max())
            assert diff <= 1e-12, f"client {k} {pname}: fp64 gradients differ by {diff:.3g}"


@pytest.mark.parametrize("name", ["tiny_bert", "tiny_llama"])
def test_batched_step_over_a_bf16_base_follows_the_hosts_dtype_policy(name: str) -> None:
    """fp32 factors over a bf16 base: the update must run in the base's dtype as LoRAHost runs it (a
    batched update in fp32 would differ from the sequential one by bf16 rounding, ~1e-2)."""
    model, _ = load_base(REGISTRY[name], attn_implementation="eager", dtype=torch.bfloat16)
    backbone = SharedBackbone(REGISTRY[name], model)
    seq, bat = _clients(backbone, UNIFORM)
    batches = [_batch(c, seed=k, with_types=False) for k, c in enumerate(UNIFORM)]
    expected = [float(split_step(m, b)[0]) for m, b in zip(seq, batches)]
    got = [float(loss) for loss in batched_split_step(bat, batches).losses]
    assert got == pytest.approx(expected, abs=1e-3)
    for a, b in zip(seq, bat):
        for (pname, p), q in zip(a.named_parameters(), b.parameters()):
            assert p.dtype == torch.float32 and p.grad is not None and q.grad is not None
            diff = float((p.grad - q.grad).abs().max()) / max(1.0, float(p.grad.abs().max()))
            assert diff <= 1e-3, f"{pname}: bf16-base gradients differ by {diff:.3g}"
