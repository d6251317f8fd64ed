"""Benchmark: Phase 1 on an experiment's real clients — how well, how fast, sketch vs raw gradients.

Builds the federation of an experiment (default: quick = real MiniLM on SST-2, MRPC, CoLA, 3 clients each),
runs the client fingerprints and the server k-search once per compression (`sketch`, `raw_pca`) and per
data seed, and reports the chosen k, purity / ARI / NMI, the k-search table, bytes sent per client and
seconds. No training happens. Prints and writes JSON to benchmarks/results/fingerprint_<exp>.json.

    .venv/bin/python benchmarks/bench_fingerprint.py --experiment quick --seeds 0 1 2
    .venv/bin/python benchmarks/bench_fingerprint.py --experiment smoke --batches 2 4 8
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from _report import experiment_settings, write_report

from atlas_pl.engines.setup import Federation, build_federation
from atlas_pl.lightning.orchestrator import FederatedOrchestrator
from atlas_pl.parties.client import ClientParty
from atlas_pl.parties.coordinator import Coordinator
from atlas_pl.parties.discovery import Discovery
from atlas_pl.parties.host import ServerHost
from atlas_pl.parties.link import TrafficLedger
from atlas_pl.settings import Settings
from atlas_pl.tracking.tracker import Tracker


def phase1(settings: Settings, fed: Federation) -> tuple[Discovery, TrafficLedger]:
    """One Phase 1 pass through the parties and the coordinator, as a job's first round runs it."""
    ledger = TrafficLedger()
    ledger.start_round(1)
    parties = [
        ClientParty(k, c, fed.models[k], ledger, settings.seed) for k, c in enumerate(fed.data.clients)
    ]
    coordinator = Coordinator(settings, [c.num_samples for c in fed.data.clients])
    tracker = Tracker(settings, settings.output_dir)
    orchestrator = FederatedOrchestrator(settings, coordinator, parties, ServerHost(), tracker, fed.device)
    return orchestrator.phase1(1), ledger


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--experiment", default="quick")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[None])
    parser.add_argument("--compressions", nargs="+", default=["sketch", "raw_pca"])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    runs = []
    for seed in args.seeds:
        base = experiment_settings([f"+experiment={args.experiment}", f"seed={seed}"])
        fed = build_federation(base)
        for batches in args.batches:
            for compression in args.compressions:
                fp = replace(
                    base.fingerprint,
                    compression=compression,
                    batches=base.fingerprint.batches if batches is None else batches,
                )
                settings = replace(base, fingerprint=fp)
                d, ledger = phase1(settings, fed)
                run = {
                    "seed": seed,
                    "batches": fp.batches,
                    "compression": compression,
                    "k": d.k,
                    "labels": d.labels,
                    **d.quality,
                    "upload_bytes_per_client": ledger.upload_bytes(1, 0),
                    "seconds": d.seconds,
                    "k_search": d.table,
                }
                runs.append(run)
                print(
                    f"seed {seed} batches {run['batches']:>3} {compression:>7}: k={d.k} labels={d.labels} "
                    f"purity={d.quality['purity']:.3f} ari={d.quality['ari']:.3f} "
                    f"nmi={d.quality['nmi']:.3f} bytes/client={run['upload_bytes_per_client']} "
                    f"{d.seconds:.1f}s"
                )
                for row in d.table:
                    cells = " ".join(
                        f"{key}={row[key]:.3f}" if isinstance(row[key], float) else f"{key}={row[key]}"
                        for key in row
                    )
                    print(f"    {cells}")
    by_seed: dict[tuple[int, int], dict[str, list[int]]] = {}
    for run in runs:
        by_seed.setdefault((run["seed"], run["batches"]), {})[run["compression"]] = run["labels"]
    agreement = {
        f"seed{s}_batches{b}": labels.get("sketch") == labels.get("raw_pca")
        for (s, b), labels in by_seed.items()
        if len(labels) == 2
    }
    print(f"sketch and raw_pca give the same clusters: {agreement}")
    report = {"experiment": args.experiment, "runs": runs, "agreement": agreement}
    write_report(args.out, f"fingerprint_{args.experiment}", report, echo=False)


if __name__ == "__main__":
    main()
