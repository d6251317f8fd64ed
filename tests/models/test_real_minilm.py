"""The real packaged MiniLM: offline load, sensible features on real SST-2, exact split on real text."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from torch.nn import functional as F

from atlas_pl.data import load_glue_split
from atlas_pl.models.catalog import REGISTRY
from atlas_pl.models.loading import load_base
from atlas_pl.models.split import SharedBackbone, SplitClientModel, split_step

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def minilm():
    spec = REGISTRY["minilm"]
    model, tokenizer = load_base(spec)
    return SharedBackbone(spec, model, pooling="mean"), tokenizer


def _encode(tokenizer, texts: list[str]) -> dict[str, torch.Tensor]:
    enc = tokenizer(texts, truncation=True, max_length=64, padding=True, return_tensors="pt")
    return {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids")}


def _features(backbone: SharedBackbone, tokenizer, texts: list[str]) -> np.ndarray:
    model = SplitClientModel(backbone, 3, {b: 4 for b in range(6)}, 2)
    out = []
    with torch.no_grad():
        for start in range(0, len(texts), 64):
            enc = _encode(tokenizer, texts[start : start + 64])
            hidden = model.client(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
            ops, ctx = backbone.ops, backbone.ops.block_context(hidden, enc["attention_mask"])
            for index in range(3, 6):
                hidden = ops.run_block(index, hidden, ctx)
            mask = enc["attention_mask"][..., None].float()
            out.append(((hidden * mask).sum(1) / mask.sum(1)).numpy())
    return np.concatenate(out)


def test_minilm_loads_offline_and_gives_sentence_features(minilm, glue_dir) -> None:
    backbone, tokenizer = minilm
    assert backbone.num_layers == 6 and backbone.hidden_size == 384
    train = load_glue_split("sst2", "train", glue_dir, source="local")
    val = load_glue_split("sst2", "validation", glue_dir, source="local")
    x_train = _features(backbone, tokenizer, train.text_a[:400])
    x_val = _features(backbone, tokenizer, val.text_a[:300])
    assert np.isfinite(x_train).all()
    probe = LogisticRegression(max_iter=2000).fit(x_train, train.labels[:400])
    accuracy = probe.score(x_val, val.labels[:300])
    # pretrained sentence features separate sentiment far above chance; random weights would not
    assert accuracy > 0.72, accuracy
    # and paraphrase-like sentences are closer than unrelated ones (the model's training objective)
    emb = _features(
        backbone,
        tokenizer,
        ["a wonderful , moving film", "a beautiful , touching movie", "the tax form is due in april"],
    )
    cos = F.cosine_similarity(torch.tensor(emb[:1]), torch.tensor(emb[1:]))
    assert cos[0] > cos[1] + 0.2


def test_split_step_on_real_text_equals_unsplit(minilm, glue_dir) -> None:
    backbone, tokenizer = minilm
    val = load_glue_split("sst2", "validation", glue_dir, source="local")
    enc = _encode(tokenizer, val.text_a[:8])
    assert (enc["attention_mask"] == 0).any()  # real padding in the batch
    batch = {**enc, "labels": torch.as_tensor(val.labels[:8])}
    ranks = {0: 4, 1: 8, 2: 8, 3: 16, 4: 8, 5: 4}
    split_model = SplitClientModel(backbone, 2, ranks, 2, seed=1)
    whole = SplitClientModel(backbone, 2, ranks, 2, seed=1)
    with torch.no_grad():
        for p in split_model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    whole.load_state_dict(split_model.state_dict())
    loss, _, _ = split_step(split_model, batch)
    ref = F.cross_entropy(
        whole(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]), batch["labels"]
    )
    ref.backward()
    assert 0.3 < float(loss) < 1.5
    assert torch.equal(loss, ref.detach())
    grads = dict(whole.named_parameters())
    for name, param in split_model.named_parameters():
        assert torch.equal(param.grad, grads[name].grad), name
