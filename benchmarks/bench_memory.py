"""Benchmark: the Phase 2 memory model against what PyTorch really holds, on an experiment's real model.

For every split point and a low and a high rank it builds the client model the allocator would build,
runs one client-half forward on a full-length batch of the experiment's shape (fed.batch_size x
data.max_len, the size the budgets plan for) and compares:

- activations: the estimate vs the bytes autograd saves (torch.autograd.graph.saved_tensors_hooks);
- LoRA state: parameters, gradients and AdamW moments after one real optimizer step vs the estimate;
(The base term is counted from the frozen modules themselves; tests/phases/test_memory.py checks it.)

Prints and writes JSON to benchmarks/results/memory_<experiment>.json.

    .venv/bin/python benchmarks/bench_memory.py --experiment quick
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from _report import experiment_settings, write_report

from atlas_pl.engines.setup import build_client_model, load_backbone
from atlas_pl.models.measure import saved_activation_bytes
from atlas_pl.parties.planning import memory_settings
from atlas_pl.phases.memory import ModelArch, activation_bytes, base_bytes, client_memory


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--experiment", default="quick")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    cfg = experiment_settings([f"+experiment={args.experiment}"])
    spec, backbone, _, _ = load_backbone(cfg)
    base = backbone.model
    arch = ModelArch.from_backbone(backbone)
    settings = memory_settings(cfg)
    gen = torch.Generator().manual_seed(0)
    vocab = int(getattr(base.config, "vocab_size", 1000))
    ids = torch.randint(5, vocab, (settings.batch_size, settings.seq_len), generator=gen)
    mask = torch.ones_like(ids)
    candidates = sorted(cfg.allocation.rank_candidates)
    rows = []
    for split in range(1, arch.num_layers):
        for rank in (candidates[0], candidates[-1]):
            ranks = dict.fromkeys(range(arch.num_layers), rank)
            model = build_client_model(cfg, backbone, 2, split, ranks)
            measured_act = saved_activation_bytes(model, backbone, ids, mask)
            estimate_act = activation_bytes(arch, split, settings, ranks)
            # one real AdamW step on the client half: parameters, gradients and both moments exist
            optimizer = torch.optim.AdamW(model.client.parameters(), lr=1e-3)
            hidden = model.client(ids, mask)
            hidden.sum().backward()
            optimizer.step()
            params = list(model.client.parameters())
            lora_real = {
                "params": sum(p.numel() * p.element_size() for p in params),
                "grads": sum(p.grad.numel() * p.grad.element_size() for p in params),
                "optimizer": sum(
                    t.numel() * t.element_size()
                    for state in optimizer.state.values()
                    for t in state.values()
                    if torch.is_tensor(t)
                ),
            }
            memory = client_memory(arch, split, ranks, settings)
            rows.append(
                {
                    "split": split,
                    "rank": rank,
                    "activations_estimate": estimate_act,
                    "activations_measured": measured_act,
                    "activations_error": (estimate_act - measured_act) / measured_act,
                    "lora_estimate": {
                        "params": memory.lora_params,
                        "grads": memory.lora_grads,
                        "optimizer": memory.lora_optimizer,
                    },
                    "lora_measured": lora_real,
                    "base_estimate": base_bytes(arch, split, settings),
                    "total_estimate": memory.total,
                }
            )
            print(
                f"split {split} rank {rank}: activations est {estimate_act / 2**20:.2f} MiB, "
                f"measured {measured_act / 2**20:.2f} MiB ({rows[-1]['activations_error']:+.2%}); "
                f"LoRA est {memory.adapter} B, measured {sum(lora_real.values())} B"
            )
    worst = max(abs(r["activations_error"]) for r in rows)
    write_report(
        args.out,
        f"memory_{args.experiment}",
        {
            "experiment": args.experiment,
            "model": spec.name,
            "settings": {
                "batch_size": settings.batch_size,
                "seq_len": settings.seq_len,
                "attention": settings.attention,
                "base_dtype": str(settings.base_dtype),
            },
            "worst_activation_error": worst,
            "rows": rows,
        },
        echo=False,
    )
    print(f"worst activation error {worst:.3%}")


if __name__ == "__main__":
    main()
