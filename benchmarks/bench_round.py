"""Benchmark: where a round's time goes, its ratio to bare PyTorch, and the FLOP/s it reaches.

For each experiment (smoke, the default job, quick) and each base dtype (float32, bfloat16) this runs
`--rounds` real rounds through the in-process engine (Trainers, LightningModules, orchestrator), then:

- splits every round into training steps, Lightning overhead (fit time outside `training_step`),
  evaluation, the clients' fingerprint passes (Phase 1's compute), the rest of the orchestration
  (Phase 1's clustering, Phase 2's allocation, aggregation, personalization), and what is left
  (records, checkpoints);
- scores every distinct final model once more, then repeats the same training steps on the same
  batches (each client's own loader and seed, the same number of epochs, fresh AdamW with the engine's
  settings) in a bare PyTorch loop, and gives Lightning's ratio to it. The bare loop starts from the
  trained models, which changes no step's cost;
- counts the FLOPs those steps and the evaluation forward passes execute (torch's FlopCounterMode, once
  per distinct batch shape and client) and divides by their measured seconds, against the peak of a
  2048 x 2048 matmul measured in the same process in both dtypes.

Each experiment runs the ablation its recorded results ran (`RECORDED_ABLATIONS`: the defaults of that
time), named on the command line so that the numbers stay reproducible now that every experiment defaults
to atlas; `--ablation NAME` runs NAME for all of them instead.

Prints and writes JSON to benchmarks/results/round_<experiment>.json. A quiet machine is assumed: run
nothing else heavy alongside.

    .venv/bin/python benchmarks/bench_round.py --experiments smoke default quick
    .venv/bin/python benchmarks/bench_round.py --experiments smoke --dtypes float32 --rounds 2
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from _report import experiment_settings, write_report
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop, sdpa_flop

from atlas_pl.data import shuffled_loader
from atlas_pl.engines.inprocess import run_inprocess
from atlas_pl.engines.records import FederationResult
from atlas_pl.engines.setup import Federation, build_federation
from atlas_pl.lightning.modules import adapter_head_adamw, task_class_weights
from atlas_pl.models.split import split_step
from atlas_pl.parties.evaluation import model_digest
from atlas_pl.settings import Settings
from atlas_pl.tracking.tracker import Tracker

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# What round_<experiment>.json ran (2026-12-04, commit 00c8d76): the default job and smoke defaulted to
# fedavg then, quick to fedavg_cluster.
RECORDED_ABLATIONS = {"smoke": "fedavg", "default": "fedavg", "quick": "fedavg_cluster"}


def matmul_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 10) -> float:
    """FLOP/s of an n x n matmul in `dtype`: the ceiling the model's steps are measured against."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times)


def round_breakdown(result: FederationResult) -> list[dict[str, float]]:
    """Each round's seconds by where they went, from the engine's own records."""
    lightning = result.overhead["lightning_overhead_seconds"]
    fit = result.overhead["fit_seconds"] or 1.0
    rows = []
    for r in result.records:
        training = sum(c.get("train_seconds") or 0.0 for c in r["clients"].values())
        fingerprints = r.get("fingerprint_seconds", 0.0)
        orchestration = r["orchestration_seconds"]
        overhead = lightning * training / fit  # the run's overhead, shared out by each round's fit time
        rows.append(
            {
                "round": r["round"],
                "round_seconds": r["round_seconds"],
                "training_steps_seconds": training - overhead,
                "lightning_overhead_seconds": overhead,
                "evaluation_seconds": r["evaluation_seconds"],
                "fingerprint_seconds": fingerprints,
                "other_orchestration_seconds": orchestration - fingerprints,
                "rest_seconds": r["round_seconds"] - training - r["evaluation_seconds"] - orchestration,
            }
        )
    return rows


def _as_raw(formula: Any) -> Any:
    """torch's registered formulas take the op's raw arguments: marked so, they are not wrapped twice."""

    def count(*args: Any, **kwargs: Any) -> int:
        return formula(*args, **kwargs)

    count._get_raw = True  # type: ignore[attr-defined]
    return count


# torch's counter knows the GPU attention kernels; the CPU one has the same maths, so the same count
CPU_ATTENTION_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _as_raw(sdpa_flop),
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _as_raw(sdpa_backward_flop),
}


def _count_flops(step: Any) -> int:
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS) as counter:
        step()
    return int(counter.get_total_flops())


def _bare_client(settings: Settings, party: Any, device: torch.device) -> dict[str, float]:
    """One client's training epochs of the run, in plain PyTorch: seconds, FLOPs executed, steps."""
    s, model = settings, party.model
    client = torch.optim.AdamW(
        [p for p in model.client.parameters() if p.requires_grad],
        lr=s.fed.lr,
        weight_decay=s.fed.weight_decay,
    )
    server = adapter_head_adamw(
        model.server.adapter.parameters(),
        model.server.head.parameters(),
        s.fed.lr,
        s.fed.head_lr,
        s.fed.weight_decay,
    )
    weight = task_class_weights(
        s.fed.balanced_tasks, party.task, party.data.train.labels, model.server.head.num_labels
    )
    weight = None if weight is None else weight.to(device)
    loader = shuffled_loader(
        party.data.train, batch_size=s.fed.batch_size, seed=s.fed.loader_seed(party.data.client_id)
    )

    loss_fn = torch.nn.CrossEntropyLoss(weight=weight)

    def step(batch: dict[str, torch.Tensor], update: bool = True) -> None:
        server.zero_grad(set_to_none=True)
        client.zero_grad(set_to_none=True)
        loss, _, _ = split_step(model, batch, loss_fn)
        if update:
            server.step()
            client.step()
        float(loss)  # the modules read the loss back every step too

    model.train()
    shapes: dict[tuple[int, ...], int] = {}
    batches: dict[tuple[int, ...], dict[str, torch.Tensor]] = {}
    start = time.perf_counter()
    for epoch in range(s.fed.rounds * s.fed.local_epochs):
        loader.sampler.set_epoch(epoch)  # type: ignore[attr-defined]  # the engine's batches, in its order
        for batch in loader:
            batch = {key: v.to(device) for key, v in batch.items()}
            step(batch)
            shape = tuple(batch["input_ids"].shape)
            shapes[shape] = shapes.get(shape, 0) + 1
            batches.setdefault(shape, batch)
    seconds = time.perf_counter() - start
    flops = sum(
        n * _count_flops(lambda b=batches[shape]: step(b, update=False)) for shape, n in shapes.items()
    )
    return {"seconds": seconds, "flops": flops, "steps": sum(shapes.values())}


def bare_training(settings: Settings, fed: Federation, result: FederationResult) -> dict[str, float]:
    """The rounds' training steps again, in plain PyTorch: seconds, and the FLOPs they execute."""
    totals = {"seconds": 0.0, "flops": 0, "steps": 0}
    for k, party in enumerate(result.parties):
        if not result.allocations[k].dropped:
            for key, value in _bare_client(settings, party, fed.device).items():
                totals[key] += value
    return totals


def bare_evaluation(settings: Settings, fed: Federation, result: FederationResult) -> dict[str, float]:
    """Every distinct final model scored once on its task: seconds, and the FLOPs of those forwards."""
    seconds, flops, seen = 0.0, 0, set()
    for k, party in enumerate(result.parties):
        key = (party.task, model_digest(party.model)) if not result.allocations[k].dropped else None
        if key is None or key in seen:
            continue
        seen.add(key)

        def score(p: Any = party) -> None:
            p.evaluate(fed.data.eval[p.task], batch_size=settings.fed.eval_batch_size, device=fed.device)

        start = time.perf_counter()
        score()
        seconds += time.perf_counter() - start
        flops += _count_flops(score)
    return {"seconds": seconds, "flops": flops, "models": len(seen)}


def bench(experiment: str, ablation: str, dtype: str, rounds: int, peaks: dict[str, float]) -> dict[str, Any]:
    overrides = [] if experiment == "default" else [f"+experiment={experiment}"]
    overrides += [
        f"ablation={ablation}",
        f"fed.rounds={rounds}",
        f"model.dtype={dtype}",
        "model.attn_implementation=auto",
    ]
    overrides += ["checkpoint.enabled=false", f"trainer.num_threads={torch.get_num_threads()}"]
    settings = experiment_settings(overrides)
    fed = build_federation(settings)
    start = time.perf_counter()
    result = run_inprocess(settings, fed, Tracker(settings, settings.output_dir))
    wall = time.perf_counter() - start
    evaluation = bare_evaluation(settings, fed, result)  # first: the models the run scored
    train = bare_training(settings, fed, result)
    fit, peak = result.overhead["fit_seconds"], peaks[dtype]
    eval_rounds = [r["evaluation_seconds"] for r in result.records]
    return {
        "dtype": dtype,
        "attention": settings.model.attn_implementation,
        "model": fed.spec.name,
        "clients": len(result.parties),
        "rounds": rounds,
        "wall_seconds": wall,
        "per_round": round_breakdown(result),
        "lightning_fit_seconds": fit,
        "bare_loop_seconds": train["seconds"],
        "fit_over_bare": fit / train["seconds"],
        "training_steps": train["steps"],
        "training_flops": train["flops"],
        "training_flops_per_s_bare": train["flops"] / train["seconds"],
        "training_fraction_of_peak_bare": train["flops"] / train["seconds"] / peak,
        "training_fraction_of_peak_in_engine": train["flops"] / fit / peak,
        "evaluation_models": evaluation["models"],
        "evaluation_flops_per_s": evaluation["flops"] / evaluation["seconds"],
        "evaluation_fraction_of_peak": evaluation["flops"] / evaluation["seconds"] / peak,
        "evaluation_share_of_round": [
            e / r["round_seconds"] for e, r in zip(eval_rounds, result.records, strict=True)
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--experiments", nargs="+", default=["smoke", "default", "quick"])
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--ablation", help="for every experiment (default: RECORDED_ABLATIONS, else atlas)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    peaks = {name: matmul_peak(dtype) for name, dtype in DTYPES.items()}
    for experiment in args.experiments:
        ablation = args.ablation or RECORDED_ABLATIONS.get(experiment, "atlas")
        runs = [bench(experiment, ablation, dtype, args.rounds, peaks) for dtype in args.dtypes]
        report = {
            "experiment": experiment,
            "ablation": ablation,
            "matmul_peak_flops_per_s": peaks,
            "torch_threads": torch.get_num_threads(),
            "runs": runs,
        }
        write_report(args.out, f"round_{experiment}", report)


if __name__ == "__main__":
    main()
