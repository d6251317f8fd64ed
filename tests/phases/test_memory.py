"""Phase 2 memory model: exact counts against the real modules, activations against autograd's own record.

The allocator trusts these numbers to keep clients inside their budgets, so each term is checked against
what PyTorch actually holds: parameters against the modules a client-half forward touches, LoRA state
against a real LoRAAdapter, its gradients and a stepped AdamW, and activations against the tensors
autograd saves (torch.autograd.graph.saved_tensors_hooks) during a real client-half forward.
"""

from __future__ import annotations

import functools

import pytest
import torch

from atlas_pl.models.catalog import REGISTRY
from atlas_pl.models.loading import load_base
from atlas_pl.models.measure import saved_activation_bytes
from atlas_pl.models.split import SharedBackbone, SplitClientModel, split_step
from atlas_pl.phases.memory import (
    MemorySettings,
    ModelArch,
    activation_bytes,
    base_bytes,
    budget_bytes,
    client_memory,
    dtype_bytes,
    fixed_bytes,
    lora_bytes,
    rank_cost,
)

from ..tiny_models import tiny_family

TOLERANCE = 0.25  # the brief's bound on the activation estimate; on CPU it is measured exact


@functools.cache
def _backbone(name: str, attn: str = "sdpa", dtype: torch.dtype = torch.float32) -> SharedBackbone:
    if name in ("roberta", "distilbert"):  # no tiny registry entry
        spec, model = tiny_family(name, attn)
        return SharedBackbone(spec, model)
    model, _ = load_base(REGISTRY[name], attn_implementation=attn, dtype=dtype)
    return SharedBackbone(REGISTRY[name], model)


def _batch(batch: int, seq: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 256, (batch, seq), generator=gen)
    mask = torch.ones_like(ids)
    mask[0, seq // 2 :] = 0  # padding changes nothing in what is kept, but the test should have some
    return ids.masked_fill(mask == 0, 0), mask


ACTIVATION_CASES = [
    # (model, attention, batch, seq_len, split, ranks of blocks 0..3)
    ("tiny_bert", "sdpa", 4, 48, 3, (4, 8, 16, 4)),
    ("tiny_bert", "sdpa", 8, 16, 1, (32, 4, 4, 4)),
    ("tiny_bert", "eager", 4, 48, 3, (4, 8, 16, 4)),
    ("tiny_bert", "eager", 2, 64, 2, (64, 64, 8, 8)),
    ("tiny_gpt2", "sdpa", 4, 48, 3, (4, 8, 16, 4)),
    ("tiny_gpt2", "sdpa", 8, 16, 1, (32, 4, 4, 4)),
    ("tiny_gpt2", "eager", 4, 48, 3, (4, 8, 16, 4)),
    ("tiny_gpt2", "eager", 2, 64, 2, (64, 64, 8, 8)),
    ("tiny_llama", "sdpa", 4, 48, 3, (4, 8, 16, 4)),
    ("tiny_llama", "eager", 2, 64, 2, (64, 64, 8, 8)),
]


@pytest.mark.parametrize(("name", "attn", "batch", "seq", "split", "ranks"), ACTIVATION_CASES)
def test_activation_estimate_matches_saved_tensors(
    name: str, attn: str, batch: int, seq: int, split: int, ranks: tuple[int, ...]
) -> None:
    backbone = _backbone(name, attn)
    arch = ModelArch.from_backbone(backbone)
    rank_map = dict(enumerate(ranks))
    model = SplitClientModel(backbone, split, rank_map, 2).train()
    measured = saved_activation_bytes(model, backbone, *_batch(batch, seq))
    estimate = activation_bytes(arch, split, MemorySettings(batch, seq, attention=attn), rank_map)
    error = (estimate - measured) / measured
    print(
        f"{name} {attn} b={batch} T={seq} s={split}: measured {measured}, estimate {estimate}, {error:+.2%}"
    )
    assert abs(error) <= TOLERANCE


@pytest.mark.parametrize(
    ("name", "targets", "dropout", "dtype"),
    [
        ("tiny_bert", None, 0.1, torch.float32),  # dropout copies x per target and keeps a mask
        ("tiny_gpt2", None, 0.0, torch.bfloat16),  # bf16 base, fp32 factors: per-target casts of x
        ("tiny_llama", None, 0.0, torch.bfloat16),  # fp32 RMSNorm copies
        ("tiny_bert", ["query", "key", "value", "attention.output.dense", "intermediate.dense"], 0.0, None),
        ("tiny_gpt2", ["c_fc"], 0.0, None),  # MLP only: block 0 keeps no attention state
        ("roberta", None, 0.0, None),
        ("distilbert", None, 0.0, None),
    ],
)
def test_activation_estimate_other_targets_dtypes_and_families(
    name: str, targets: list[str] | None, dropout: float, dtype: torch.dtype | None
) -> None:
    if targets is None:
        backbone = _backbone(name, "sdpa", dtype or torch.float32)
    else:
        base = _backbone(name)
        backbone = SharedBackbone(base.spec, load_base(base.spec)[0], targets=targets)
    arch = ModelArch.from_backbone(backbone)
    ranks = {b: 4 * (b + 1) for b in range(backbone.num_layers)}
    settings = MemorySettings(4, 40, base_dtype=dtype or torch.float32, lora_dropout=dropout > 0)
    for split in (1, 2):
        model = SplitClientModel(backbone, split, ranks, 2, dropout=dropout).train()
        measured = saved_activation_bytes(model, backbone, *_batch(4, 40))
        estimate = activation_bytes(arch, split, settings, ranks)
        error = (estimate - measured) / measured
        print(f"{name} {targets} dropout={dropout} {dtype} s={split}: {measured} vs {estimate}, {error:+.2%}")
        assert abs(error) <= TOLERANCE


@pytest.mark.parametrize("name", ["tiny_bert", "tiny_gpt2", "tiny_llama", "roberta", "distilbert"])
def test_arch_from_config_counts_like_the_modules(name: str) -> None:
    """The analytic counts (for planning without weights) equal the live modules' counts."""
    backbone = _backbone(name)
    live = ModelArch.from_backbone(backbone)
    planned = ModelArch.from_hf_config(backbone.spec.family, backbone.model.config, backbone.targets)
    assert planned == live
    assert live.target_shapes(range(backbone.num_layers)) == backbone.shapes(range(backbone.num_layers))


@pytest.mark.parametrize("name", ["tiny_bert", "tiny_gpt2", "tiny_llama"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_base_bytes_are_the_parameters_a_client_forward_touches(name: str, dtype: torch.dtype) -> None:
    """Independent of the family tables: hook every module, run the client half, count what ran."""
    backbone = _backbone(name, "sdpa", dtype)
    arch = ModelArch.from_backbone(backbone)
    for split in (1, 3):
        model = SplitClientModel(backbone, split, dict.fromkeys(range(4), 4), 2)
        exact = sum(p.numel() * p.element_size() for p in _touched_parameters(model, backbone).values())
        assert base_bytes(arch, split, MemorySettings(2, 8, base_dtype=dtype)) == exact


def _touched_parameters(model: SplitClientModel, backbone: SharedBackbone) -> dict[int, torch.Tensor]:
    """Frozen base parameters of every module that runs during a client-half forward."""
    touched: dict[int, torch.Tensor] = {}

    def record(module: torch.nn.Module, *_: object) -> None:
        touched.update({id(p): p for p in module.parameters(recurse=False)})

    hooks = [module.register_forward_hook(record) for module in backbone.model.modules()]
    try:
        with torch.no_grad():
            model.client(*_batch(2, 8))
    finally:
        for hook in hooks:
            hook.remove()
    return touched


@pytest.mark.parametrize("name", ["tiny_bert", "tiny_gpt2", "tiny_llama"])
def test_lora_params_grads_and_adamw_state_equal_the_real_ones(name: str) -> None:
    backbone = _backbone(name)
    arch = ModelArch.from_backbone(backbone)
    ranks = {0: 4, 1: 16, 2: 8, 3: 32}
    split = 3
    model = SplitClientModel(backbone, split, ranks, 2).train()
    expected = lora_bytes(arch, ranks, range(split))
    client = model.client.adapter
    params = list(client.parameters())
    assert expected.params == sum(p.numel() for p in params)
    assert expected.tensors == len(params)
    assert expected.param_bytes == sum(p.numel() * p.element_size() for p in params)
    server = lora_bytes(arch, ranks, range(split, backbone.num_layers))
    assert server.params == sum(p.numel() for p in model.server.adapter.parameters())

    ids, mask = _batch(4, 12)
    split_step(model, {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 1, 1, 0])})
    assert expected.grad_bytes == sum(p.grad.numel() * p.grad.element_size() for p in params)
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    optimizer.step()
    state = [t for p in params for t in optimizer.state[p].values() if isinstance(t, torch.Tensor)]
    assert expected.optimizer_bytes == sum(t.numel() * t.element_size() for t in state)

    memory = client_memory(arch, split, ranks, MemorySettings(4, 12))
    assert memory.lora_params == expected.param_bytes
    assert memory.lora_grads == expected.grad_bytes
    assert memory.lora_optimizer == expected.optimizer_bytes


def test_total_is_fixed_part_plus_per_block_rank_costs() -> None:
    """The allocator's decomposition: total = fixed(s) + sum_l M(r_l), for any split and ranks."""
    arch = ModelArch.from_backbone(_backbone("tiny_gpt2"))
    for settings in (MemorySettings(8, 32), MemorySettings(2, 64, base_dtype="bf16", attention="eager")):
        for split, ranks in ((1, {0: 4}), (3, {0: 8, 1: 64, 2: 4})):
            memory = client_memory(arch, split, ranks, settings)
            assert memory.total == fixed_bytes(arch, split, settings) + sum(
                rank_cost(arch, r, settings) for r in ranks.values()
            )
            assert memory.to_json()["total"] == memory.total
    assert rank_cost(arch, 8, MemorySettings(8, 32)) < rank_cost(arch, 16, MemorySettings(8, 32))


def test_dtypes_budgets_and_errors() -> None:
    assert dtype_bytes(torch.bfloat16) == dtype_bytes("bf16") == 2
    assert dtype_bytes("torch.float32") == 4
    assert budget_bytes(2.0) == 2 * 1024**3
    with pytest.raises(ValueError, match="unknown dtype"):
        dtype_bytes("float8")
    with pytest.raises(ValueError, match="attention"):
        MemorySettings(2, 8, attention="flash")
    arch = ModelArch.from_backbone(_backbone("tiny_bert"))
    with pytest.raises(ValueError, match="split point 5 out of range"):
        base_bytes(arch, 5, MemorySettings(2, 8))
    with pytest.raises(ValueError, match="match no projection"):
        ModelArch.from_hf_config("bert", _backbone("tiny_bert").model.config, ["c_attn"])
