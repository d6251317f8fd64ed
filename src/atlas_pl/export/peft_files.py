"""An atlas_pl client's LoRA factors as PEFT's adapter_config.json and adapter_model.safetensors.

atlas_pl keeps a client's model in two halves (client: blocks < s, server: blocks >= s, SFL-V1), each a
`LoRAAdapter` with one rank per block and dW = (alpha / r) B A. PEFT's LoRA layer computes the same
update, lora_B(lora_A(x)) * lora_alpha / r, with lora_A.weight = A [r, in] and lora_B.weight = B [out, r]
for both nn.Linear and GPT-2's Conv1D (`fan_in_fan_out` only tells PEFT how to merge into a Conv1D), so
the factors are copied unchanged and the halves are joined by module name. Every targeted module is
listed in `rank_pattern` and `alpha_pattern` with its rank and alpha: PEFT's scale alpha/r is then
atlas_pl's per module, whatever `r` and `lora_alpha` (the most common rank, the job's alpha) say.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from atlas_pl.models.lora import ModuleKey
from atlas_pl.models.split import SharedBackbone, SplitClientModel

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def projection_names(model: nn.Module) -> list[str]:
    """Names of the modules LoRA can target (Linear and Conv1D); read before the backbone wraps them."""
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) or type(m).__name__ == "Conv1D"]


def module_names(backbone: SharedBackbone) -> dict[ModuleKey, str]:
    """(block, path in block) -> the module's name in the Hugging Face base model, e.g.
    (0, "attention.self.query") -> "encoder.layer.0.attention.self.query"."""
    blocks = backbone.ops.blocks()
    container = next(name for name, module in backbone.model.named_modules() if module is blocks)
    return {key: f"{container}.{key[0]}.{key[1]}" for key in sorted(backbone.hosts)}


def _peft_selects(name: str, targets: Iterable[str]) -> bool:
    """PEFT's rule for a list of target_modules: the name, or its end after a dot."""
    return any(name == t or name.endswith("." + t) for t in targets)


def target_modules(names: Mapping[ModuleKey, str], candidates: Iterable[str]) -> list[str] | str:
    """The in-block paths (["attention.self.query", ...]) as PEFT users write them, when PEFT's suffix
    rule selects exactly the adapted modules among `candidates`; otherwise an anchored regex that does."""
    paths = sorted({path for _, path in names})
    wanted = set(names.values())
    if {c for c in candidates if _peft_selects(c, paths)} == wanted:
        return paths
    return "|".join(rf"(.*\.)?{re.escape(name)}" for name in sorted(wanted))


def lora_pieces(
    model: SplitClientModel, names: Mapping[ModuleKey, str], key_prefix: str
) -> tuple[dict[str, torch.Tensor], dict[str, int], dict[str, float]]:
    """(PEFT tensors, rank_pattern, alpha_pattern) of one client over all blocks, both halves joined."""
    tensors: dict[str, torch.Tensor] = {}
    ranks: dict[str, int] = {}
    alphas: dict[str, float] = {}
    for key, name in names.items():
        adapter = model.client.adapter if key[0] < model.split else model.server.adapter
        a, b = adapter.pair(key)
        tensors[f"{key_prefix}{name}.lora_A.weight"] = a.detach()
        tensors[f"{key_prefix}{name}.lora_B.weight"] = b.detach()
        pattern = _pattern_key(name, names.values())
        ranks[pattern] = int(a.shape[0])
        alphas[pattern] = adapter.scaling(key[0]) * int(a.shape[0])
    return tensors, ranks, alphas


def _pattern_key(name: str, names: Iterable[str]) -> str:
    """PEFT reads rank_pattern / alpha_pattern keys as regexes matched at the end of a module's name; a
    plain name is kept where it matches no other adapted module (always, for HF's names), else escaped."""
    others = [n for n in names if n != name]
    return re.escape(name) if any(re.match(rf"(.*\.)?({name})$", n) for n in others) else name


def lora_config(
    *,
    ranks: dict[str, int],
    alphas: dict[str, float],
    targets: list[str] | str,
    dropout: float,
    fan_in_fan_out: bool,
    task_type: str,
    modules_to_save: list[str] | None,
    base: str,
) -> Any:
    """PEFT's own LoraConfig (so adapter_config.json has every field this PEFT version writes)."""
    from peft import LoraConfig

    common = Counter(alphas.values()).most_common(1)[0][0]
    default_alpha: Any = int(common) if float(common).is_integer() else common  # PEFT scales by a float too
    return LoraConfig(
        r=Counter(ranks.values()).most_common(1)[0][0],
        lora_alpha=default_alpha,
        target_modules=targets,
        rank_pattern=dict(ranks),
        alpha_pattern=dict(alphas),
        lora_dropout=dropout,
        fan_in_fan_out=fan_in_fan_out,
        bias="none",
        task_type=task_type,
        modules_to_save=modules_to_save,
        base_model_name_or_path=base,
        inference_mode=True,
    )


def write_adapter(directory: Path, config: Any, tensors: Mapping[str, torch.Tensor]) -> None:
    """The config through PEFT's own save_pretrained, so the file has exactly the fields and format this
    PEFT version reads back; the tensors as fp32 CPU copies, because the factors are fp32 masters
    whatever precision the job ran in, and safetensors refuses tensors that share storage or are not
    contiguous, which views of the job's parameters can be."""
    config.save_pretrained(str(directory))
    cpu = {k: v.detach().to("cpu", torch.float32).contiguous().clone() for k, v in tensors.items()}
    save_file(cpu, str(directory / ADAPTER_WEIGHTS), metadata={"format": "pt"})
