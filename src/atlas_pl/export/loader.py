"""Load an exported client back as one module that maps token ids to the client's logits.

Only Hugging Face and PEFT are used for the transformer, the way their users load any adapter; the
head is PEFT's (`modules_to_save`) or `load_head`'s, whichever the export chose (heads.py says why).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from atlas_pl.export.heads import load_head
from atlas_pl.export.job import ExportError


class ExportedClassifier(nn.Module):
    """PEFT model (+ atlas_pl head when it is not in the adapter): `(input_ids, attention_mask,
    token_type_ids=None) -> logits`, in eval mode."""

    def __init__(self, peft_model: nn.Module, head: nn.Module | None) -> None:
        super().__init__()
        self.peft_model = peft_model
        self.head = head

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None
    ) -> Tensor:
        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        out = self.peft_model(input_ids=input_ids, attention_mask=attention_mask, **extra)
        if self.head is None:
            return out.logits
        return self.head(out.last_hidden_state, attention_mask)


def _base_path(directory: Path, info: dict[str, Any], base: str | Path | None) -> str:
    """`base` if given; else the folder the weights were loaded from when it exists here (the exact
    weights), the export's own base/ folder if the export was moved, or else the public hub id."""
    if base is not None:
        return str(base)
    recorded = str(info["base"])
    if Path(recorded).exists():
        return recorded
    beside = directory.parent / "base"
    if Path(recorded).name == "base" and beside.is_dir():
        return str(beside)
    return str(info.get("base_hub_id") or recorded)


def load_classifier(directory: str | Path, base: str | Path | None = None) -> ExportedClassifier:
    """The exported client in `directory` on its base model (`base` overrides the recorded one)."""
    import transformers
    from peft import PeftModel

    from atlas_pl.export.writer import EXPORT_INFO

    directory = Path(directory)
    info_path = directory / EXPORT_INFO
    if not info_path.is_file():
        raise ExportError(f"{directory} is not an atlas_pl export: it has no {EXPORT_INFO}")
    info = json.loads(info_path.read_text(encoding="utf-8"))
    source = _base_path(directory, info, base)
    kwargs: dict[str, Any] = {"dtype": torch.float32}
    if info["head_placement"] == "modules_to_save":
        model = transformers.AutoModelForSequenceClassification.from_pretrained(
            source, num_labels=int(info["num_labels"]), **kwargs
        )
        head = None
    else:
        model = transformers.AutoModel.from_pretrained(source, **kwargs)
        head = load_head(directory)
    peft_model = PeftModel.from_pretrained(model, str(directory))
    return ExportedClassifier(peft_model, head).eval()
