"""Export a job's clients as PEFT LoRA adapter folders (DESIGN.md §14).

Each client is rebuilt exactly as the job holds it (a `SplitClientModel` on the frozen base, its
tensors restored from the newest checkpoint by the resume code), then written as `OUT/client_<id>/`.
Everything is written into a temporary sibling of OUT and renamed into place at the end, so a refusal
or a failure leaves no partial export. Unless told not to, each written folder is loaded back through
PEFT and must reproduce the atlas_pl model's logits on a probe batch before it is published.

A random-init test model (tiny_bert, tiny_gpt2, ...) exists nowhere else, so its base is written once
to `OUT/base/` and the adapters name that folder. A packaged model (MiniLM, SmolLM2) or a hub model is
named by its public hub id, a local model by its folder; atlas_export.json and the card also say where
the weights were loaded from on the exporting machine (the package's or the de-quantized folder).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from atlas_pl.export.card import METRICS, model_card
from atlas_pl.export.heads import hf_head_layers, modules_to_save, peft_head_tensors, write_head
from atlas_pl.export.job import ExportError, ExportJob, ExportPlan, plan_export
from atlas_pl.export.peft_files import (
    lora_config,
    lora_pieces,
    module_names,
    projection_names,
    target_modules,
    write_adapter,
)
from atlas_pl.models.catalog import ModelSpec, resolve_model_spec
from atlas_pl.models.split import SharedBackbone, SplitClientModel

EXPORT_INFO = "atlas_export.json"
EXPORT_FORMAT = 1
CHECK_TOLERANCE = 1e-5  # fp32 on both sides; measured differences are ~1e-7
_FACTOR = re.compile(r"(client|server)\.adapter\.factors\.b(\d+)__.+__A$")
# modules a user's AutoModel may have that the job's base was loaded without (BERT's unused pooler)
_EXTRA_PROJECTIONS = {"bert": ["pooler.dense"], "roberta": ["pooler.dense"]}


@dataclass(frozen=True)
class ExportedClient:
    """One written adapter folder; `max_diff` is the check's largest |logit difference| (None: unchecked)."""

    client: str
    path: Path
    task: str | None
    head_placement: str  # "modules_to_save" | "head.safetensors"
    max_diff: float | None


@dataclass
class _Base:
    spec: ModelSpec
    backbone: SharedBackbone
    projections: list[str]  # Linear/Conv1D names of the unwrapped base: what PEFT could target
    weights: str  # where the weights are on this machine: OUT/base, a package's or local folder, a hub id
    local: str  # where this process loads it from now (the staging copy for a written base)
    hub_id: str | None  # the public hub id of the weights (None: a random-init or local model)
    note: str | None
    prefix: str  # the base model's attribute in XForSequenceClassification ("bert", "transformer", ...)
    vocab_size: int

    @property
    def ref(self) -> str:
        """adapter_config.json's base_model_name_or_path. PEFT's AutoPeftModel and the hub read it to find
        the base; a folder on the exporting machine (a site-packages or cache path) resolves nowhere else,
        while the hub id resolves wherever PEFT runs, so that is what PEFT users expect to find. MiniLM's
        hub weights are the packaged ones; SmolLM2's are the bf16 originals of the quantized GGUF, the
        nearest public base (the card's note says its logits differ slightly). The exact folder stays in
        atlas_export.json's `base`, which load_classifier uses."""
        return self.hub_id or self.weights


def export_job(
    job_dir: str | Path,
    out: str | Path,
    *,
    client: str | int | None = None,
    overwrite: bool = False,
    check: bool = True,
) -> list[ExportedClient]:
    """Write every client (or only `client`) of `job_dir` as `out/client_<id>/`; see the module doc."""
    return run_export(plan_export(job_dir, out, client, overwrite), check=check)


def run_export(plan: ExportPlan, *, check: bool = True) -> list[ExportedClient]:
    """Carry out a checked plan: load the checkpoint and the base, write into staging, publish."""
    from atlas_pl.tracking.checkpoint import load_checkpoint

    job, ids, out = plan.job, plan.clients, plan.out
    tensors = load_checkpoint(job.checkpoint).tensors
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.export-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        base = _load_base(job, staging, out)
        written = [_export_client(job, base, tensors, cid, staging, check) for cid in ids]
        _publish(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return [
        ExportedClient(w.client, out / w.path.name, w.task, w.head_placement, w.max_diff) for w in written
    ]


def _load_base(job: ExportJob, staging: Path, out: Path) -> _Base:
    from atlas_pl.models.loading import load_base

    m = job.model
    spec = resolve_model_spec(m.name)
    raw: Any
    raw, _ = load_base(
        spec,
        attn_implementation="sdpa",
        dtype=torch.float32,  # the factors are fp32 masters; the export and its check run in fp32
        seed=m.seed,
        cache_dir=m.cache_dir / "models" if m.cache_dir else None,
    )
    projections = projection_names(raw)
    note = spec.base_note or None
    if spec.source == "random":
        raw.save_pretrained(str(staging / "base"))
        weights, local = str(out / "base"), str(staging / "base")
        note = (
            f"`{m.name}` is a random-init test model (seed {m.seed}): its weights are in `../base/`, "
            "written by the export. Its tokenizer is atlas_pl's HashTokenizer "
            f"(atlas_pl.data.hash_tokenizer, vocab_size={raw.config.vocab_size})."
        )
    else:
        weights = local = str(getattr(raw, "name_or_path", "") or spec.location)
    backbone = SharedBackbone(spec, raw, targets=m.targets, pooling=m.pooling, head=m.head)
    prefix = str(type(raw).base_model_prefix)
    vocab = int(raw.config.vocab_size)
    return _Base(spec, backbone, projections, weights, local, spec.public_id, note, prefix, vocab)


def client_model(
    backbone: SharedBackbone, tensors: dict[str, torch.Tensor], client: str, alpha: float, where: Path
) -> SplitClientModel:
    """Client `client`'s model as the job holds it: split and per-block ranks read from the checkpoint's
    factor shapes, parameters restored by the resume code (which checks every name and shape)."""
    from atlas_pl.tracking.checkpoint import restore_module

    prefix = f"model/{client}/"
    ranks: dict[int, int] = {}
    client_blocks: set[int] = set()
    for name, tensor in tensors.items():
        match = _FACTOR.match(name[len(prefix) :]) if name.startswith(prefix) else None
        if match:
            ranks[int(match.group(2))] = int(tensor.shape[0])
            if match.group(1) == "client":
                client_blocks.add(int(match.group(2)))
    split = len(client_blocks)
    head = tensors.get(prefix + "server.head.net.weight", tensors.get(prefix + "server.head.net.2.weight"))
    layers = backbone.num_layers
    if (
        head is None
        or sorted(ranks) != list(range(layers))
        or client_blocks != set(range(split))
        or not 1 <= split < layers
    ):
        raise ExportError(
            f"{where}: client {client}'s tensors do not fit {backbone.spec.name} ({layers} blocks, "
            f"head {backbone.head}): adapter blocks {sorted(ranks)}, client blocks {sorted(client_blocks)}"
        )
    model = SplitClientModel(backbone, split, ranks, int(head.shape[0]), alpha=alpha)
    restore_module(prefix.rstrip("/"), model, tensors)
    return model.eval()


def _labels(task: str | None, num_labels: int) -> list[str]:
    from atlas_pl.data.tasks import task_spec

    try:
        names = list(task_spec(task).label_names) if task else []
    except ValueError:  # a task this process does not know (defined in the job's config)
        names = []
    return names if len(names) == num_labels else [f"LABEL_{i}" for i in range(num_labels)]


def _info(
    job: ExportJob, base: _Base, model: SplitClientModel, client: str, placement: str
) -> dict[str, Any]:
    record = job.records.get(client, {})
    task = record.get("task") or (None if client.isdigit() else client)  # centralized: one model per task
    ablation = job.config.get("ablation") or {}
    head = model.server.head
    return {
        "format": EXPORT_FORMAT,
        "client": client,
        "task": task,
        "labels": _labels(task, head.num_labels),
        "num_labels": head.num_labels,
        "head_placement": placement,
        "pooling": head.pooling,
        "head_kind": base.backbone.head,
        "model": base.spec.name,
        "family": base.spec.family,
        "base": base.weights,
        "base_hub_id": base.hub_id,
        "base_note": base.note,
        "split": model.split,
        "ranks": [model.ranks[b] for b in range(base.backbone.num_layers)],
        "alpha": model.client.adapter.alpha,
        "targets": list(base.backbone.targets),
        "cluster": record.get("cluster"),
        "device": record.get("device"),
        "metrics": {k: float(record[k]) for k in METRICS if isinstance(record.get(k), (int, float))},
        "metrics_round": job.record_round if record else None,
        "round": job.round,
        "ablation": ablation.get("name", "unknown"),
        "eta": (job.config.get("fed") or {}).get("eta") if ablation.get("name") == "atlas" else None,
        "job_dir": str(job.root.resolve()),
    }


def _export_client(
    job: ExportJob, base: _Base, tensors: dict[str, torch.Tensor], client: str, staging: Path, check: bool
) -> ExportedClient:
    backbone = base.backbone
    model = client_model(backbone, tensors, client, job.model.alpha, job.checkpoint)
    names = module_names(backbone)
    prefix = base.prefix
    layers = hf_head_layers(base.spec.family, backbone.pooling, backbone.head, prefix)
    lora, ranks, alphas = lora_pieces(model, names, "base_model.model." + (f"{prefix}." if layers else ""))
    candidates = [*base.projections, *_EXTRA_PROJECTIONS.get(base.spec.family, []), *(layers or {}).values()]
    config = lora_config(
        ranks=ranks,
        alphas=alphas,
        targets=target_modules(names, candidates),
        dropout=job.model.dropout,
        fan_in_fan_out=any(type(h.base_layer).__name__ == "Conv1D" for h in backbone.hosts.values()),
        task_type="SEQ_CLS" if layers else "FEATURE_EXTRACTION",
        modules_to_save=modules_to_save(base.spec.family) if layers else None,
        base=base.ref,
    )
    directory = staging / f"client_{client}"
    directory.mkdir()
    placement = "modules_to_save" if layers else "head.safetensors"
    info = _info(job, base, model, client, placement)
    if layers:
        lora.update(peft_head_tensors(model.server.head, layers))
    else:
        write_head(directory, model.server.head, info["labels"], backbone.hidden_size)
    write_adapter(directory, config, lora)
    (directory / EXPORT_INFO).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    (directory / "README.md").write_text(model_card(info), encoding="utf-8")
    diff = _check(directory, model, base) if check else None
    return ExportedClient(client, directory, info["task"], placement, diff)


def probe_batch(vocab_size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two rows of random non-special token ids, the second right-padded: what the check compares on."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, vocab_size, (2, 12), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    ids[1, 7:] = 0
    return ids, mask


def _check(directory: Path, model: SplitClientModel, base: _Base) -> float:
    """Load the written folder back through PEFT and compare its logits with the atlas_pl model's."""
    from atlas_pl.export.loader import load_classifier

    exported = load_classifier(directory, base=base.local)
    ids, mask = probe_batch(base.vocab_size)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a two-row batch: more threads only add synchronisation
    try:
        with torch.no_grad():
            want = model(ids, mask)
            got = exported(ids, mask)
    finally:
        torch.set_num_threads(threads)
    diff = float((want - got).abs().max())
    if not diff <= CHECK_TOLERANCE:
        raise ExportError(
            f"the exported client {directory.name} gives logits {diff:.2e} away from atlas_pl's model "
            f"(tolerance {CHECK_TOLERANCE:g}); nothing was written. Please report this with the job's config"
        )
    return diff


def _publish(staging: Path, out: Path) -> None:
    """Put the finished export in place; an existing `out` (empty, or --overwrite) is replaced whole."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.replaced-{os.getpid()}"
        os.replace(out, old)
    os.replace(staging, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
