"""Benchmark: wall time of federated rounds through Lightning vs a bare PyTorch loop doing the same steps.

Builds the federation of an experiment (default: smoke), runs `--rounds` rounds of local training via
the real round loop (persistent Trainers, Client/Server LightningModules, orchestrator callback), then
repeats the same number of split steps per client with plain torch code on the same loaders, and
reports both, per client per round. Prints and writes JSON to benchmarks/results/round_overhead_<exp>.json.

    .venv/bin/python benchmarks/bench_round_overhead.py --experiment smoke
    .venv/bin/python benchmarks/bench_round_overhead.py --experiment quick --rounds 1
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from _report import experiment_settings, write_report

from atlas_pl.data import TokenDataset, collate_trim
from atlas_pl.engines.inprocess import run_inprocess
from atlas_pl.engines.setup import build_federation
from atlas_pl.models.split import split_step
from atlas_pl.tracking.tracker import Tracker


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--experiment", default="smoke")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--ablation", default="local_only")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    settings = experiment_settings(
        [f"+experiment={args.experiment}", f"fed.rounds={args.rounds}", f"ablation={args.ablation}"]
    )
    fed = build_federation(settings)
    n = len(fed.models)
    start = time.perf_counter()
    result = run_inprocess(settings, fed, Tracker(settings, settings.output_dir))
    lightning_total = time.perf_counter() - start
    eval_seconds = lightning_total - result.overhead["fit_seconds"]

    # the same steps, bare: same models (now trained further, which does not change the cost), same loaders
    bare = 0.0
    for client, model in zip(fed.data.clients, fed.models):
        loader = torch.utils.data.DataLoader(
            TokenDataset(client.train),
            batch_size=settings.fed.batch_size,
            shuffle=True,
            collate_fn=collate_trim,
        )
        opt_c = torch.optim.AdamW(model.client.parameters(), lr=settings.fed.lr)
        opt_s = torch.optim.AdamW(model.server.parameters(), lr=settings.fed.lr)
        t0 = time.perf_counter()
        for _ in range(args.rounds * settings.fed.local_epochs):
            for batch in loader:
                batch = {k: v.to(fed.device) for k, v in batch.items()}
                opt_c.zero_grad()
                opt_s.zero_grad()
                split_step(model, batch)
                opt_c.step()
                opt_s.step()
        bare += time.perf_counter() - t0

    fit = result.overhead["fit_seconds"]
    per = args.rounds * n
    report = {
        "experiment": args.experiment,
        "model": fed.spec.name,
        "clients": n,
        "rounds": args.rounds,
        "lightning_fit_seconds": fit,
        "bare_loop_seconds": bare,
        "fit_over_bare": fit / bare,
        "per_client_round_fit_seconds": fit / per,
        "per_client_round_bare_seconds": bare / per,
        "per_client_round_overhead_seconds": (fit - bare) / per,
        "in_step_seconds": result.overhead["step_seconds"],
        "eval_and_orchestration_seconds": eval_seconds,
        "orchestration_seconds": result.overhead["orchestration_seconds"],
        "torch_threads": torch.get_num_threads(),
    }
    write_report(args.out, f"round_overhead_{args.experiment}", report)


if __name__ == "__main__":
    main()
