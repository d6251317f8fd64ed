"""The split backbone: exactness of the split, the shared frozen base, adapter state I/O."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from atlas_pl.models.catalog import REGISTRY, ModelSpec
from atlas_pl.models.loading import load_base
from atlas_pl.models.split import SharedBackbone, SplitClientModel, split_step

from ..tiny_models import tiny_family

TINY = ["tiny_bert", "tiny_gpt2", "tiny_llama"]


def _extra_family(family: str) -> tuple[ModelSpec, torch.nn.Module]:
    return tiny_family(family, "eager")


def _backbone(name: str, attn: str = "eager") -> SharedBackbone:
    if name in ("roberta", "distilbert"):
        spec, model = _extra_family(name)
    else:
        spec = REGISTRY[name]
        model, _ = load_base(spec, attn_implementation=attn)
    return SharedBackbone(spec, model)


def _batch(vocab: int = 256, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (4, 12), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0  # padding in the batch
    mask[3, 4:] = 0
    ids = ids.masked_fill(mask == 0, 0)
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 1, 1, 0])}


def _randomize(model: torch.nn.Module, seed: int = 1) -> None:
    """LoRA B starts at zero; give every trainable tensor a non-trivial value so gradients flow everywhere."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)


@pytest.mark.parametrize("name", [*TINY, "roberta", "distilbert"])
def test_blockwise_forward_matches_hugging_face(name: str) -> None:
    backbone = _backbone(name)
    batch = _batch()
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        reference = backbone.model(input_ids=ids, attention_mask=mask).last_hidden_state
        ops = backbone.ops
        hidden = ops.embed(ids, mask, None)
        ctx = ops.block_context(hidden, mask)
        for index in range(backbone.num_layers):
            hidden = ops.run_block(index, hidden, ctx)
        hidden = ops.finalize(hidden)
    valid = mask.bool()
    torch.testing.assert_close(hidden[valid], reference[valid], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", [*TINY, "roberta", "distilbert"])
def test_split_and_unsplit_give_bitwise_equal_loss_and_gradients(name: str) -> None:
    backbone = _backbone(name)
    ranks = {b: 2 + b for b in range(backbone.num_layers)}
    split_model = SplitClientModel(backbone, 2, ranks, 2, seed=3)
    whole_model = SplitClientModel(backbone, 2, ranks, 2, seed=3)
    _randomize(split_model)
    whole_model.load_state_dict(split_model.state_dict())
    batch = _batch()

    loss_split, sent, grad = split_step(split_model, batch)
    logits = whole_model(batch["input_ids"], batch["attention_mask"])
    loss_whole = F.cross_entropy(logits, batch["labels"])
    loss_whole.backward()

    assert torch.equal(loss_split, loss_whole.detach())
    named_whole = dict(whole_model.named_parameters())
    assert len(named_whole) > 4
    for pname, param in split_model.named_parameters():
        assert param.grad is not None, pname
        assert torch.count_nonzero(param.grad) > 0, pname
        assert torch.equal(param.grad, named_whole[pname].grad), pname
    # what crossed the split: the client's activations and the server's gradient w.r.t. them
    assert sent.shape == (4, 12, backbone.hidden_size) and grad.shape == sent.shape


def test_clients_share_one_frozen_base_and_train_independently() -> None:
    backbone = _backbone("tiny_bert")
    base_ptrs = {n: p.data_ptr() for n, p in backbone.model.named_parameters()}
    base_before = {n: p.detach().clone() for n, p in backbone.model.named_parameters()}
    first = SplitClientModel(backbone, 1, {0: 2, 1: 4, 2: 8, 3: 2}, 2, seed=0)
    second = SplitClientModel(backbone, 3, {0: 8, 1: 8, 2: 4, 3: 16}, 3, seed=0)

    # the halves reference the one base: same storage, and no base tensor is a client parameter
    for model in (first, second):
        for half in (model.client, model.server):
            assert half.backbone is backbone
        own = {p.data_ptr() for p in model.parameters()}
        assert not own & set(base_ptrs.values())
        assert all(not p.requires_grad for p in backbone.model.parameters())
    # the adapters carry exactly the requested per-block ranks, on the requested side of the split
    assert first.client.adapter.ranks == {0: 2} and first.server.adapter.ranks == {1: 4, 2: 8, 3: 2}
    assert second.client.adapter.ranks == {0: 8, 1: 8, 2: 4} and second.server.adapter.ranks == {3: 16}
    for (block, module), _ in backbone.hosts.items():
        adapter = (first.client if block < 1 else first.server).adapter
        assert adapter.pair((block, module))[0].shape[0] == first.ranks[block]

    batch = _batch()
    batch2 = {**batch, "labels": torch.tensor([0, 2, 1, 2])}
    with torch.no_grad():
        second_before = second(batch["input_ids"], batch["attention_mask"]).clone()
    state2 = {k: v.clone() for k, v in second.state_dict().items()}
    opt = torch.optim.AdamW(first.parameters(), lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        split_step(first, batch)
        opt.step()
    # first changed, second and the base did not
    assert any(
        not torch.equal(a, b)
        for a, b in zip(
            first.parameters(),
            SplitClientModel(backbone, 1, {0: 2, 1: 4, 2: 8, 3: 2}, 2, seed=0).parameters(),
        )
    )
    for key, value in second.state_dict().items():
        assert torch.equal(value, state2[key]), key
    for name, param in backbone.model.named_parameters():
        assert torch.equal(param, base_before[name]), name
        assert param.data_ptr() == base_ptrs[name]
    with torch.no_grad():
        assert torch.equal(second(batch["input_ids"], batch["attention_mask"]), second_before)
    split_step(second, batch2)  # the second client still trains on its own 3-class task


def test_fresh_adapter_leaves_the_base_function_unchanged() -> None:
    backbone = _backbone("tiny_gpt2")
    model = SplitClientModel(backbone, 2, {b: 4 for b in range(4)}, 2)
    batch = _batch()
    with torch.no_grad():
        hidden = model.client(batch["input_ids"], batch["attention_mask"])
        ops = backbone.ops
        plain = ops.embed(batch["input_ids"], batch["attention_mask"], None)
        ctx = ops.block_context(plain, batch["attention_mask"])
        for index in range(2):
            plain = ops.run_block(index, plain, ctx)
    assert torch.equal(hidden, plain)  # B = 0 at init: dW = 0


def test_adapter_state_roundtrip_and_dense_deltas() -> None:
    backbone = _backbone("tiny_llama")
    ranks = {0: 2, 1: 4, 2: 4, 3: 8}
    source = SplitClientModel(backbone, 2, ranks, 2, seed=0)
    _randomize(source, seed=7)
    target = SplitClientModel(backbone, 2, ranks, 2, seed=5)
    target.load_state_dict(source.state_dict())  # the client's trainable state only: adapters and head
    assert all(not k.startswith("backbone") for k in source.state_dict())
    src_deltas, tgt_deltas = source.deltas(), target.deltas()
    assert set(src_deltas) == set(backbone.hosts)
    for key, dw in src_deltas.items():
        host = backbone.hosts[key]
        assert dw.shape == (host.out_features, host.in_features)
        assert torch.equal(dw, tgt_deltas[key])
        a, b = source.client.adapter.pair(key) if key[0] < 2 else source.server.adapter.pair(key)
        scale = 16.0 / ranks[key[0]]
        torch.testing.assert_close(dw, scale * b.detach() @ a.detach())


def test_bad_split_point_and_rank_are_refused() -> None:
    backbone = _backbone("tiny_bert")
    with pytest.raises(ValueError, match="valid: 1..3"):
        SplitClientModel(backbone, 4, {b: 4 for b in range(4)}, 2)
    with pytest.raises(ValueError, match="must be positive"):
        SplitClientModel(backbone, 2, {0: 4, 1: 0, 2: 4, 3: 4}, 2)
    with pytest.raises(ValueError, match="matches no projection"):
        SharedBackbone(REGISTRY["tiny_bert"], load_base(REGISTRY["tiny_bert"])[0], targets=["nope"])


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("name", TINY)
def test_blockwise_forward_with_adapters_matches_hugging_face(name: str, attn: str) -> None:
    """With every block's LoRA active, our block-by-block path equals the stock HF forward."""
    backbone = _backbone(name, attn)
    model = SplitClientModel(backbone, 2, {b: 3 for b in range(backbone.num_layers)}, 2)
    _randomize(model, seed=11)
    batch = _batch()
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        with model.client.adapter.active(backbone.hosts), model.server.adapter.active(backbone.hosts):
            reference = backbone.model(input_ids=ids, attention_mask=mask).last_hidden_state
        hidden = model.client(ids, mask)
        with model.server.adapter.active(backbone.hosts):
            ctx = backbone.ops.block_context(hidden, mask)
            for index in range(2, backbone.num_layers):
                hidden = backbone.ops.run_block(index, hidden, ctx)
            hidden = backbone.ops.finalize(hidden)
    valid = mask.bool()
    assert not torch.allclose(hidden[valid], _plain(backbone, ids, mask)[valid])  # the adapters act
    torch.testing.assert_close(hidden[valid], reference[valid], rtol=1e-5, atol=1e-5)


def _plain(backbone: SharedBackbone, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return backbone.model(input_ids=ids, attention_mask=mask).last_hidden_state
