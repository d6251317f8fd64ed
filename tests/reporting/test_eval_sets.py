"""The report on either evaluation set (reporting/views.py, report.py): hand-made job directories whose
records come from `engines.records.round_record`, with global and personal scores chosen so every mean
and worst client is known exactly. No training."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from atlas_pl.engines.records import ClientRound, RoundLog, round_record
from atlas_pl.parties.link import TrafficLedger
from atlas_pl.report import build_report, main
from atlas_pl.reporting import aggregate, load_jobs
from atlas_pl.reporting import figures as figs
from atlas_pl.reporting.tables import csv_rows, markdown
from atlas_pl.reporting.views import NO_PERSONAL, view_record, with_eval_set

# (global primary, personal primary) per client per round, for the seed's offset of 0; client 0 and 1 are
# sst2 (accuracy), client 2 is mrpc (F1). Global and personal differ, so a mix-up shows in any mean.
CURVES = {
    0: [(0.5, 0.25), (0.75, 0.5)],
    1: [(0.25, 0.5), (0.5, 0.875)],
    2: [(0.5, 0.5), (0.625, 0.875)],
}
TASKS = {0: "sst2", 1: "sst2", 2: "mrpc"}


def _scores(primary: float) -> dict[str, float]:
    return {"accuracy": primary, "primary": primary, "loss": 1.0 - primary, "f1": primary}


def _records(offset: float, personal: bool, sim_step: float = 10.0) -> list[dict]:
    """Two scored rounds; every global and personal score raised by `offset` (a second seed)."""
    log = RoundLog()
    for r in (1, 2):
        rows = [
            ClientRound(
                client_id=k,
                task=TASKS[k],
                cluster=0,
                device="cpu",
                split=1,
                ranks=[4],
                metrics=_scores(CURVES[k][r - 1][0] + offset),
                personal=_scores(CURVES[k][r - 1][1] + offset) if personal else None,
                train_loss=0.5,
                train_seconds=1.0,
            )
            for k in CURVES
        ]
        record = round_record(r, rows, ["sst2", "mrpc"], TrafficLedger())
        log.add(record, {"round_seconds": 1.0, "cumulative_sim_seconds": sim_step * r})
    return log.records


def _job(path: Path, seed: int, *, personal: bool = True, ablation: str = "fedavg") -> Path:
    """A completed job directory (summary.json, done, metrics.jsonl) of seed `seed` (offset 0.0625 x seed)."""
    path.mkdir(parents=True)
    records = _records(0.0625 * seed, personal)
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    config = {
        "seed": seed,
        "ablation": {"name": ablation},
        "fed": {"eta": 0.1, "rounds": 2},
        "data": {"personal_share": 0.2 if personal else 0.0},
    }
    summary = {"status": "completed", "ablation": ablation, "config": config, "totals": {"seconds": 3.0}}
    (path / "summary.json").write_text(json.dumps(summary))
    (path / "done").write_text(json.dumps({"round": 2}))
    return path


def _tree(root: Path, *, personal: bool = True) -> Path:
    for seed in (0, 1):
        _job(root / f"{seed}_fedavg", seed, personal=personal)
    return root


def _csv(path: Path) -> dict[tuple[str, str], dict[str, str]]:
    with path.open() as fh:
        return {(row["group"], row["task"]): row for row in csv.DictReader(fh)}


def test_personal_view_of_a_record_takes_every_figure_from_the_personal_block() -> None:
    record = _records(0.0, personal=True)[-1]
    viewed = view_record(record, "personal")
    assert viewed["evaluated"] is True and "personal" not in viewed
    assert viewed["mean_primary"] == pytest.approx((0.5 + 0.875 + 0.875) / 3)
    assert viewed["worst_accuracy"] == 0.5
    assert viewed["per_task"] == {
        "sst2": {"accuracy": 0.6875, "primary": 0.6875, "worst_primary": 0.5},
        "mrpc": {"accuracy": 0.875, "primary": 0.875, "worst_primary": 0.875},
    }
    assert {k: viewed[k] for k in record["personal"]} == record["personal"]
    client = viewed["clients"]["0"]
    assert (client["accuracy"], client["primary"], client["loss"], client["f1"]) == (0.5, 0.5, 0.5, 0.5)
    assert "global" not in client and "personal" not in client and client["upload_bytes"] == 0
    # traffic and time are the same on either set
    for key in ("cumulative_upload_bytes", "round_seconds", "cumulative_sim_seconds", "round"):
        assert viewed[key] == record[key]
    # the record itself is untouched, and the global view is the record as written
    assert record["mean_primary"] == pytest.approx((0.75 + 0.5 + 0.625) / 3)
    assert record["clients"]["0"]["primary"] == 0.75 and record["clients"]["0"]["global"]["primary"] == 0.75
    assert view_record(record, "global") == record
    assert view_record(viewed, "personal") == viewed  # viewing twice changes nothing


def test_a_scored_record_without_personal_scores_is_unscored_in_the_personal_view() -> None:
    record = _records(0.0, personal=False)[-1]
    viewed = view_record(record, "personal")
    assert viewed["evaluated"] is False and viewed["per_task"] == {}
    assert not {"mean_accuracy", "worst_accuracy", "std_accuracy", "mean_primary"} & set(viewed)
    for client in viewed["clients"].values():
        assert not {"accuracy", "primary", "loss", "f1", "mcc", "global", "personal"} & set(client)
    assert viewed["upload_bytes"] == record["upload_bytes"] and viewed["round"] == 2
    with pytest.raises(ValueError, match="eval_set must be one of global, personal"):
        view_record(record, "local")


def test_tables_on_the_personal_view_use_the_personal_numbers(tmp_path: Path) -> None:
    root = _tree(tmp_path / "runs")
    personal = aggregate(load_jobs(root, eval_set="personal"))
    global_ = aggregate(load_jobs(root))
    assert [g.label for g in personal] == [g.label for g in global_] == ["fedavg"]
    # last round, seed 0 and seed 1 (+0.0625): personal sst2 clients 0.5/0.875, mrpc 0.875
    p, g = personal[0], global_[0]
    assert p.per_task["sst2"].mean.mean == pytest.approx(0.6875 + 0.03125)
    assert p.per_task["sst2"].mean.std == pytest.approx(0.03125)
    assert p.per_task["sst2"].worst.mean == pytest.approx(0.5 + 0.03125)
    assert p.per_task["mrpc"].mean.mean == pytest.approx(0.875 + 0.03125)
    assert p.mean_primary.mean == pytest.approx(0.75 + 0.03125)
    # the global view: the top-level numbers, as before
    assert g.per_task["sst2"].mean.mean == pytest.approx(0.625 + 0.03125)  # (0.75 + 0.5) / 2
    assert g.per_task["sst2"].worst.mean == pytest.approx(0.5 + 0.03125)
    assert g.per_task["mrpc"].mean.mean == pytest.approx(0.625 + 0.03125)
    assert g.mean_primary.mean == pytest.approx((0.75 + 0.5 + 0.625) / 3 + 0.03125)
    # traffic and seconds do not depend on the evaluation set
    assert (p.bytes, p.seconds) == (g.bytes, g.seconds)
    # the CSV rows and the convergence target follow the view
    rows = {r["task"]: r for r in csv_rows(personal)}
    assert rows["mrpc"]["final_mean_primary_mean"] == pytest.approx(0.90625)
    assert rows["mrpc"]["target"] == pytest.approx(0.95 * 0.90625)
    assert {r["task"]: r["target"] for r in csv_rows(global_)}["mrpc"] == pytest.approx(0.95 * 0.65625)
    # seed 0's personal mrpc curve 0.5, 0.875 reaches 0.861 in round 2, seed 1's 0.5625, 0.9375 too
    assert (rows["mrpc"]["rounds_to_target_mean"], rows["mrpc"]["sim_seconds_to_target_mean"]) == (2.0, 20.0)
    assert with_eval_set(with_eval_set(load_jobs(root), "personal"), "personal")[0].records[-1]["per_task"][
        "mrpc"
    ]["primary"] == pytest.approx(0.875)


def test_report_writes_the_personal_view_beside_the_global_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    drawn: list[dict] = []

    def one_figure(groups: list) -> dict:  # saving all seven twice would take seconds
        drawn.append({"convergence": figs.convergence(groups), "communication": figs.communication(groups)})
        return {"convergence": drawn[-1]["convergence"]}

    monkeypatch.setattr(figs, "draw_all", one_figure)
    root = _tree(tmp_path / "runs")
    out = tmp_path / "report"
    report = build_report(root, out)
    assert report.eval_set == "global" and report.personal is not None
    assert report.personal.eval_set == "personal" and report.personal.markdown == out / "personal/report.md"

    text = (out / "report.md").read_text()
    lines = text.splitlines()
    assert lines[0] == f"# Report: {root}"
    assert lines[2] == (
        "Evaluation set: **global**, the task's validation set, the same for every client. The same report "
        "on the **personal** test sets, each client's own held-out rows (`data.personal_share`), with the "
        "same label mix as its training data, is in [personal/report.md](personal/report.md)."
    )
    ptext = (out / "personal" / "report.md").read_text()
    plines = ptext.splitlines()
    assert plines[0] == f"# Report: {root} (personal test sets)"
    assert plines[2] == (
        "This is the **personal-set view**: every metric is on the personal test sets, each client's own "
        "held-out rows (`data.personal_share`), with the same label mix as its training data. The global "
        "report, on the task's validation set, the same for every client, is [../report.md](../report.md)."
    )
    assert "left out of these statistics" not in ptext
    # the tables: global numbers in one, personal in the other (MRPC F1 mean, worst)
    assert "| fedavg | 0, 1 | 2 | 0.656 ± 0.031 | 0.531 ± 0.031 | 0.656 ± 0.031 | 0.656 ± 0.031 |" in lines
    assert "| fedavg | 0, 1 | 2 | 0.719 ± 0.031 | 0.531 ± 0.031 | 0.906 ± 0.031 | 0.906 ± 0.031 |" in plines
    rows, prows = _csv(out / "report.csv"), _csv(out / "personal" / "report.csv")
    assert float(rows[("fedavg", "mrpc")]["final_mean_primary_mean"]) == pytest.approx(0.65625)
    assert float(prows[("fedavg", "mrpc")]["final_mean_primary_mean"]) == pytest.approx(0.90625)
    assert rows[("fedavg", "mrpc")]["upload_bytes_mean"] == prows[("fedavg", "mrpc")]["upload_bytes_mean"]
    figures = {p.name for p in (out / "personal" / "figures").glob("*.png")}
    assert figures == {"convergence.png"} and "(figures/convergence.png)" in ptext
    # a personal-set PNG says so in its title where it plots a metric (not bytes, graph or ranks)
    (global_figs, personal_figs) = drawn
    mark = "\non the personal test sets (each client's own held-out rows)"
    assert personal_figs["convergence"].get_suptitle().endswith(mark)
    assert "personal" not in global_figs["convergence"].get_suptitle()
    figs.mark_eval_set(personal_figs, "on the personal test sets")
    assert "personal" not in personal_figs["communication"].get_suptitle()


def _no_figures(monkeypatch: pytest.MonkeyPatch) -> None:
    """Skip the figures where a test is not about them (saving seven PNGs takes about a second)."""
    monkeypatch.setattr(figs, "draw_all", lambda groups: {})


def test_eval_option_writes_one_set_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_figures(monkeypatch)
    root = _tree(tmp_path / "runs")
    assert main([str(root), "--out", str(tmp_path / "g"), "--eval", "global"]) == 0
    assert not (tmp_path / "g" / "personal").exists()
    assert "Evaluation set" not in (tmp_path / "g" / "report.md").read_text()
    assert main([str(root), "--out", str(tmp_path / "p"), "--eval", "personal"]) == 0
    assert not (tmp_path / "p" / "report.md").exists()
    text = (tmp_path / "p" / "personal" / "report.md").read_text()
    assert "is written by `python -m atlas_pl.report DIR --eval global` (or `--eval both`)." in text
    out = capsys.readouterr().out
    assert f"personal-set view: wrote {tmp_path / 'p' / 'personal' / 'report.md'}" in out


def test_jobs_without_personal_sets_get_no_personal_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_figures(monkeypatch)
    root = _tree(tmp_path / "runs", personal=False)
    out = tmp_path / "report"
    report = build_report(root, out)
    assert report.personal is None and not (out / "personal").exists()
    text = (out / "report.md").read_text()
    assert "Evaluation set" not in text and "personal/report.md" not in text
    with pytest.raises(SystemExit) as stop:
        main([str(root), "--out", str(out), "--eval", "personal"])
    assert stop.value.code == 2
    assert "no job under" in capsys.readouterr().err and not (out / "personal").exists()


def test_a_job_without_personal_sets_is_listed_not_counted_in_the_personal_view(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_figures(monkeypatch)
    root = _tree(tmp_path / "runs")
    _job(root / "2_fedavg_plain", 0, personal=False)
    jobs = load_jobs(root, eval_set="personal")
    plain = next(j for j in jobs if j.path.name == "2_fedavg_plain")
    assert plain.status == "completed" and not plain.in_statistics and plain.problems == [NO_PERSONAL]
    groups = aggregate(jobs)
    # the labels are those of the global report (data.personal_share splits the groups there too)
    assert [g.label for g in groups] == ["fedavg (data.personal_share=0.2)"]
    assert [g.label for g in aggregate(load_jobs(root))] == [
        "fedavg (data.personal_share=0)",
        "fedavg (data.personal_share=0.2)",
    ]
    text = markdown(jobs, groups, root)
    row = next(line for line in text.splitlines() if "`2_fedavg_plain`" in line)
    assert "| completed | fedavg (data.personal_share=0) |" in row and NO_PERSONAL in row

    build_report(root, tmp_path / "report")
    ptext = (tmp_path / "report" / "personal" / "report.md").read_text()
    assert (
        "1 completed job(s) have no personal test sets (data.personal_share = 0) and are left out of these "
        "statistics; they are listed under *Jobs excluded from the statistics*."
    ) in ptext


def test_a_stale_personal_report_is_removed_when_the_jobs_no_longer_have_personal_sets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_figures(monkeypatch)
    out, with_sets = tmp_path / "report", _tree(tmp_path / "with")
    without_sets = _tree(tmp_path / "without", personal=False)
    build_report(with_sets, out)
    assert (out / "personal" / "report.md").is_file()

    build_report(without_sets, out)

    assert not (out / "personal").exists()  # it described jobs that are not in this report
    build_report(with_sets, out)
    (out / "personal" / "my_notes.txt").write_text("mine")
    build_report(without_sets, out)
    assert (out / "personal" / "my_notes.txt").read_text() == "mine"  # a user's file is never removed
    assert "holds files a report does not write" in capsys.readouterr().err
    mine = tmp_path / "mine"
    (mine / "personal" / "figures").mkdir(parents=True)
    (mine / "personal" / "figures" / "plot.png").write_bytes(b"png")  # no report.md: not a report's
    build_report(without_sets, mine)
    assert (mine / "personal" / "figures" / "plot.png").is_file() and not capsys.readouterr().err
