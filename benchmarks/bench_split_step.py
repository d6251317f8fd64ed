"""Benchmark: cost of the split protocol and of adding clients over one shared base.

Prints and writes JSON (benchmarks/results/split_step_<model>.json):
- median seconds of a split step (client fwd, detach, server fwd/bwd, client bwd) vs the same model's
  unsplit forward/backward on the same batch;
- bytes of the shared frozen base vs the trainable state each added client costs (adapters + head +
  two AdamW moments), and the process RSS growth when building N clients.

    .venv/bin/python benchmarks/bench_split_step.py --model tiny_bert --clients 32
    .venv/bin/python benchmarks/bench_split_step.py --model minilm --batch 16 --seq 64
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time
from pathlib import Path

import torch
from _report import write_report
from torch.nn import functional as F

from atlas_pl.models.catalog import resolve_model_spec
from atlas_pl.models.loading import load_base
from atlas_pl.models.split import SharedBackbone, SplitClientModel, split_step


def _rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="tiny_bert")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)

    spec = resolve_model_spec(args.model)
    model, _ = load_base(spec)
    backbone = SharedBackbone(spec, model)
    split = max(1, backbone.num_layers // 2)
    ranks = {b: args.rank for b in range(backbone.num_layers)}
    vocab = int(model.config.vocab_size)
    batch = {
        "input_ids": torch.randint(5, vocab, (args.batch, args.seq)),
        "attention_mask": torch.ones(args.batch, args.seq, dtype=torch.long),
        "labels": torch.randint(0, 2, (args.batch,)),
    }
    client = SplitClientModel(backbone, split, ranks, 2)

    def split_once() -> None:
        client.zero_grad(set_to_none=True)
        split_step(client, batch)

    def unsplit_once() -> None:
        client.zero_grad(set_to_none=True)
        F.cross_entropy(client(batch["input_ids"], batch["attention_mask"]), batch["labels"]).backward()

    t_split = _time(split_once, args.repeats)
    t_unsplit = _time(unsplit_once, args.repeats)

    base_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    rss_before = _rss_mib()
    clients = [SplitClientModel(backbone, split, ranks, 2) for _ in range(args.clients)]
    rss_after = _rss_mib()
    per_client_params = sum(p.numel() * p.element_size() for p in clients[0].parameters())
    result = {
        "model": spec.name,
        "batch": args.batch,
        "seq_len": args.seq,
        "rank": args.rank,
        "split": split,
        "split_step_seconds": t_split,
        "unsplit_step_seconds": t_unsplit,
        "split_overhead_ratio": t_split / t_unsplit,
        "base_bytes": base_bytes,
        "per_client_trainable_bytes": per_client_params,
        "per_client_with_adamw_bytes": per_client_params * 4,  # params + grads + 2 moments
        "clients_built": args.clients,
        "rss_growth_mib_for_clients": rss_after - rss_before,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "torch_threads": torch.get_num_threads(),
    }
    write_report(args.out, f"split_step_{spec.name.replace('/', '_')}", result)


if __name__ == "__main__":
    main()
