"""Where an exported client's task head goes: into PEFT's `modules_to_save`, or beside the adapter.

A head goes into the adapter only where Hugging Face's `XForSequenceClassification` computes exactly
what atlas_pl's head computes, so `AutoModelForSequenceClassification` + `PeftModel` give atlas_pl's
logits with no extra code. That holds for one configuration: a BERT or RoBERTa encoder with
`model.pooling=cls` and `model.head=mlp` (dense + tanh + linear on the first token is BERT's pooler +
classifier, RoBERTa's classification head). Everywhere else the structures differ and a mapping would
be approximate, so the head is written as `head.safetensors` + `head.json` and `load_head` rebuilds it:

- mean pooling (MiniLM's default: sentence-transformers trained it so) has no HF counterpart;
- atlas_pl's linear head on the CLS token skips BERT's pooler (a trained dense + tanh);
- decoders: HF's `score` layer has no bias and finds the last token from `pad_token_id` in the ids,
  atlas_pl's head has a bias and pools the last position whose attention mask is 1 (left or right
  padding alike);
- DistilBERT's head uses ReLU where atlas_pl's mlp head uses tanh.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from atlas_pl.models.split import ClassificationHead

HEAD_WEIGHTS = "head.safetensors"
HEAD_CONFIG = "head.json"
HEAD_FORMAT = 1

# (family, pooling, head kind) -> {atlas head layer: HF module in XForSequenceClassification};
# "{base}" is the base model's attribute there (BertForSequenceClassification.bert, ...)
_HF_HEADS: dict[tuple[str, str, str], dict[str, str]] = {
    ("bert", "cls", "mlp"): {"net.0": "{base}.pooler.dense", "net.2": "classifier"},
    ("roberta", "cls", "mlp"): {"net.0": "classifier.dense", "net.2": "classifier.out_proj"},
}
# what PEFT's modules_to_save lists for each (a module name or the end of one)
_MODULES_TO_SAVE = {"bert": ["pooler", "classifier"], "roberta": ["classifier"]}


def hf_head_layers(family: str, pooling: str, kind: str, base_prefix: str) -> dict[str, str] | None:
    """{atlas head layer: HF module name} when XForSequenceClassification's head is exactly atlas_pl's,
    else None (the head is then exported as head files)."""
    layers = _HF_HEADS.get((family, pooling, kind))
    if layers is None:
        return None
    return {ours: theirs.format(base=base_prefix) for ours, theirs in layers.items()}


def modules_to_save(family: str) -> list[str]:
    """What adapter_config.json lists in modules_to_save: PEFT then saves those modules' trained weights
    in the adapter and swaps them in on load, so the task head travels with the LoRA factors. BERT
    needs its pooler too, since the pooler's dense + tanh is the first half of atlas_pl's mlp head."""
    return list(_MODULES_TO_SAVE[family])


def peft_head_tensors(head: ClassificationHead, layers: dict[str, str]) -> dict[str, torch.Tensor]:
    """The head's parameters under the names PEFT saves modules_to_save with."""
    state = head.state_dict()
    out = {}
    for ours, theirs in layers.items():
        for param in ("weight", "bias"):
            out[f"base_model.model.{theirs}.{param}"] = state[f"{ours}.{param}"]
    return out


def write_head(directory: Path, head: ClassificationHead, labels: list[str], hidden_size: int) -> None:
    """head.safetensors (atlas_pl's ClassificationHead state dict) and head.json (how to apply it)."""
    kind = "linear" if isinstance(head.net, torch.nn.Linear) else "mlp"
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in head.state_dict().items()}
    save_file(tensors, str(directory / HEAD_WEIGHTS), metadata={"format": "pt"})
    spec = {
        "format": HEAD_FORMAT,
        "input": "last_hidden_state of the base model (AutoModel) with the adapter",
        "pooling": head.pooling,
        "pooling_rule": {
            "cls": "hidden[:, 0]",
            "mean": "sum of hidden over attention_mask / number of real tokens",
            "last": "hidden at the last position whose attention_mask is 1 (left or right padding)",
        }[head.pooling],
        "kind": kind,
        "layers": "net: Linear(hidden, labels)"
        if kind == "linear"
        else "net.0: Linear(hidden, hidden), tanh, net.2: Linear(hidden, labels)",
        "hidden_size": hidden_size,
        "num_labels": head.num_labels,
        "labels": labels,
    }
    (directory / HEAD_CONFIG).write_text(json.dumps(spec, indent=2) + "\n", encoding="utf-8")


def _read_head_config(directory: Path) -> dict[str, Any]:
    from atlas_pl.export.job import ExportError

    path = directory / HEAD_CONFIG
    if not path.is_file():
        raise ExportError(
            f"{directory} has no {HEAD_CONFIG}: its head is in the PEFT adapter (modules_to_save); load it "
            "with AutoModelForSequenceClassification + PeftModel, or atlas_pl.export.load_classifier"
        )
    spec = json.loads(path.read_text(encoding="utf-8"))
    if spec.get("format") != HEAD_FORMAT:
        raise ExportError(f"{path} has head format {spec.get('format')!r}; this atlas_pl reads {HEAD_FORMAT}")
    return spec


def load_head(directory: str | Path) -> ClassificationHead:
    """The task head of an exported client, in eval mode: `head(last_hidden_state, attention_mask)`
    gives the client's logits from the output of `PeftModel.from_pretrained(AutoModel..., directory)`.

    It is atlas_pl's own ClassificationHead, so it pools as training did: `last` takes the last position
    whose attention mask is 1, whichever side the tokenizer pads on."""
    directory = Path(directory)
    spec = _read_head_config(directory)
    head = ClassificationHead(
        int(spec["hidden_size"]),
        int(spec["num_labels"]),
        pooling=str(spec["pooling"]),
        kind=str(spec["kind"]),
    )
    head.load_state_dict(load_file(str(directory / HEAD_WEIGHTS)), strict=True)
    return head.eval().requires_grad_(False)
