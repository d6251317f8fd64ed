"""privacy.json as the plain-text tables the app prints and the README quotes."""

from __future__ import annotations

from typing import Any


def _attack_table(rows: list[dict[str, Any]]) -> list[str]:
    attacks = sorted({r["attack"] for r in rows}, key=["vmi", "rmi", "inverter", "bisr"].index)
    lines = [
        "| knowledge | noise | split | " + " | ".join(attacks) + " | AP (max) |",
        "|---|---|---|" + "---|" * (len(attacks) + 1),
    ]
    cases = sorted({(r["knowledge"], r["noise"], r["split"]) for r in rows})
    for knowledge, noise, split in cases:
        found = {
            r["attack"]: r["accuracy"]
            for r in rows
            if (r["knowledge"], r["noise"], r["split"]) == (knowledge, noise, split)
        }
        cells = " | ".join(f"{found[a]:.3f}" if a in found else "-" for a in attacks)
        lines.append(f"| {knowledge} | {noise:g} | {split} | {cells} | {max(found.values()):.3f} |")
    return lines


def _tradeoff_table(points: list[dict[str, Any]]) -> list[str]:
    lines = ["| activation noise | split | AP (max, attack) | MP | MP* | DCS |", "|---|---|---|---|---|---|"]
    for p in points:
        mp = "-" if p["mp"] is None else f"{p['mp']:.3f}"
        score = "-" if p["dcs"] is None else f"{p['dcs']:.3f}"
        lines.append(
            f"| {p['activation_noise']:g} | {p['split']} | {p['ap']:.3f} ({p['ap_attack']}) | {mp} | "
            f"{p['mp_star']:.3f} | {score} |"
        )
    return lines


def console_table(result: dict[str, Any]) -> str:
    out = [
        f"privacy: {result['model']} on {result['task']} ({result['samples']} validation sentences), "
        f"positional token accuracy per attack"
    ]
    if result["attacks"]:
        out += _attack_table(result["attacks"])
    if result["tradeoff"]:
        out += [
            "",
            "privacy-utility (white-box attacker, each job's own split):",
            *_tradeoff_table(result["tradeoff"]),
        ]
    sketch = result.get("sketch")
    if sketch:
        out += [
            "",
            f"sketch attack ({sketch['target']}): accuracy {sketch['accuracy']:.3f}, "
            f"chance {sketch['chance']:.3f} ({sketch['victims']} victims, {sketch['shadows']} shadows)",
        ]
    return "\n".join(out)
