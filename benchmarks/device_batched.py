"""Benchmark (GPU): one round of local training, clients one after another vs in one batched step.

Prints and writes JSON ($OUT/device_batched.json if $OUT is set, else benchmarks/results/):
- seconds per round of the `full` experiment's local training (MiniLM, 4 tasks x 3 clients, batch 32 x 128
  tokens, 2 local epochs of 5000 samples), sequential (split_step + each client's AdamW, client after client)
  vs batched (`batched_split_step` over all clients of the round, or chunks of --chunk), from --steps timed
  steps per client scaled to the round's step count;
- achieved FLOP/s (FLOPs counted by torch's FlopCounterMode on the sequential steps: the useful work, no
  padding) and MFU against a bf16 and an fp32 matmul peak measured in the same run (and the datasheet peak);
- memory: a batched step of N and 2N clients of a 135M-parameter model (SmolLM2-135M's shape, random
  init) -> persistent bytes (adapters + heads + grads + AdamW moments) and step-peak bytes per added client,
  and how many clients one GPU holds per round.

Runs in well under 5 minutes on an H100/H200; only torch + transformers are needed there (the MiniLM
weights package and hydra are optional: without them a random MiniLM-shaped BERT and the literal `full`
values are used, and the JSON says so).

    python benchmarks/device_batched.py                                  # GPU
    .venv/bin/python benchmarks/device_batched.py --device cpu --model tiny_bert --clients 4 --steps 2
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "src") not in sys.path:  # the device machine has the tree, not an installed package
    sys.path.insert(0, str(ROOT / "src"))

from atlas_pl.models.batched import batched_split_step, trainable_bytes  # noqa: E402
from atlas_pl.models.catalog import DECODER, REGISTRY, ModelSpec  # noqa: E402
from atlas_pl.models.split import SharedBackbone, SplitClientModel, split_step  # noqa: E402

# conf/experiment/full.yaml over conf/config.yaml, for machines without hydra; splits: Phase 2's per-device
# splits for MiniLM (the comment in full.yaml), cycled over the clients
FULL_LITERAL: dict[str, Any] = {
    "tasks": ["sst2", "mrpc", "cola", "rte"],
    "clients_per_task": 3,
    "batch_size": 32,
    "max_len": 128,
    "local_epochs": 2,
    "samples_per_client": 5000,
    "lr": 5.0e-4,
    "head_lr": 5.0e-3,
    "weight_decay": 0.0,
    "rank": 8,
    "alpha": 16.0,
    "dropout": 0.0,
}
SPLITS = [1, 2, 5, 5]
# dense datasheet peaks (TFLOP/s) without sparsity: (bf16, fp32 non-tensor-core)
DATASHEET = {"H200": (989.4, 66.9), "H100": (989.4, 66.9), "A100": (312.0, 19.5)}
SMOLLM2_135M = {
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "vocab_size": 49152,
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-5,
    "rope_theta": 100000.0,
    "tie_word_embeddings": True,
    "pad_token_id": 0,
}


def full_settings() -> tuple[dict[str, Any], str]:
    """The `full` experiment's values from the real config if hydra is here, else the literal copy."""
    try:
        sys.path.insert(0, str(Path(__file__).parent))
        from _report import experiment_settings

        s = experiment_settings(["+experiment=full"])
    except Exception as err:  # hydra / omegaconf missing on a bare GPU image, or the config refused
        return dict(FULL_LITERAL), f"literal copy of conf/experiment/full.yaml ({type(err).__name__})"
    return {
        "tasks": list(s.tasks),
        "clients_per_task": s.fed.clients_per_task,
        "batch_size": s.fed.batch_size,
        "max_len": s.data.max_len,
        "local_epochs": s.fed.local_epochs,
        "samples_per_client": s.data.samples_per_client,
        "lr": s.fed.lr,
        "head_lr": s.fed.head_lr,
        "weight_decay": s.fed.weight_decay,
        "rank": s.lora.rank,
        "alpha": s.lora.alpha,
        "dropout": s.lora.dropout,
    }, "conf/experiment/full.yaml via hydra"


MINILM_SHAPE = {  # all-MiniLM-L6-v2's config, for a GPU image without the weights package
    "vocab_size": 30522,
    "hidden_size": 384,
    "num_hidden_layers": 6,
    "num_attention_heads": 12,
    "intermediate_size": 1536,
    "max_position_embeddings": 512,
}


def build_backbone(
    name: str, device: torch.device, dtype: torch.dtype, meta: bool = False
) -> tuple[SharedBackbone, str]:
    """(backbone, where its weights came from); `meta` builds shapes only, for counting bytes.

    Timing does not depend on the weights' values, so a random init of the same shape stands in for
    MiniLM where its package is missing; SmolLM2-135M is always a random init of its shape.
    """
    import transformers

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cfg: Any = None
    if name == "smollm2_shape":
        spec = ModelSpec(
            name, "llama", DECODER, "random", SMOLLM2_135M["num_hidden_layers"], default_pooling="last"
        )
        cfg, source = transformers.LlamaConfig(**SMOLLM2_135M), "random init, SmolLM2-135M shape"
    else:
        spec = REGISTRY[name]
        if spec.source == "random":
            classes = {"bert": "BertConfig", "gpt2": "GPT2Config", "llama": "LlamaConfig"}
            cfg = getattr(transformers, classes[spec.family])(**spec.tiny_config, pad_token_id=0)
            source = f"random init ({name})"
        elif meta and name == "minilm":
            cfg, source = transformers.BertConfig(**MINILM_SHAPE), "shape only"
        else:
            from atlas_pl.models.loading import load_base

            try:
                model, _ = load_base(spec, attn_implementation="sdpa", dtype=dtype)
                source = f"{spec.source} weights ({spec.location})"
            except Exception as err:  # ModelLoadError or a missing dependency on a bare image
                if name != "minilm":
                    raise
                cfg = transformers.BertConfig(**MINILM_SHAPE)
                source = f"random init, MiniLM-L6 shape ({type(err).__name__}: {str(err)[:100]})"
    if cfg is not None:
        cfg._attn_implementation = "sdpa"
        if meta:
            with torch.device("meta"):
                model = transformers.AutoModel.from_config(cfg, dtype=dtype)
        else:
            torch.manual_seed(0)
            model = transformers.AutoModel.from_config(cfg, dtype=dtype)
    backbone = SharedBackbone(spec, model.requires_grad_(False).eval())
    return (backbone if meta else backbone.to(device)), source


class Federation:
    """C client models on one backbone with their own two AdamWs, loss weights and batches."""

    def __init__(
        self,
        backbone: SharedBackbone,
        clients: int,
        ranks: list[int],
        settings: dict[str, Any],
        device: torch.device,
        *,
        batch: int,
        seq: int,
        steps: int,
        num_labels: int = 2,
    ) -> None:
        L = backbone.num_layers
        self.models: list[SplitClientModel] = []
        self.optimizers: list[list[torch.optim.Optimizer]] = []
        for k in range(clients):
            split = min(SPLITS[k % len(SPLITS)], L - 1)
            block_ranks = {b: ranks[(k + b) % len(ranks)] for b in range(L)}
            model = SplitClientModel(
                backbone,
                split,
                block_ranks,
                num_labels,
                alpha=settings["alpha"],
                dropout=settings["dropout"],
                seed=k,
            ).to(device)
            with torch.no_grad():  # B = 0 would make the first steps' maths degenerate
                for name, p in model.named_parameters():
                    if name.endswith("__B"):
                        p.normal_(0.0, 1e-3)
            self.models.append(model)
            self.optimizers.append(
                [
                    torch.optim.AdamW(
                        model.client.parameters(), lr=settings["lr"], weight_decay=settings["weight_decay"]
                    ),
                    torch.optim.AdamW(
                        [
                            {"params": list(model.server.adapter.parameters()), "lr": settings["lr"]},
                            {"params": list(model.server.head.parameters()), "lr": settings["head_lr"]},
                        ],
                        weight_decay=settings["weight_decay"],
                    ),
                ]
            )
        self.weights: list[torch.Tensor | None] = [None] * clients  # full: no balanced tasks
        vocab = int(getattr(backbone.model.config, "vocab_size", 256))
        gen = torch.Generator().manual_seed(0)
        self.batches: list[list[dict[str, torch.Tensor]]] = []
        for _ in range(clients):
            per_client = []
            for _ in range(steps):
                ids = torch.randint(5, vocab, (batch, seq), generator=gen)
                lengths = torch.randint(max(1, seq // 4), seq + 1, (batch,), generator=gen)
                lengths[0] = seq  # collate_trim keeps the longest: a batch of 32 reaches max_len
                mask = (torch.arange(seq)[None] < lengths[:, None]).long()
                labels = torch.randint(0, num_labels, (batch,), generator=gen)
                per_client.append(
                    {
                        "input_ids": ids.masked_fill(mask == 0, 0).to(device),
                        "attention_mask": mask.to(device),
                        "labels": labels.to(device),
                    }
                )
            self.batches.append(per_client)

    def zero(self, k: int) -> None:
        for opt in self.optimizers[k]:
            opt.zero_grad(set_to_none=True)

    def step(self, k: int) -> None:
        for opt in self.optimizers[k]:
            opt.step()

    def sequential(self, s: int) -> None:
        """Step s of every client, one after another, as the in-process engine runs them."""
        for k, model in enumerate(self.models):
            self.zero(k)
            split_step(model, self.batches[k][s], nn.CrossEntropyLoss(weight=self.weights[k]))
            self.step(k)

    def batched(self, s: int, chunk: int) -> None:
        """Step s of every client, `chunk` clients per batched forward/backward (0 = all at once)."""
        count = len(self.models)
        chunk = chunk or count
        for start in range(0, count, chunk):
            idx = range(start, min(count, start + chunk))
            for k in idx:
                self.zero(k)
            batched_split_step(
                [self.models[k] for k in idx],
                [self.batches[k][s] for k in idx],
                [self.weights[k] for k in idx],
            )
            for k in idx:
                self.step(k)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(device: torch.device, fn: Callable[[int], None], steps: int) -> float:
    """Seconds per call of fn(s) over steps 1..steps-1 (step 0 is the warm-up: kernels, AdamW states)."""
    fn(0)
    sync(device)
    start = time.perf_counter()
    for s in range(1, steps):
        fn(s)
    sync(device)
    return (time.perf_counter() - start) / max(1, steps - 1)


def counted_flops(fn: Callable[[], None]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def matmul_peak(device: torch.device, dtype: torch.dtype) -> float:
    """FLOP/s of a large square matmul on this device now: the ceiling MFU is read against."""
    n, reps = (8192, 20) if device.type == "cuda" else (1024, 4)
    if device.type == "cuda" and dtype == torch.float32:
        reps = 6
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    sync(device)
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - start)


def datasheet(device: torch.device) -> tuple[float, float] | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(0)
    return next(((b * 1e12, f * 1e12) for key, (b, f) in DATASHEET.items() if key in name), None)


def round_timing(args: argparse.Namespace, settings: dict[str, Any], device: torch.device) -> dict[str, Any]:
    dtype = getattr(torch, args.dtype)
    backbone, source = build_backbone(args.model, device, dtype)
    clients = args.clients or len(settings["tasks"]) * settings["clients_per_task"]
    batch, seq = args.batch or settings["batch_size"], args.seq or settings["max_len"]
    ranks = [int(r) for r in args.ranks.split(",")] if args.ranks else [settings["rank"]]
    fed = Federation(backbone, clients, ranks, settings, device, batch=batch, seq=seq, steps=args.steps)
    steps_per_round = settings["local_epochs"] * math.ceil(settings["samples_per_client"] / batch)
    t_seq = timed(device, fed.sequential, args.steps)
    t_bat = timed(device, lambda s: fed.batched(s, args.chunk), args.steps)
    useful = counted_flops(lambda: fed.sequential(0))  # includes AdamW's few FLOPs; matmuls dominate
    executed = counted_flops(lambda: fed.batched(0, args.chunk))
    return {
        "model": args.model,
        "weights": source,
        "dtype": args.dtype,
        "clients": clients,
        "splits": [m.split for m in fed.models],
        "ranks_cycle": ranks,
        "batch": batch,
        "seq_len": seq,
        "chunk": args.chunk or clients,
        "timed_steps_per_client": args.steps - 1,
        "steps_per_round_per_client": steps_per_round,
        "sequential_seconds_per_step_all_clients": t_seq,
        "batched_seconds_per_step_all_clients": t_bat,
        "sequential_seconds_per_round": t_seq * steps_per_round,
        "batched_seconds_per_round": t_bat * steps_per_round,
        "speedup": t_seq / t_bat,
        "useful_flops_per_step_all_clients": useful,
        "executed_flops_per_step_batched": executed,
        "sequential_flops_per_s": useful / t_seq,
        "batched_flops_per_s": useful / t_bat,
    }


def memory_projection(
    args: argparse.Namespace, settings: dict[str, Any], device: torch.device
) -> dict[str, Any]:
    """Per-client bytes of a 135M model: persistent always (shape only), step peak on a GPU (measured)."""
    dtype = getattr(torch, args.memory_dtype)
    ranks = [settings["rank"]]
    batch, seq = args.memory_batch or settings["batch_size"], args.memory_seq or settings["max_len"]
    meta_backbone, _ = build_backbone(args.memory_model, device, dtype, meta=True)
    probe = SplitClientModel(
        meta_backbone,
        min(SPLITS[0], meta_backbone.num_layers - 1),
        dict.fromkeys(range(meta_backbone.num_layers), settings["rank"]),
        2,
        alpha=settings["alpha"],
    )
    persistent_analytic = trainable_bytes(probe)
    base_params = sum(p.numel() for p in meta_backbone.model.parameters())
    out: dict[str, Any] = {
        "model": args.memory_model,
        "base_parameters": base_params,
        "base_dtype": args.memory_dtype,
        "rank": settings["rank"],
        "batch": batch,
        "seq_len": seq,
        "persistent_bytes_per_client_analytic": persistent_analytic,
    }
    del probe, meta_backbone
    if device.type != "cuda":
        out["note"] = "step-peak memory is measured on a GPU only (torch.cuda.max_memory_allocated)"
        return out
    gc.collect()
    torch.cuda.empty_cache()
    start = torch.cuda.memory_allocated()
    backbone, source = build_backbone(args.memory_model, device, dtype)
    base = torch.cuda.memory_allocated() - start
    rows = []
    for n in (args.memory_clients, 2 * args.memory_clients):
        gc.collect()
        torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated()
        fed = Federation(backbone, n, ranks, settings, device, batch=batch, seq=seq, steps=3)
        data = sum(t.numel() * t.element_size() for c in fed.batches for b in c for t in b.values())
        torch.cuda.reset_peak_memory_stats()
        t_bat = timed(device, lambda s, f=fed: f.batched(s, 0), 3)  # two steps: AdamW states exist
        peak = torch.cuda.max_memory_allocated() - before - data
        persistent = torch.cuda.memory_allocated() - before - data
        t_seq = timed(device, fed.sequential, 3)
        rows.append(
            {
                "clients": n,
                "persistent_bytes": persistent,
                "step_peak_bytes": peak,
                "batched_seconds_per_step": t_bat,
                "sequential_seconds_per_step": t_seq,
            }
        )
        del fed
    gc.collect()
    torch.cuda.empty_cache()
    n = args.memory_clients
    per_persistent = (rows[1]["persistent_bytes"] - rows[0]["persistent_bytes"]) / n
    per_step = (rows[1]["step_peak_bytes"] - rows[0]["step_peak_bytes"]) / n
    per_activation = per_step - per_persistent
    total = torch.cuda.get_device_properties(0).total_memory
    usable = 0.95 * total - base  # 5% for the allocator's fragmentation and CUDA context
    target = args.target_clients
    out.update(
        {
            "weights": source,
            "gpu_total_bytes": total,
            "base_bytes": base,
            "measured": rows,
            "persistent_bytes_per_added_client": per_persistent,
            "step_peak_bytes_per_added_client": per_step,
            "activation_bytes_per_client_in_step": per_activation,
            "clients_in_one_batched_step": int(usable // per_step),
            "clients_held_with_chunk_1": int((usable - per_activation) // per_persistent),
            f"chunk_that_fits_with_{target}_clients_held": int(
                max(0.0, usable - target * per_persistent) // max(per_activation, 1.0)
            ),
            f"{target}_clients_fit": bool(usable - target * per_persistent >= per_activation),
            f"seconds_per_step_of_{target}_clients_batched": rows[1]["batched_seconds_per_step"]
            / (2 * n)
            * target,
            f"seconds_per_step_of_{target}_clients_sequential": rows[1]["sequential_seconds_per_step"]
            / (2 * n)
            * target,
        }
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="auto", help="auto | cuda | cpu")
    parser.add_argument("--model", default="minilm", help="minilm | tiny_bert | tiny_gpt2 | tiny_llama | ...")
    parser.add_argument("--dtype", default="float32", help="base dtype of the round (full: float32)")
    parser.add_argument("--clients", type=int, default=0, help="0 = the full federation (tasks x 3)")
    parser.add_argument("--batch", type=int, default=0, help="0 = fed.batch_size of full")
    parser.add_argument("--seq", type=int, default=0, help="0 = data.max_len of full")
    parser.add_argument("--ranks", default="", help="ranks cycled over clients x blocks; '' = lora.rank")
    parser.add_argument("--steps", type=int, default=11, help="steps per client (the first is a warm-up)")
    parser.add_argument("--chunk", type=int, default=0, help="clients per batched step; 0 = all")
    parser.add_argument("--memory-model", default="smollm2_shape", help="'' skips the memory projection")
    parser.add_argument("--memory-dtype", default="float32")
    parser.add_argument("--memory-clients", type=int, default=2, help="N of the N vs 2N measurement")
    parser.add_argument("--memory-batch", type=int, default=0)
    parser.add_argument("--memory-seq", type=int, default=0)
    parser.add_argument("--target-clients", type=int, default=1000)
    parser.add_argument("--out", default=os.environ.get("OUT") or str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    started = time.perf_counter()
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    settings, settings_source = full_settings()
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "settings_source": settings_source,
        "settings": settings,
        "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32),
    }
    peaks = {"bfloat16": matmul_peak(device, torch.bfloat16), "float32": matmul_peak(device, torch.float32)}
    report["measured_matmul_peak_flops_per_s"] = peaks
    sheet = datasheet(device)
    report["datasheet_peak_flops_per_s"] = {"bfloat16": sheet[0], "float32": sheet[1]} if sheet else None
    rt = round_timing(args, settings, device)
    for mode in ("sequential", "batched"):
        achieved = rt[f"{mode}_flops_per_s"]
        rt[f"{mode}_mfu_vs_measured"] = {k: achieved / v for k, v in peaks.items()}
        if sheet:
            rt[f"{mode}_mfu_vs_datasheet"] = {"bfloat16": achieved / sheet[0], "float32": achieved / sheet[1]}
    report["round"] = rt
    if args.memory_model:
        report["memory"] = memory_projection(args, settings, device)
    report["wall_seconds"] = time.perf_counter() - started
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "device_batched.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    dt = rt["dtype"]
    print(
        f"\nround of {rt['clients']} x {rt['model']} clients, {rt['steps_per_round_per_client']} steps each: "
        f"sequential {rt['sequential_seconds_per_round']:.2f} s, "
        f"batched {rt['batched_seconds_per_round']:.2f} s (x{rt['speedup']:.2f}); "
        f"MFU vs measured {dt} peak: sequential {rt['sequential_mfu_vs_measured'][dt]:.3f}, "
        f"batched {rt['batched_mfu_vs_measured'][dt]:.3f}"
    )
    mem = report.get("memory")
    if mem and "persistent_bytes_per_added_client" in mem:
        t = args.target_clients
        print(
            f"{mem['model']}: +{mem['persistent_bytes_per_added_client'] / 2**20:.1f} MiB held and "
            f"+{mem['step_peak_bytes_per_added_client'] / 2**20:.0f} MiB step peak per added client; "
            f"{mem['clients_in_one_batched_step']} clients in one batched step; {t} clients held: "
            f"{mem[f'{t}_clients_fit']} (chunk {mem[f'chunk_that_fits_with_{t}_clients_held']})"
        )
    elif mem:
        print(
            f"{mem['model']}: {mem['persistent_bytes_per_client_analytic'] / 2**20:.1f} MiB held per client"
        )
    print(f"wrote {path} in {report['wall_seconds']:.1f} s")


if __name__ == "__main__":
    main()
