"""The convergence-speed table (tables.speeds) on hand-made curves whose answers are known: the target, the
round and simulated seconds each seed first reaches it, mean ± std over the seeds that do, and n/N."""

from __future__ import annotations

from pathlib import Path

import pytest

from atlas_pl.reporting import aggregate
from atlas_pl.reporting.reader import Job
from atlas_pl.reporting.tables import csv_rows, markdown, speeds


def _record(round_: int, primary: float | None, sim: float) -> dict:
    """A round with the sst2 mean over clients `primary` (None: not scored, fed.eval_every)."""
    base = {"round": round_, "cumulative_sim_seconds": sim, "upload_bytes": 0, "download_bytes": 0}
    if primary is None:
        return {**base, "evaluated": False, "per_task": {}}
    per_task = {"sst2": {"accuracy": primary, "primary": primary, "worst_primary": primary - 0.1}}
    return {**base, "evaluated": True, "per_task": per_task, "mean_primary": primary}


def _job(ablation: str, seed: int, curve: list[float | None], sim_step: float) -> Job:
    records = [_record(r, v, sim_step * r) for r, v in enumerate(curve, start=1)]
    config = {"seed": seed, "ablation": {"name": ablation}, "fed": {"rounds": len(curve)}}
    return Job(Path(f"{ablation}_{seed}"), "completed", ablation, None, seed, config, records)


def _jobs() -> list[Job]:
    """fedavg ends at 0.9, 0.9, 0.6 (mean 0.8, the best of any group: target 0.95 x 0.8 = 0.76):
    seed 0 (10 s a round, round 2 not scored) first reaches it in round 3 at 30 s, seed 1 (12 s a round)
    in round 2 at 24 s, seed 2 never. local_only ends at 0.7 (below the target): neither seed reaches it."""
    return [
        _job("fedavg", 0, [0.5, None, 0.78, 0.9], 10.0),
        _job("fedavg", 1, [0.6, 0.77, 0.75, 0.9], 12.0),
        _job("fedavg", 2, [0.3, 0.5, 0.6, 0.6], 11.0),
        _job("local_only", 0, [0.4, 0.6, 0.7, 0.7], 5.0),
        _job("local_only", 1, [0.4, 0.6, 0.75, 0.7], 5.0),
    ]


def test_rounds_and_seconds_to_target_on_a_constructed_curve() -> None:
    groups = aggregate(_jobs())
    assert [g.label for g in groups] == ["local_only", "fedavg"]
    assert groups[1].per_task["sst2"].mean.mean == pytest.approx(0.8)
    table = speeds(groups)
    assert set(table) == {"sst2"}
    fedavg, local = table["sst2"]["fedavg"], table["sst2"]["local_only"]
    assert fedavg.target == local.target == pytest.approx(0.76)
    # rounds 3 and 2: mean 2.5, population std 0.5; seconds 30 and 24: 27 ± 3; seed 2 never
    assert fedavg.rounds is not None and fedavg.sim_seconds is not None
    assert (fedavg.rounds.mean, fedavg.rounds.std, fedavg.rounds.n) == (2.5, 0.5, 2)
    assert (fedavg.sim_seconds.mean, fedavg.sim_seconds.std, fedavg.sim_seconds.n) == (27.0, 3.0, 2)
    assert (fedavg.reached, fedavg.n) == (2, 3)
    assert (fedavg.fmt_rounds(), fedavg.fmt_seconds()) == ("2.5 ± 0.5 (2/3)", "27.0 ± 3.0")
    # local_only's 0.75 in round 3 is below 0.76: never
    assert (local.rounds, local.sim_seconds, local.reached, local.n) == (None, None, 0, 2)
    assert (local.fmt_rounds(), local.fmt_seconds()) == ("never (0/2)", "–")

    rows = {r["group"]: r for r in csv_rows(groups)}
    assert rows["fedavg"]["target"] == pytest.approx(0.76)
    assert (rows["fedavg"]["rounds_to_target_mean"], rows["fedavg"]["rounds_to_target_std"]) == (2.5, 0.5)
    assert (rows["fedavg"]["sim_seconds_to_target_mean"], rows["fedavg"]["sim_seconds_to_target_std"]) == (
        27.0,
        3.0,
    )
    assert rows["fedavg"]["seeds_reaching_target"] == "2/3"
    assert (rows["local_only"]["rounds_to_target_mean"], rows["local_only"]["seeds_reaching_target"]) == (
        "",
        "0/2",
    )


def test_every_seed_reaching_the_target_shows_no_count_and_a_negative_best_lowers_it() -> None:
    jobs = [_job("fedavg", s, [0.5, 0.9], 10.0) for s in (0, 1)]
    table = speeds(aggregate(jobs))["sst2"]["fedavg"]
    assert (table.fmt_rounds(), table.fmt_seconds()) == ("2.0 ± 0.0", "20.0 ± 0.0")
    # an MCC that stays negative: the target is below the best (best - 5% of |best|), so the best reaches it
    jobs = [_job("fedavg", 0, [-0.5, -0.2], 10.0)]
    speed = speeds(aggregate(jobs))["sst2"]["fedavg"]
    assert speed.target == pytest.approx(-0.21)
    assert speed.rounds is not None and speed.rounds.mean == 2.0


def test_the_speed_section_says_what_it_counts() -> None:
    jobs = _jobs()
    text = markdown(jobs, aggregate(jobs), Path("runs"))
    lines = text.splitlines()
    assert "| fedavg | 2.5 ± 0.5 (2/3) | 27.0 ± 3.0 |" in lines
    assert "| local_only | never (0/2) | – |" in lines
    sentence = next(line for line in lines if line.startswith("Rounds and simulated seconds"))
    assert sentence == (
        "Rounds and simulated seconds to reach 95% of the best final mean primary metric of any group, per "
        "task: the target is that share of the highest, over the groups, of the last-round mean over the "
        "task's clients averaged over the group's seeds (for a negative best, such as an MCC, the best minus "
        "5% of its size): SST-2 accuracy 0.760. A seed reaches it at the first scored round whose mean over "
        "the task's clients is at or above the target; its simulated seconds are the cumulative simulated "
        "time at that round. Mean ± std over the seeds that reach it; (k/n) when only k of the group's n "
        "seeds do, never (0/n) when none does. Simulated seconds price every step on the device profiles "
        "(phases/simtime.py); – where no seed that reaches the target has them."
    )
