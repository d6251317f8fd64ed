"""Benchmark: the server-side orchestration's own cost at 10, 100 and 1000 synthetic clients.

DESIGN.md §8 promises that orchestration is a small fraction of a round and scales to 1000 clients. This
times the coordinator's work between rounds on synthetic clients, with no model and no training, so
what is measured is the orchestration alone:

- clustering    Phase 1's server side as the coordinator runs it: standardize + PCA the sketches,
                the k-search (KMeans + silhouette / Davies-Bouldin / Calinski-Harabasz), cluster
                quality and cluster importance (`Coordinator.cluster`);
- allocation    Phase 2: split points and budget-proportional ranks (`Coordinator.allocate`);
- aggregation   Phase 4 `stack` within each cluster: the exact heterogeneous-rank weighted sum and the
                truncated SVD back to each client's ranks (`aggregate_round`, as `Coordinator.aggregate`);
- laplacian     the personalization graph: `rbf_adjacency` + `mixing_matrix`;
- personalize   applying that graph (`aggregate_round(aggregation="laplacian")`): one exact weighted sum
                and truncated SVD per client and module, so it grows with clients x cluster size.

Synthetic clients are MiniLM-shaped (6 BERT blocks, hidden 384, intermediate 1536, the family's default
LoRA targets query and value, fp32 base on the default seed_mix_scaled devices); their ranks are what
Phase 2 allocates them, their factors random. Fingerprints are 3 or 4 separable task centres plus noise.

Each (stage, clients) case runs in a fresh subprocess (inputs built first, then timed), which reports
seconds and its peak RSS growth during the stage (VmHWM after resetting it through /proc/self/clear_refs,
and a sampler of VmRSS). The sampler also aborts a case that passes --max-rss-gb (recorded as
"aborted: over N GB"); a case whose memory, extrapolated from the smaller client counts, would pass the
limit is not started. Growth exponents are log(x_1000 / x_100) / log(10).

    .venv/bin/python benchmarks/bench_orchestration.py --clients 10 100 --threads 1
    taskset -c 1 .venv/bin/python benchmarks/bench_orchestration.py --threads 1 --max-rss-gb 6
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _report import experiment_settings, write_report

STAGES = ("clustering", "allocation", "aggregation", "laplacian", "personalize")
GOAL_STAGES = ("clustering", "allocation", "aggregation", "laplacian")  # the issue's <= 10 s at 1000
ABORT_CODE = 77
KIB = 1024
NOISE_MB = 16.0  # RSS changes below this are the allocator's, not a stage's growth
NOISE_SECONDS = 0.05


# -- memory ----------------------------------------------------------------------------------------------
def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return False
    return True


class RssGuard:
    """Samples VmRSS every few ms: the peak between samples, and a hard stop above the limit.

    A stage cannot be interrupted inside a numpy or LAPACK call, so the guard ends the whole process
    (the parent records the case as aborted) rather than letting it take the machine's memory.
    """

    def __init__(self, limit_kib: int, interval: float = 0.005) -> None:
        self.limit = limit_kib
        self.interval = interval
        self.peak = 0
        self.started = time.perf_counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = _status_kib("VmRSS")
            self.peak = max(self.peak, rss)
            if rss > self.limit:
                elapsed = time.perf_counter() - self.started
                print(json.dumps({"aborted_rss_kib": rss, "seconds": elapsed}), flush=True)
                os._exit(ABORT_CODE)
            time.sleep(self.interval)

    def __enter__(self) -> RssGuard:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# -- synthetic federation --------------------------------------------------------------------------------
def _settings(ablation: str):
    # fp32 sdpa: the same ranks on every machine (auto would pick bf16 on an AMX CPU)
    return experiment_settings(
        ["model=minilm", "model.dtype=float32", "model.attn_implementation=sdpa", f"ablation={ablation}"]
    )


def _arch(settings):
    from transformers import BertConfig

    from atlas_pl.models.catalog import DEFAULT_TARGETS
    from atlas_pl.phases.memory import ModelArch

    config = BertConfig(
        hidden_size=384,
        intermediate_size=1536,
        num_hidden_layers=6,
        num_attention_heads=12,
        vocab_size=30522,
        max_position_embeddings=512,
        type_vocab_size=2,
    )
    targets = settings.model.lora_targets or DEFAULT_TARGETS["bert"]
    return ModelArch.from_hf_config("bert", config, targets)


class Federation:
    """n synthetic clients: task, device, fingerprint, importance, sample count (all seeded)."""

    def __init__(self, n: int, tasks: int, seed: int, sketch_dim: int, blocks: int) -> None:
        import numpy as np

        from atlas_pl.phases.devices import assign_devices

        rng = np.random.default_rng(seed)
        self.n = n
        self.tasks = [k % tasks for k in range(n)]
        centres = rng.normal(size=(tasks, sketch_dim))
        self.sketches = centres[self.tasks] + 0.3 * rng.normal(size=(n, sketch_dim))
        profiles = rng.dirichlet(np.ones(blocks), size=tasks)
        noisy = profiles[self.tasks] * rng.uniform(0.8, 1.2, size=(n, blocks))
        self.importance = noisy / noisy.sum(axis=1, keepdims=True)
        self.counts = rng.integers(50, 500, size=n).tolist()
        self.seed = seed
        self.mix = ("cpu_2gb", "tablet_4gb", "laptop_8gb", "gpu_16gb")
        self.devices = assign_devices(n, list(self.mix), seed=seed)

    def groups(self) -> list[list[int]]:
        return [[k for k in range(self.n) if self.tasks[k] == t] for t in sorted(set(self.tasks))]

    def fingerprints(self):
        import torch

        from atlas_pl.parties.messages import Fingerprint

        return [
            Fingerprint(k, torch.from_numpy(self.sketches[k]).float(), self.importance[k])
            for k in range(self.n)
        ]

    def uploads(self, settings, arch, allocations):
        """Every client's LoRA factors (both halves, random) at its allocated ranks, and a linear head."""
        import torch

        from atlas_pl.parties.messages import AdapterUpload

        gen = torch.Generator().manual_seed(self.seed)
        alpha = settings.lora.alpha
        out = {}
        for k, alloc in enumerate(allocations):
            factors = {}
            for block, rank in alloc.ranks.items():
                for target in arch.targets:
                    a = torch.randn(rank, target.in_features, generator=gen) / target.in_features**0.5
                    b = torch.randn(target.out_features, rank, generator=gen) * 0.01
                    factors[(block, target.path)] = (a, b)
            scaling = {block: alpha / rank for block, rank in alloc.ranks.items()}
            head = [torch.randn(2, arch.hidden, generator=gen) * 0.02, torch.zeros(2)]
            out[k] = AdapterUpload(k, factors, scaling, head)
        return out


def _allocate(settings, arch, fed: Federation):
    from atlas_pl.parties.coordinator import Coordinator

    coordinator = Coordinator(settings, fed.counts)
    return coordinator.allocate(arch, list(range(fed.n)), fed.devices, fed.importance, list(fed.tasks))


def _coords(settings, fed: Federation):
    from atlas_pl.phases.clustering import reduce

    return reduce(fed.sketches, settings.fingerprint.dim)


def prepare(stage: str, n: int, tasks: int, seed: int) -> Callable[[], Any]:
    """Build the inputs of one case and return the call to time (its inputs already in memory)."""
    settings = _settings("fedavg_cluster" if stage in ("clustering", "aggregation") else "atlas")
    arch = _arch(settings)
    fed = Federation(n, tasks, seed, settings.fingerprint.sketch_dim, arch.num_layers)
    if stage == "clustering":
        from atlas_pl.parties.coordinator import Coordinator

        fps = fed.fingerprints()
        truth = [f"task{t}" for t in fed.tasks]
        sketch = settings.fingerprint.sketch_dim

        def run() -> Any:
            coordinator = Coordinator(settings, fed.counts)
            found = coordinator.cluster(
                0, fps, truth, sent_dim=sketch, layers_used=2, include_head=True, epsilon=None, started=0.0
            )
            return {"k": found.k, "ari": found.quality["ari"]}

        return run
    if stage == "allocation":
        return lambda: {"ranks": sum(sum(a.ranks.values()) for a in _allocate(settings, arch, fed))}
    if stage == "laplacian":
        from atlas_pl.parties.coordinator import client_graph

        coords = _coords(settings, fed)

        def run_graph() -> Any:
            _, mixing = client_graph(settings, coords, fed.tasks)
            return {"mixing_trace": float(mixing.trace())}

        return run_graph
    from atlas_pl.parties.aggregation import aggregate_round

    uploads = fed.uploads(settings, arch, _allocate(settings, arch, fed))
    mixing = None
    if stage == "personalize":
        from atlas_pl.phases.personalization import mixing_matrix, rbf_adjacency

        graph = settings.graph
        adjacency = rbf_adjacency(
            _coords(settings, fed),
            fed.tasks,
            alpha=graph.alpha,
            ensure_connectivity=graph.ensure_connectivity,
            knn=graph.knn,
        )
        mixing = mixing_matrix(adjacency, settings.fed.eta)

    def run_aggregation() -> Any:
        result = aggregate_round(
            uploads,
            fed.counts,
            aggregation=settings.ablation.mode,
            groups=fed.groups(),
            mixing=mixing,
            head_aggregation=settings.ablation.head_aggregation,
            seed=seed,
            round_index=1,
        )
        assert result is not None
        errors = list(result.truncation_errors.values())
        return {"updated": len(result.updates), "max_truncation_error": max(errors, default=0.0)}

    return run_aggregation


def run_case(args: argparse.Namespace) -> None:
    """Child process: one (stage, clients) case, printed as one JSON line."""
    stage, n = args.case[0], int(args.case[1])
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    prepare(stage, min(n, 6), args.tasks, args.seed)()  # warm-up: lazy imports, first-call costs
    gc.collect()
    floor = _status_kib("VmRSS")
    call = prepare(stage, n, args.tasks, args.seed)
    gc.collect()
    base = _status_kib("VmRSS")
    exact_peak = _reset_peak()
    with RssGuard(int(args.max_rss_gb * 2**20)) as guard:
        start = time.perf_counter()
        info = call()
        seconds = time.perf_counter() - start
    peak = max(guard.peak, _status_kib("VmHWM") if exact_peak else 0)
    report = {
        "stage": stage,
        "clients": n,
        "seconds": seconds,
        "import_rss_mb": floor / KIB,
        "base_rss_mb": base / KIB,
        "peak_rss_mb": peak / KIB,
        "peak_delta_mb": (peak - base) / KIB,
        "peak_exact": exact_peak,
        **info,
    }
    print(json.dumps(report), flush=True)


# -- the parent: cases in subprocesses, limits, the table --------------------------------------------------
def _power_law(points: list[tuple[int, float]], n: int, floor: float) -> float:
    """Extrapolate measured (clients, amount) to n clients by the last two points' exponent, held in
    [1, 2] and with amounts below `floor` read as `floor` (noise, not growth); from one point, a
    quadratic (the pessimistic case for n x n work)."""
    if len(points) == 1:
        (n0, m0), exponent = points[0], 2.0
    else:
        (n0, m0), (n1, m1) = points[-2], points[-1]
        slope = math.log(max(m1, floor) / max(m0, floor)) / math.log(n1 / n0)
        exponent = min(2.0, max(1.0, slope))
        n0, m0 = n1, m1
    return max(m0, floor) * (n / n0) ** exponent


def _estimate_gb(rows: dict[int, dict[str, Any]], n: int) -> float | None:
    """Peak RSS of a case at n clients from the smaller ones: the imports, plus the inputs and the
    stage's own growth, each extrapolated on its own."""
    done = sorted((m, r) for m, r in rows.items() if r.get("status") == "ok")
    if not done:
        return None
    floor = done[-1][1]["import_rss_mb"]
    inputs = _power_law([(m, r["base_rss_mb"] - r["import_rss_mb"]) for m, r in done], n, NOISE_MB)
    stage = _power_law([(m, r["peak_delta_mb"]) for m, r in done], n, NOISE_MB)
    return (floor + inputs + stage) / KIB


def _estimate_seconds(rows: dict[int, dict[str, Any]], n: int) -> float | None:
    """Seconds of a case at n clients, by the same power law as its memory."""
    done = sorted((m, r["seconds"]) for m, r in rows.items() if r.get("status") == "ok")
    return _power_law(done, n, NOISE_SECONDS) if done else None


def _child(args: argparse.Namespace, stage: str, n: int) -> dict[str, Any]:
    env = dict(os.environ)
    if args.threads > 0:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[var] = str(args.threads)
    cmd = [sys.executable, __file__, "--case", stage, str(n)]
    cmd += ["--tasks", str(args.tasks), "--seed", str(args.seed), "--threads", str(args.threads)]
    cmd += ["--max-rss-gb", str(args.max_rss_gb)]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"stage": stage, "clients": n, "status": f"aborted: over {args.timeout} s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode == ABORT_CODE:
        seen = json.loads(lines[-1]) if lines else {}
        return {
            "stage": stage,
            "clients": n,
            "status": f"aborted: over {args.max_rss_gb:g} GB",
            "rss_at_abort_mb": seen.get("aborted_rss_kib", 0) / KIB,
            "seconds_at_abort": seen.get("seconds"),
        }
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        return {"stage": stage, "clients": n, "status": f"failed (rc {proc.returncode})", "error": tail}
    return {**json.loads(lines[-1]), "status": "ok"}


def _exponent(rows: dict[int, dict[str, Any]], key: str, lo: int, hi: int) -> float | None:
    if rows.get(lo, {}).get("status") != "ok" or rows.get(hi, {}).get("status") != "ok":
        return None
    a, b = rows[lo][key], rows[hi][key]
    if a <= 0 or b <= 0:
        return None
    return math.log(b / a) / math.log(hi / lo)


def _largest_growth(rows: dict[int, dict[str, Any]]) -> dict[str, Any] | None:
    """The exponents between the two largest measured client counts (where 1000 was not measured)."""
    done = sorted(n for n, r in rows.items() if r.get("status") == "ok")
    if len(done) < 2:
        return None
    lo, hi = done[-2], done[-1]
    return {
        "from": lo,
        "to": hi,
        "seconds": _exponent(rows, "seconds", lo, hi),
        "peak_delta_mb": _exponent(rows, "peak_delta_mb", lo, hi),
    }


def _table(results: dict[str, dict[int, dict[str, Any]]], clients: list[int]) -> str:
    head = "stage".ljust(12) + "".join(f"{n:>10} cl s  {'peak MB':>8}" for n in clients)
    lines = [head]
    for stage, rows in results.items():
        cells = []
        for n in clients:
            row = rows.get(n, {})
            if row.get("status") == "ok":
                cells.append(f"{row['seconds']:>15.3f}  {row['peak_delta_mb']:>8.1f}")
            else:
                cells.append(f"{row.get('status', '-')[:25]:>25}")
        lines.append(stage.ljust(12) + "".join(cells))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    parser.add_argument(
        "--tasks", type=int, default=4, help="synthetic tasks (separable fingerprint centres)"
    )
    parser.add_argument("--threads", type=int, default=0, help="torch/BLAS threads; 0 = their defaults")
    parser.add_argument("--max-rss-gb", type=float, default=6.0, help="abort (or skip) a case above this RSS")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds before a case is aborted")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--case", nargs=2, metavar=("STAGE", "CLIENTS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        run_case(args)
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    clients = sorted(set(args.clients))
    results: dict[str, dict[int, dict[str, Any]]] = {}
    for stage in args.stages:
        rows: dict[int, dict[str, Any]] = {}
        for n in clients:
            estimate = _estimate_gb(rows, n)
            seconds = _estimate_seconds(rows, n)
            if estimate is not None and estimate > args.max_rss_gb:
                rows[n] = {"stage": stage, "clients": n, "status": f"skipped: estimated {estimate:.1f} GB"}
            elif seconds is not None and seconds > args.timeout:
                rows[n] = {"stage": stage, "clients": n, "status": f"skipped: estimated {seconds:.0f} s"}
            else:
                rows[n] = {**_child(args, stage, n), "estimated_rss_gb": estimate}
            print(json.dumps(rows[n]), flush=True)
        results[stage] = rows

    totals = {}
    for n in clients:
        rows_n = [results[s].get(n, {}) for s in GOAL_STAGES if s in results]
        if rows_n and all(r.get("status") == "ok" for r in rows_n):
            totals[str(n)] = sum(r["seconds"] for r in rows_n)
    report = {
        "clients": clients,
        "tasks": args.tasks,
        "threads": args.threads,
        "max_rss_gb": args.max_rss_gb,
        "model": "MiniLM-shaped (6 blocks, hidden 384, intermediate 1536, LoRA on query and value)",
        "goal": "<= 10 s total (clustering + allocation + aggregation + laplacian) at 1000 clients",
        "total_seconds": totals,
        "growth_exponent_100_1000": {
            s: {
                "seconds": _exponent(rows, "seconds", 100, 1000),
                "peak_delta_mb": _exponent(rows, "peak_delta_mb", 100, 1000),
            }
            for s, rows in results.items()
        },
        "growth_exponent_largest": {s: _largest_growth(rows) for s, rows in results.items()},
        "stages": {s: [rows[n] for n in clients] for s, rows in results.items()},
    }
    print(_table(results, clients))
    write_report(args.out, "orchestration", report, echo=False)


if __name__ == "__main__":
    main()
