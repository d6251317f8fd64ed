"""Phase 2 allocator: budgets hold, importance orders ranks, devices differ, uniform is uniform, errors name.

Architectures come from Hugging Face configs alone (`ModelArch.from_hf_config`), so these tests need no
weights; test_memory.py shows those analytic counts equal the live modules'.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import transformers

from atlas_pl.models.catalog import REGISTRY
from atlas_pl.models.families import DEFAULT_TARGETS
from atlas_pl.phases.allocation import (
    DEFAULT_CANDIDATES,
    ClientAllocation,
    InfeasibleClientError,
    allocate,
    nearest_candidate,
)
from atlas_pl.phases.memory import MemorySettings, ModelArch, client_memory, fixed_bytes, rank_cost

_CONFIGS = {"bert": "BertConfig", "gpt2": "GPT2Config", "llama": "LlamaConfig"}


def _arch(name: str) -> ModelArch:
    if name == "minilm_like":  # all-MiniLM-L6-v2's shape, without its weights
        cfg = transformers.BertConfig(
            hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536
        )
        return ModelArch.from_hf_config("bert", cfg, DEFAULT_TARGETS["bert"])
    spec = REGISTRY[name]
    cfg = getattr(transformers, _CONFIGS[spec.family])(**spec.tiny_config)
    return ModelArch.from_hf_config(spec.family, cfg, DEFAULT_TARGETS[spec.family])


SETTINGS = MemorySettings(batch_size=8, seq_len=32)


def _fits(arch: ModelArch, split: int, rank: int, settings: MemorySettings, budget: int) -> bool:
    return fixed_bytes(arch, split, settings) + split * rank_cost(arch, rank, settings) <= budget


def _assert_importance_order(alloc: ClientAllocation) -> None:
    imp = alloc.importance
    for i in alloc.ranks:
        for j in alloc.ranks:
            if imp[i] > imp[j]:
                assert alloc.ranks[i] >= alloc.ranks[j], (alloc.ranks, imp)


def _random_candidates(rng: np.random.Generator) -> tuple[int, ...]:
    kind = rng.integers(3)
    if kind == 0:
        return DEFAULT_CANDIDATES
    if kind == 1:  # a dense set
        return tuple(range(int(rng.integers(1, 4)), 129, int(rng.integers(1, 5))))
    return tuple(int(c) for c in rng.choice(np.arange(1, 129), size=int(rng.integers(1, 9)), replace=False))


def test_property_allocation_never_exceeds_any_budget_and_respects_importance() -> None:
    """Random architectures, batch shapes, dtypes, importances, budgets, candidate sets and modes."""
    rng = np.random.default_rng(20240601)
    archs = {name: _arch(name) for name in ("tiny_bert", "tiny_gpt2", "tiny_llama", "minilm_like")}
    checked = dropped = 0
    for _ in range(250):
        arch = archs[str(rng.choice(list(archs)))]
        settings = MemorySettings(
            batch_size=int(rng.integers(1, 17)),
            seq_len=int(rng.integers(4, 129)),
            base_dtype=str(rng.choice(["float32", "bfloat16"])),
            attention=str(rng.choice(["sdpa", "eager"])),
        )
        cands = _random_candidates(rng)
        num_layers = arch.num_layers
        low = fixed_bytes(arch, 1, settings) * 0.9
        high = (
            fixed_bytes(arch, num_layers - 1, settings) + num_layers * rank_cost(arch, max(cands), settings)
        ) * 1.3
        n_dev = int(rng.integers(1, 5))
        budgets = {f"d{k}": int(np.exp(rng.uniform(np.log(low), np.log(high)))) for k in range(n_dev)}
        n_clients = int(rng.integers(1, 7))
        devices = [f"d{int(rng.integers(n_dev))}" for _ in range(n_clients)]
        importance = rng.dirichlet(np.full(num_layers, rng.uniform(0.2, 5.0)), size=n_clients)
        importance[rng.random(importance.shape) < 0.15] = 0.0  # some blocks without any gradient
        mode = str(rng.choice(["importance", "uniform"]))
        result = allocate(
            arch, devices, budgets, settings, importance, candidates=cands, mode=mode, drop_infeasible=True
        )
        assert [a.device for a in result] == devices
        for alloc in result:
            budget = budgets[alloc.device]
            if alloc.dropped:
                dropped += 1
                assert not _fits(arch, 1, min(cands), settings, budget)
                assert alloc.shortfall_bytes == alloc.memory.total - budget > 0
                continue
            checked += 1
            assert alloc.memory.total <= budget
            assert alloc.memory == client_memory(arch, alloc.split, alloc.ranks, settings)
            assert 1 <= alloc.split <= num_layers - 1
            assert sorted(alloc.ranks) == list(range(num_layers))
            assert set(alloc.ranks.values()) <= set(cands)
            # weak devices keep fewer blocks: the split is the largest that fits at the minimum rank
            if alloc.split < num_layers - 1:
                assert not _fits(arch, alloc.split + 1, min(cands), settings, budget)
            if mode == "uniform":
                assert len({r for a in result if not a.dropped for r in a.ranks.values()}) == 1
            else:
                _assert_importance_order(alloc)
                # r* is the largest candidate the client blocks fit uniformly
                assert _fits(arch, alloc.split, alloc.rank_star, settings, budget)
                bigger = [c for c in cands if c > alloc.rank_star]
                assert not bigger or not _fits(arch, alloc.split, bigger[0], settings, budget)
    assert checked > 300 and dropped > 10  # both regimes were exercised


def _bound_budgets(arch: ModelArch) -> dict[str, int]:
    """Three devices whose budgets bind: exactly s blocks at exactly rank r* fit, nothing more."""
    plan = {"phone": (1, 8), "laptop": (2, 16), "workstation": (3, 64)}
    return {
        d: fixed_bytes(arch, s, SETTINGS) + s * rank_cost(arch, r, SETTINGS) + 1 for d, (s, r) in plan.items()
    }


def test_binding_budgets_differ_across_devices_and_share_the_pattern_within_a_cluster() -> None:
    arch = _arch("tiny_bert")
    budgets = _bound_budgets(arch)
    rising = np.array([0.1, 0.2, 0.3, 0.4])  # cluster A: deeper blocks matter more
    falling = rising[::-1].copy()  # cluster B: the opposite
    devices = ["phone", "laptop", "workstation", "laptop"] * 2
    importance = [rising] * 4 + [falling] * 4
    result = allocate(arch, devices, budgets, SETTINGS, importance)

    a_phone, a_laptop, a_work, a_laptop2, b_phone, b_laptop, b_work, b_laptop2 = result
    assert [a.split for a in result[:3]] == [1, 2, 3]  # weaker devices keep fewer blocks
    assert [a.rank_star for a in result[:3]] == [8, 16, 64]
    # hand-worked from DESIGN.md §4: B = L * r*, r_l = nearest candidate to importance_l * B
    assert a_phone.ranks == {0: 4, 1: 8, 2: 8, 3: 16}
    assert a_laptop.ranks == {0: 8, 1: 16, 2: 16, 3: 32}
    assert a_work.ranks == {0: 32, 1: 64, 2: 64, 3: 64}
    # cluster B on the phone: block 0 (most important) wanted 16, steps down to fit; the server blocks
    # then may not exceed it
    assert b_phone.ranks == {0: 8, 1: 8, 2: 8, 3: 4}
    # on the laptop cluster B wanted [32, 16 | 16, 8]; block 1 steps down to the minimum before block 0
    # gives way (DESIGN.md's rule, which can leave some of C unused), and the server blocks follow block 1
    assert b_laptop.ranks == {0: 16, 1: 4, 2: 4, 3: 4}
    # different devices, different ranks; same device and cluster, identical; one pattern per cluster
    assert len({tuple(a.ranks.values()) for a in (a_phone, a_laptop, a_work)}) == 3
    assert a_laptop.ranks == a_laptop2.ranks and b_laptop.ranks == b_laptop2.ranks
    assert a_laptop.ranks != b_laptop.ranks  # importance, not only the device, shapes the ranks
    for alloc in result:
        _assert_importance_order(alloc)
        assert alloc.memory.total <= budgets[alloc.device]
    for cluster in (result[:4], result[4:]):
        order = np.argsort(-np.asarray(cluster[0].importance), kind="stable")
        for alloc in cluster:  # ranks are non-increasing along the cluster's importance order
            ranks = [alloc.ranks[int(b)] for b in order]
            assert ranks == sorted(ranks, reverse=True)


def test_stepping_down_takes_the_least_important_client_block_first() -> None:
    arch = _arch("tiny_gpt2")
    # room for 3 blocks: two at 32 and one at 16, but importance asks for 64 on two of them
    budget = (
        fixed_bytes(arch, 3, SETTINGS) + 2 * rank_cost(arch, 32, SETTINGS) + rank_cost(arch, 16, SETTINGS)
    )
    importance = np.array([0.3, 0.1, 0.35, 0.25])
    (alloc,) = allocate(arch, ["x"], {"x": budget}, SETTINGS, [importance], max_split=3)
    assert alloc.split == 3 and alloc.rank_star == 16
    # B = 64: wanted [16, 8, 16, 16]; that fits, so nothing steps down
    assert alloc.ranks == {0: 16, 1: 8, 2: 16, 3: 16}
    tight = fixed_bytes(arch, 3, SETTINGS) + 3 * rank_cost(arch, 8, SETTINGS)
    (alloc,) = allocate(arch, ["x"], {"x": tight}, SETTINGS, [importance], max_split=3)
    # r* = 8, B = 32: wanted [8, 4, 8, 8] (fits: 8 + 4 + 8 <= 3 * 8)
    assert alloc.ranks == {0: 8, 1: 4, 2: 8, 3: 8}
    sharp = np.array([0.5, 0.05, 0.4, 0.05])
    (alloc,) = allocate(arch, ["x"], {"x": tight}, SETTINGS, [sharp], max_split=3)
    # B = 32: wanted [16, 4, 16, 4]: 36 > 24 rank units on the client; the least important client block
    # above the minimum (block 2) steps down, and again, until [16, 4, 4] fits; block 0 keeps its 16
    assert alloc.ranks == {0: 16, 1: 4, 2: 4, 3: 4}
    assert sum(rank_cost(arch, alloc.ranks[b], SETTINGS) for b in range(3)) <= tight - fixed_bytes(
        arch, 3, SETTINGS
    )


def test_uniform_importance_gives_r_star_everywhere_and_ample_budgets_give_the_largest_candidate() -> None:
    arch = _arch("tiny_llama")
    huge = {"big": 10**12}
    (alloc,) = allocate(arch, ["big"], huge, SETTINGS)
    assert alloc.split == arch.num_layers - 1
    assert alloc.ranks == dict.fromkeys(range(arch.num_layers), 64) and alloc.rank_star == 64
    assert nearest_candidate(12.0, (8, 16)) == 8  # a tie goes to the cheaper candidate
    assert nearest_candidate(12.1, (8, 16)) == 16


def test_dense_candidate_sets_work() -> None:
    arch = _arch("tiny_bert")
    budgets = _bound_budgets(arch)
    dense = tuple(range(2, 65, 2))
    importance = [np.array([0.1, 0.2, 0.3, 0.4])] * 3
    result = allocate(
        arch, ["phone", "laptop", "workstation"], budgets, SETTINGS, importance, candidates=dense
    )
    for alloc in result:
        assert set(alloc.ranks.values()) <= set(dense)
        assert alloc.memory.total <= budgets[alloc.device]
        _assert_importance_order(alloc)
    phone = result[0]
    assert phone.rank_star == 8 and phone.ranks == {0: 4, 1: 6, 2: 10, 3: 12}  # finer than {4, 8, 16}
    assert len({tuple(a.ranks.values()) for a in result}) == 3


def test_uniform_mode_gives_one_rank_to_every_block_of_every_client() -> None:
    arch = _arch("tiny_bert")
    budgets = _bound_budgets(arch)
    devices = ["phone", "laptop", "workstation"]
    importance = [np.array([0.1, 0.2, 0.3, 0.4])] * 3
    result = allocate(arch, devices, budgets, SETTINGS, importance, mode="uniform")
    assert {r for a in result for r in a.ranks.values()} == {8}  # the largest the phone fits
    assert [a.split for a in result] == [1, 2, 3]
    given = allocate(arch, devices[1:], budgets, SETTINGS, mode="uniform", uniform_rank=32)
    assert {r for a in given for r in a.ranks.values()} == {32}
    assert [a.split for a in given] == [1, 3]  # the laptop gives up a block to afford rank 32
    fixed = allocate(arch, devices[1:], budgets, SETTINGS, mode="uniform", split=2)
    assert [a.split for a in fixed] == [2, 2] and {r for a in fixed for r in a.ranks.values()} == {16}
    for alloc in [*result, *given, *fixed]:
        assert alloc.memory.total <= budgets[alloc.device]


def test_infeasible_client_is_a_named_error_or_a_logged_drop(caplog: pytest.LogCaptureFixture) -> None:
    arch = _arch("tiny_bert")
    need = fixed_bytes(arch, 1, SETTINGS) + rank_cost(arch, 4, SETTINGS)
    budgets = {"cpu_tiny": need - 1000, "laptop": need * 10}
    with pytest.raises(InfeasibleClientError) as info:
        allocate(arch, ["laptop", "cpu_tiny"], budgets, SETTINGS, client_ids=["c0", "c7"])
    err = info.value
    assert err.client == "c7" and err.device == "cpu_tiny" and err.shortfall == 1000
    message = str(err)
    assert (
        "client c7" in message
        and "'cpu_tiny'" in message
        and "short by" in message
        and "1000 bytes" in message
    )
    assert "drop_infeasible" in message

    with caplog.at_level(logging.WARNING, logger="atlas_pl.phases.allocation"):
        result = allocate(
            arch, ["laptop", "cpu_tiny"], budgets, SETTINGS, client_ids=["c0", "c7"], drop_infeasible=True
        )
    assert [a.dropped for a in result] == [False, True]
    assert result[1].split == 0 and result[1].ranks == {} and result[1].shortfall_bytes == 1000
    assert any("dropping client c7" in r.getMessage() for r in caplog.records)
    two = {"mid": fixed_bytes(arch, 2, SETTINGS) + 2 * rank_cost(arch, 4, SETTINGS)}
    assert allocate(arch, ["mid"], two, SETTINGS, split=2)[0].split == 2
    with pytest.raises(InfeasibleClientError, match="client 0 on device 'mid' cannot hold 3 blocks"):
        allocate(arch, ["mid"], two, SETTINGS, split=3)  # a fixed split the device cannot afford
    with pytest.raises(InfeasibleClientError, match="rank 64"):  # a uniform rank too large to fit at all
        allocate(arch, ["cpu_tiny"], {"cpu_tiny": need}, SETTINGS, mode="uniform", uniform_rank=64)


def test_json_and_argument_errors() -> None:
    arch = _arch("tiny_gpt2")
    (alloc,) = allocate(arch, ["x"], {"x": 10**9}, SETTINGS, [np.array([1.0, 2.0, 3.0, 4.0])])
    data = json.loads(json.dumps(alloc.to_json()))
    assert (
        data["ranks"] == [alloc.ranks[b] for b in range(4)] and data["memory"]["total"] == alloc.memory.total
    )
    assert data["adapter_bytes"] == alloc.memory.lora_params > 0 and data["server_adapter_bytes"] > 0
    assert data["importance"] == pytest.approx([0.1, 0.2, 0.3, 0.4])
    with pytest.raises(ValueError, match="allocation.mode"):
        allocate(arch, ["x"], {"x": 10**9}, SETTINGS, mode="greedy")
    with pytest.raises(ValueError, match="no memory budget for device"):
        allocate(arch, ["y"], {"x": 10**9}, SETTINGS)
    with pytest.raises(ValueError, match="rank_candidates"):
        allocate(arch, ["x"], {"x": 10**9}, SETTINGS, candidates=[0, 4])
    with pytest.raises(ValueError, match="importance has 3 entries"):
        allocate(arch, ["x"], {"x": 10**9}, SETTINGS, [np.ones(3)])
    with pytest.raises(ValueError, match="non-negative"):
        allocate(arch, ["x"], {"x": 10**9}, SETTINGS, [np.array([1.0, -1.0, 1.0, 1.0])])
    with pytest.raises(ValueError, match="split point 4 out of range"):
        allocate(arch, ["x"], {"x": 10**9}, SETTINGS, split=4)
