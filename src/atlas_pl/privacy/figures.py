"""privacy.json's figures, drawn on the Agg canvas (no pyplot state, as in atlas_pl.reporting.figures).

- ap_by_split.png: AP against the split depth, one colour per attack, solid for white-box and dashed for
  semi-white-box, one panel per noise scale.
- tradeoff.png: AP against MP per defended job, with DCS contours around (MP*, AP* = 0).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from atlas_pl.privacy.metrics import dcs

ATTACK_COLORS = {"vmi": "#0072B2", "rmi": "#E69F00", "inverter": "#009E73", "bisr": "#CC79A7"}
KNOWLEDGE_STYLES = {"white_box": "-", "semi_white_box": "--"}


def ap_by_split(rows: list[dict[str, Any]]) -> Figure | None:
    noises = sorted({r["noise"] for r in rows})
    if not rows or len({r["split"] for r in rows}) < 1:
        return None
    fig = Figure(figsize=(4.2 * len(noises), 3.4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(noises), squeeze=False)[0]
    for ax, noise in zip(axes, noises):
        for attack in ATTACK_COLORS:
            for knowledge, style in KNOWLEDGE_STYLES.items():
                points = sorted(
                    (r["split"], r["accuracy"])
                    for r in rows
                    if r["noise"] == noise and r["attack"] == attack and r["knowledge"] == knowledge
                )
                if points:
                    x, y = zip(*points)
                    ax.plot(
                        x,
                        y,
                        style,
                        marker="o",
                        color=ATTACK_COLORS[attack],
                        label=f"{attack} ({knowledge.replace('_', '-')})",
                    )
        ax.set_xlabel("split s (blocks on the client)")
        ax.set_ylabel("token accuracy AP")
        ax.set_ylim(0, 1.02)
        ax.set_title(f"activation noise {noise:g} x rms(h)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    return fig


def tradeoff(points: list[dict[str, Any]], beta: float = 0.5) -> Figure | None:
    usable = [p for p in points if p.get("mp") is not None]
    if not usable:
        return None
    mp_star = usable[0]["mp_star"]
    fig = Figure(figsize=(5.0, 4.0), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    mps = [p["mp"] for p in usable]
    low, high = min(mps + [mp_star]) - 0.05, max(mps + [mp_star]) + 0.05
    grid_mp, grid_ap = np.meshgrid(np.linspace(low, high, 120), np.linspace(0, 1, 120))
    score = np.vectorize(lambda m, a: dcs(a, m, mp_star=mp_star, beta=beta))(grid_mp, grid_ap)
    contours = ax.contour(
        grid_mp, grid_ap, score, levels=[0.5, 0.6, 0.7, 0.8, 0.9], colors="#999999", linewidths=0.8
    )
    ax.clabel(contours, fmt="DCS %.1f", fontsize=7)
    for p in usable:
        ax.plot(p["mp"], p["ap"], "o", color="#0072B2")
        ax.annotate(
            f"noise {p['activation_noise']:g}",
            (p["mp"], p["ap"]),
            textcoords="offset points",
            xytext=(4, 4),
            fontsize=7,
        )
    ax.set_xlabel("MP (task metric of the defended run)")
    ax.set_ylabel("AP (max over attacks, white-box)")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    return fig


def write_figures(result: dict[str, Any], out_dir: Path) -> list[Path]:
    written = []
    for name, fig in (
        ("ap_by_split.png", ap_by_split(result["attacks"])),
        ("tradeoff.png", tradeoff(result["tradeoff"], result.get("beta", 0.5))),
    ):
        if fig is not None:
            path = out_dir / name
            fig.savefig(path, dpi=110)
            written.append(path)
    return written
