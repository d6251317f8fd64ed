"""README's evidence tables are written by the collector (evidence_study.py --collect --readme), so the
numbers a reader sees are the results JSON's; the text around them is the author's and must survive."""

from __future__ import annotations

import sys

import pytest

from ..conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
import evidence_collect  # noqa: E402


def _stat(mean: float) -> dict[str, float]:
    return {"mean": mean, "std": 0.0, "n": 2}


def _row(by_seed: dict[str, tuple[float, float]]) -> dict:
    cell = {"mean": _stat(0.5), "worst": _stat(0.4), "to_target": None}
    return {
        "seeds": [int(s) for s in by_seed],
        "per_task": {"sst2": cell},
        "mean_primary": _stat(0.5),
        "mean_accuracy": _stat(0.6),
        "bytes": _stat(2e9),
        "by_seed": {s: {"mean_accuracy": a, "mean_primary": p} for s, (a, p) in by_seed.items()},
    }


RESULT = {
    "settings": {
        "b": {
            "eval_sets": {
                "personal": {
                    "local_only": _row({"0": (0.81, 0.1), "1": (0.83, 0.1)}),
                    "fedavg": _row({"1": (0.7, 0.2)}),
                },
                "global": {
                    "local_only": _row({"0": (0.5, 0.41), "1": (0.5, 0.43)}),
                    "fedavg": _row({"1": (0.6, 0.44)}),
                },
            }
        },
        "a": {"eval_sets": {"global": {"fedavg": _row({"0": (0.6, 0.45)})}}},
    }
}
README = """# title
intro <!-- keep --> and a quoted `<!-- evidence:b:personal -->`, not a marker
<!-- evidence:b:personal -->
old table
<!-- /evidence:b:personal -->
between
<!-- evidence:b:seeds -->
| old |
<!-- /evidence:b:seeds -->
tail
<!-- evidence:p2p:personal -->
not run yet
<!-- /evidence:p2p:personal -->
"""


def test_marked_tables_are_rewritten_and_the_text_around_them_kept() -> None:
    tables = evidence_collect.readme_tables(RESULT)
    assert set(tables) == {"b:personal", "b:global", "b:seeds", "a:global"}  # no seed table without personal

    text, missing, stale = evidence_collect.fill_readme(README, tables)

    assert sorted(missing) == ["a:global", "b:global"] and stale == ["p2p:personal"]
    assert "old table" not in text and "| old |" not in text
    assert text.startswith("# title\nintro <!-- keep --> and a quoted `<!-- evidence:b:personal -->`, not a")
    assert "\n<!-- evidence:b:personal -->\n| method |" in text and "not run yet" in text
    assert (
        "\n<!-- /evidence:b:personal -->\nbetween\n" in text and "<!-- /evidence:b:seeds -->\ntail\n" in text
    )
    assert evidence_collect.fill_readme(text, tables) == (text, missing, stale)  # a second fill: no change


def test_the_seed_table_pairs_personal_accuracy_with_global_primary_per_seed() -> None:
    lines = evidence_collect.seed_table(RESULT["settings"]["b"]).splitlines()
    assert lines[0] == "| seed | local_only | fedavg |"
    assert lines[2:] == ["| 0 | 0.810 / 0.410 | – |", "| 1 | 0.830 / 0.430 | 0.700 / 0.440 |"]


def test_a_table_marked_twice_is_refused() -> None:
    twice = README + "<!-- evidence:b:seeds -->\n<!-- /evidence:b:seeds -->\n"
    with pytest.raises(ValueError, match="evidence:b:seeds more than once"):
        evidence_collect.fill_readme(twice, evidence_collect.readme_tables(RESULT))
