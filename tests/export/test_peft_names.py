"""Naming the adapted modules for PEFT: the short suffix list where it is exact, a regex where not."""

from __future__ import annotations

import re

from atlas_pl.export.peft_files import target_modules

NAMES = {(b, p): f"encoder.layer.{b}.{p}" for b in range(2) for p in ("attention.self.query", "output.dense")}
BLOCK_PROJECTIONS = [*NAMES.values(), *(f"encoder.layer.{b}.intermediate.dense" for b in range(2))]


def test_suffixes_when_they_select_exactly_the_adapted_modules() -> None:
    assert target_modules(NAMES, BLOCK_PROJECTIONS) == ["attention.self.query", "output.dense"]


def test_a_regex_when_a_suffix_would_also_catch_another_module() -> None:
    """`output.dense` also ends `attention.output.dense`: PEFT would adapt a module atlas_pl did not."""
    candidates = [*BLOCK_PROJECTIONS, "encoder.layer.0.attention.output.dense", "pooler.output.dense"]
    pattern = target_modules(NAMES, candidates)
    assert isinstance(pattern, str)
    # PEFT matches a string target_modules with re.fullmatch, on names that may carry a prefix ("bert.")
    selected = {c for c in candidates if re.fullmatch(pattern, c)}
    assert selected == set(NAMES.values())
    assert re.fullmatch(pattern, "bert.encoder.layer.1.output.dense")
