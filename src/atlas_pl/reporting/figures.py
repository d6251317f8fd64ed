"""The report's PNG figures, drawn with matplotlib's object API on the Agg canvas.

No pyplot: nothing global is touched, so the figures render the same from the CLI, a test or a notebook
(where a returned Figure displays inline). Every figure colours a group the same way (`group_styles`): one
fixed colour-blind-safe colour per ablation (Okabe–Ito), and where an ablation has several groups (ATLAS's
etas, or other settings that differ between the jobs) one shade of its colour per group, lighter to darker in
report order (larger eta darker), so a reader can carry the colour from one figure to the next.
"""

from __future__ import annotations

import textwrap
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_hex, to_rgb
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from atlas_pl.reporting.names import (
    ETA_ABLATIONS,
    GroupKey,
    group_label,
    group_sort_key,
    metric_name,
    settings_text,
    task_metric_title,
    task_title,
)
from atlas_pl.reporting.reader import Job
from atlas_pl.reporting.tables import MB, Group, all_tasks

ABLATION_COLORS = {
    "local_only": "#999999",
    "fedavg": "#0072B2",
    "fedavg_cluster": "#009E73",
    "atlas": "#D55E00",
    "splitlora": "#CC79A7",
    "hsplitlora": "#56B4E9",
    "hetlora": "#E69F00",
    "centralized": "#000000",
}
_EXTRA_COLORS = ("#8C510A", "#01665E", "#762A83", "#B2182B", "#4D9221", "#2166AC")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
DPI = 130

CAPTIONS = {
    "convergence": "Primary metric per round, one column per task; top row: mean over the task's clients, "
    "bottom row: the worst client. Line: mean over seeds; band: min–max over seeds.",
    "ablations": "Last-round primary metric per task and group: solid bar = mean over the task's clients, "
    "hatched bar = worst client; error bars: std over seeds; the number above a bar is its height.",
    "eta_sweep": "ATLAS's last-round primary metric against eta (categorical axis: eta = 0 is included); "
    "solid = mean over the task's clients, dotted = worst client, error bars std over seeds; the dashed "
    "horizontal lines are the other groups' means, for reference.",
    "adjacency": "Laplacian personalization graph a_kl (row k: the weight client k gives client l; "
    "row-normalized, zero across clusters, diagonal 0: the self weight is 1 - eta) from the first seed of "
    "each ATLAS group; groups with the same graph share a panel; ticks name each client's true task.",
    "ranks": "LoRA rank per client and transformer block (allocation.json, first seed of each group): blocks "
    "left of the black step run on the client, the rest on the server. Groups with the same allocation share "
    "a panel; groups without Phase 2 (centralized) have none.",
    "sim_time": "Mean primary metric per task against simulated seconds (the cumulative round time on the "
    "device profiles, phases/simtime.py): what faults, stragglers and peer hosting cost in time, where the "
    "per-round figure cannot show it. One point per scored round at the seeds' mean time; band: min–max "
    "of the metric over seeds.",
    "communication": "Left: MB (10^6 bytes) moved per round, upload + download over all clients (round 1 "
    "includes the Phase 1 fingerprints); line: mean over seeds, band: min–max, groups side by side. Right: "
    "total per job, upload solid and download hatched.",
}


@dataclass(frozen=True)
class Style:
    """A group's look; earlier groups draw thicker lines and bigger markers, so identical curves (atlas at
    eta = 0 and local_only, equal byte counts) stay visible as nested lines instead of hiding each other."""

    color: str
    marker: str
    linewidth: float = 1.6
    markersize: float = 5.0


def group_styles(groups: Sequence[Group]) -> dict[GroupKey, Style]:
    """The colour and marker of each group, fixed per ablation so every figure agrees.

    Several groups of one ablation (eta variants, or other settings that split the jobs) get shades of its
    colour, light to dark in report order, so with increasing eta (a single group keeps the ablation's own
    colour).
    """
    keys = [g.key for g in groups]
    styles: dict[GroupKey, Style] = {}
    unknown = sorted({k[0] for k in keys if k[0] not in ABLATION_COLORS})
    for i, key in enumerate(keys):
        ablation = key[0]
        if ablation in ABLATION_COLORS:
            base = ABLATION_COLORS[ablation]
        else:
            base = _EXTRA_COLORS[unknown.index(ablation) % len(_EXTRA_COLORS)]
        siblings = sorted({k for k in keys if k[0] == ablation}, key=group_sort_key)
        color = base
        if len(siblings) > 1:
            color = _shade(base, -0.4 + 0.8 * siblings.index(key) / (len(siblings) - 1))
        depth = (len(keys) - 1 - i) / max(1, len(keys) - 1)
        styles[key] = Style(
            color=color,
            marker=_MARKERS[i % len(_MARKERS)],
            linewidth=1.3 + 1.5 * depth,
            markersize=3.5 + 4.5 * depth,
        )
    return styles


def _shade(color: str, amount: float) -> str:
    """Lighter toward white for amount < 0, darker toward black for amount > 0 (|amount| <= 1)."""
    rgb = np.asarray(to_rgb(color))
    target = np.ones(3) if amount < 0 else np.zeros(3)
    return to_hex(tuple(rgb + abs(amount) * (target - rgb)))


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _legend(fig: Figure, groups: Sequence[Group], styles: dict[GroupKey, Style]) -> None:
    """One legend below the panels naming each group with its seed count, in report order."""
    _bottom_legend(
        fig,
        [
            _line_handle(styles[g.key], f"{g.label} ({len(g.jobs)} seed{'s' if len(g.jobs) != 1 else ''})")
            for g in groups
        ],
    )


def _bottom_legend(fig: Figure, handles: Sequence, max_cols: int = 4) -> None:
    """A legend under the panels that reads left to right, row by row (matplotlib fills columns first)."""
    ncols = min(len(handles), max_cols)
    nrows = -(-len(handles) // ncols)
    slots = [
        [handles[r * ncols + c] for r in range(nrows) if r * ncols + c < len(handles)] for c in range(ncols)
    ]
    fig.legend(
        handles=[h for column in slots for h in column],
        loc="outside lower center",
        ncols=ncols,
        frameon=False,
    )


def _line_handle(style: Style, label: str) -> Line2D:
    return Line2D([], [], color=style.color, marker=style.marker, label=label)


def _series(jobs: Sequence[Job], value) -> tuple[np.ndarray, np.ndarray]:
    """Rounds and a (seeds × rounds) array of value(record), NaN where a seed lacks a round; rounds
    that no seed has a value for (not scored: `fed.eval_every`) are left out, so lines join the rest."""
    rounds = sorted({int(r["round"]) for j in jobs for r in j.records if value(r) is not None})
    data = np.full((len(jobs), len(rounds)), np.nan)
    for i, job in enumerate(jobs):
        for record in job.records:
            v = value(record)
            if v is not None:
                data[i, rounds.index(int(record["round"]))] = v
    return np.asarray(rounds), data


def _band(ax: Axes, x: np.ndarray, data: np.ndarray, style: Style) -> None:
    """Mean over seeds as a line, min–max over seeds as a band; bands sit under every line (zorder)."""
    with warnings.catch_warnings():  # a round no seed reached is NaN, not a warning
        warnings.simplefilter("ignore", RuntimeWarning)
        mean, low, high = np.nanmean(data, axis=0), np.nanmin(data, axis=0), np.nanmax(data, axis=0)
    ax.plot(
        x, mean, color=style.color, marker=style.marker, lw=style.linewidth, ms=style.markersize, zorder=3
    )
    if data.shape[0] > 1:
        ax.fill_between(x, low, high, color=style.color, alpha=0.13, lw=0, zorder=1)


def _task_value(task: str, key: str):
    def get(record: dict) -> float | None:
        entry = record.get("per_task", {}).get(task)
        if entry is None:
            return None
        return entry.get(key, entry.get("primary"))

    return get


def convergence(groups: Sequence[Group]) -> Figure:
    """Primary metric per round and task (mean over clients, worst client), each group with a seed band."""
    styles = group_styles(groups)
    tasks = all_tasks(groups)
    fig = _new_figure(3.6 * len(tasks) + 0.6, 6.2 + 0.25 * (len(groups) // 4))
    axes = fig.subplots(2, len(tasks), squeeze=False, sharex=True)
    for col, task in enumerate(tasks):
        for row, (key, what) in enumerate(
            (("primary", "mean over clients"), ("worst_primary", "worst client"))
        ):
            ax = axes[row, col]
            for g in groups:
                x, data = _series(g.jobs, _task_value(task, key))
                if np.isfinite(data).any():
                    _band(ax, x, data, styles[g.key])
            ax.set_title(f"{task_metric_title(task)}, {what}", fontsize=10)
            ax.set_ylabel(metric_name(task))
            ax.grid(alpha=0.3)
            ax.xaxis.get_major_locator().set_params(integer=True)
            if row == 1:
                ax.set_xlabel("round")
    fig.suptitle("Primary metric per round (line: mean over seeds, band: min–max over seeds)", fontsize=11)
    _legend(fig, groups, styles)
    return fig


def sim_time(groups: Sequence[Group]) -> Figure | None:
    """The convergence figure against simulated seconds instead of rounds (jobs with device profiles)."""
    timed = [g for g in groups if all("cumulative_sim_seconds" in j.records[-1] for j in g.jobs)]
    if not timed:
        return None
    styles = group_styles(groups)
    tasks = all_tasks(timed)
    fig = _new_figure(3.6 * len(tasks) + 0.6, 3.6 + 0.25 * (len(timed) // 4))
    axes = fig.subplots(1, len(tasks), squeeze=False)
    for col, task in enumerate(tasks):
        ax = axes[0, col]
        for g in timed:
            rounds, data = _series(g.jobs, _task_value(task, "primary"))
            _, seconds = _series(
                g.jobs, lambda r: r.get("cumulative_sim_seconds") if r.get("per_task") else None
            )
            if not np.isfinite(data).any() or seconds.shape != data.shape:
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                x = np.nanmean(seconds, axis=0)
            _band(ax, x, data, styles[g.key])
        ax.set_title(task_metric_title(task), fontsize=10)
        ax.set_ylabel(metric_name(task))
        ax.set_xlabel("simulated seconds")
        ax.grid(alpha=0.3)
    fig.suptitle("Primary metric against simulated time (line: mean over seeds, band: min–max)", fontsize=11)
    _legend(fig, timed, styles)
    return fig


def ablation_comparison(groups: Sequence[Group]) -> Figure:
    """Last-round metric per task as bars per group: mean over clients and worst client, std error bars."""
    styles = group_styles(groups)
    tasks = all_tasks(groups)
    width_per_group = 0.55
    fig = _new_figure(max(4.0, 0.75 * len(groups) + 1.2) * len(tasks), 4.6)
    axes = fig.subplots(1, len(tasks), squeeze=False)[0]
    x = np.arange(len(groups))
    for ax, task in zip(axes, tasks):
        for i, g in enumerate(groups):
            ts = g.per_task.get(task)
            if ts is None:
                continue
            color = styles[g.key].color
            for offset, stat, hatch, fill in ((-0.5, ts.mean, None, color), (0.5, ts.worst, "///", "white")):
                pos = x[i] + offset * width_per_group / 2
                ax.bar(
                    pos,
                    stat.mean,
                    width_per_group / 2,
                    yerr=stat.std,
                    color=fill,
                    edgecolor=color,
                    hatch=hatch,
                    linewidth=1.2,
                    capsize=2,
                    error_kw={"elinewidth": 0.8},
                )
                below = stat.mean < 0  # a negative bar (MCC) is labelled under its end
                ax.annotate(
                    f"{stat.mean:.2f}",
                    (pos, stat.mean - stat.std if below else stat.mean + stat.std),
                    xytext=(0, -2 if below else 2),
                    textcoords="offset points",
                    ha="center",
                    va="top" if below else "bottom",
                    rotation=90,
                    fontsize=7,
                )
        ax.set_xticks(x, [g.label for g in groups], rotation=35, ha="right", fontsize=8)
        ax.set_ylabel(metric_name(task))
        ax.set_title(f"{task_metric_title(task)} after the last round", fontsize=10)
        ax.axhline(0, color="black", lw=0.6)
        ax.grid(axis="y", alpha=0.3)
        ax.margins(y=0.2)
    fig.suptitle("Ablation comparison (bars: mean over seeds, error bars: std over seeds)", fontsize=11)
    key_handles = [
        Patch(facecolor="#777777", edgecolor="#777777", label="mean over the task's clients"),
        Patch(facecolor="white", edgecolor="#777777", hatch="///", label="worst client"),
    ]
    _bottom_legend(fig, key_handles)
    return fig


def eta_groups(groups: Sequence[Group]) -> dict[str, list[Group]]:
    """Per eta-using ablation and settings (`atlas`, or `atlas (fed.local_epochs=2)` when other settings
    split the jobs), its groups in eta order, where it was run at two or more etas."""
    sweeps: dict[str, list[Group]] = {}
    for ablation in ETA_ABLATIONS:
        for g in groups:
            if g.ablation == ablation and g.eta is not None:
                sweeps.setdefault(group_label((ablation, None, g.settings)), []).append(g)
    return {name: sorted(m, key=_eta) for name, m in sweeps.items() if len(m) >= 2}


def _eta(group: Group) -> float:
    """The eta of a group in an eta sweep (`eta_groups` keeps only groups that have one)."""
    assert group.eta is not None, group.label
    return group.eta


def eta_sweep(groups: Sequence[Group]) -> Figure | None:
    """Last-round metric against eta per task, with the other groups as reference lines; None below 2 etas.

    The axis is categorical (eta = 0 has no place on a log axis and the values run is what matters); each
    point keeps its group's shade, so it matches the same group's curve in the other figures. Sweeps of one
    ablation under different settings share the axis and the colour, and differ by marker.
    """
    sweeps = eta_groups(groups)
    if not sweeps:
        return None
    styles = group_styles(groups)
    tasks = all_tasks(groups)
    fig = _new_figure(4.0 * len(tasks) + 0.6, 4.6)
    axes = fig.subplots(1, len(tasks), squeeze=False)[0]
    swept = {id(g) for members in sweeps.values() for g in members}
    others = [g for g in groups if id(g) not in swept]
    etas = sorted({_eta(g) for members in sweeps.values() for g in members})
    line_colors = {name: ABLATION_COLORS.get(m[0].ablation, "#555555") for name, m in sweeps.items()}
    kinds = (("mean", "-", -0.05, "mean over clients"), ("worst", ":", 0.05, "worst client"))
    markers = {name: (("o", "v"), ("s", "^"), ("D", "<"), ("P", ">"))[i % 4] for i, name in enumerate(sweeps)}
    for ax, task in zip(axes, tasks):
        for name, members in sweeps.items():
            pos = np.array([etas.index(_eta(g)) for g in members])
            for (attr, ls, shift, _), marker in zip(kinds, markers[name]):
                stats = [getattr(g.per_task[task], attr) if task in g.per_task else None for g in members]
                means = np.array([s.mean if s else np.nan for s in stats])
                ax.plot(pos + shift, means, color=line_colors[name], ls=ls, lw=1.4)
                for p, g, stat in zip(pos, members, stats):
                    if stat is not None:
                        ax.errorbar(
                            p + shift,
                            stat.mean,
                            yerr=stat.std,
                            color=styles[g.key].color,
                            marker=marker,
                            ms=6,
                            capsize=3,
                        )
        ax.set_xticks(np.arange(len(etas)), [f"{eta:g}" for eta in etas])
        ax.set_xlim(-0.5, len(etas) - 0.5)
        for g in others:
            if task in g.per_task:
                ax.axhline(g.per_task[task].mean.mean, color=styles[g.key].color, ls="--", lw=1.2)
        ax.set_xlabel("eta (Laplacian mixing weight; categorical axis)")
        ax.set_ylabel(metric_name(task))
        ax.set_title(f"{task_metric_title(task)} after the last round", fontsize=10)
        ax.grid(alpha=0.3)
    fig.suptitle("Eta sweep (mean over seeds, error bars: std over seeds)", fontsize=11)
    handles = [
        Line2D([], [], color=line_colors[name], ls=ls, marker=marker, label=f"{name}, {what}")
        for name in sweeps
        for (_, ls, _, what), marker in zip(kinds, markers[name])
    ] + [
        Line2D([], [], color=styles[g.key].color, ls="--", label=f"{g.label}, mean over clients")
        for g in others
    ]
    _bottom_legend(fig, handles)
    return fig


def _client_ticks(job: Job, clients: Sequence[str]) -> list[str]:
    """`3 SST-2`: the client id with its true task, from the first metrics record."""
    info = job.records[0]["clients"] if job.records else {}
    return [f"{c} {task_title(info.get(str(c), {}).get('task', '?'))}" for c in clients]


def _shared_panels(
    groups: Sequence[Group], pick: Callable[[Job], tuple[np.ndarray, ...] | None]
) -> list[tuple[list[Group], Job, tuple[np.ndarray, ...]]]:
    """(groups, job, arrays) per distinct panel: the first seed of each group that `pick` finds data in,
    with groups whose arrays are identical merged into one panel (eta does not change the graph or ranks,
    so an eta sweep would otherwise repeat the same picture once per eta)."""
    panels: list[tuple[list[Group], Job, tuple[np.ndarray, ...]]] = []
    for g in groups:
        found = next(((j, d) for j in g.jobs if (d := pick(j)) is not None), None)
        if found is None:
            continue
        job, data = found
        for members, _, other in panels:
            if all(_same(a, b) for a, b in zip(other, data)):
                members.append(g)
                break
        else:
            panels.append(([g], job, data))
    return panels


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    if a.dtype.kind == "f" and b.dtype.kind == "f":
        return np.array_equal(a, b, equal_nan=True)
    return np.array_equal(a, b)


def _panel_title(members: Sequence[Group], job: Job, width: int = 60) -> str:
    """`local_only, atlas (eta=0, 0.1, 0.5), seed 0`: the groups sharing a panel, etas folded together
    (`atlas (eta=0.1, 0.5; fed.local_epochs=2)` where other settings split the groups)."""
    names: list[str | tuple] = []
    etas: dict[tuple, list[float]] = {}
    for g in members:
        if g.eta is None:
            names.append(g.label)
        else:
            base = (g.ablation, g.settings)
            if base not in etas:
                names.append(base)
            etas.setdefault(base, []).append(g.eta)
    shown = [
        n
        if isinstance(n, str)
        else f"{n[0]} (eta={', '.join(f'{e:g}' for e in etas[n])}"
        + (f"; {settings_text(n[1])})" if n[1] else ")")
        for n in names
    ]
    return "\n".join(textwrap.wrap(f"{', '.join(shown)}; seed {job.seed}", width))


def _adjacency_matrix(job: Job) -> tuple[np.ndarray] | None:
    matrix = (job.clustering or {}).get("adjacency")
    return (np.asarray(matrix, dtype=float),) if matrix else None


def adjacency(groups: Sequence[Group]) -> Figure | None:
    """The personalization graph, one panel per distinct graph; None when no job has one (not ATLAS)."""
    panels = _shared_panels(groups, _adjacency_matrix)
    if not panels:
        return None
    n = len(panels)
    cols = min(n, 3)
    rows = -(-n // cols)
    fig = _new_figure(4.6 * cols + 0.8, 4.6 * rows + 0.4)
    axes = fig.subplots(rows, cols, squeeze=False)
    image = None
    vmax = max(float(m[0].max()) for _, _, m in panels) or 1.0
    for ax, (members, job, (matrix,)) in zip(axes.flat, panels):
        clients = (job.clustering or {}).get("client_ids") or list(range(len(matrix)))
        image = ax.imshow(matrix, cmap="viridis", vmin=0.0, vmax=vmax)
        ticks = _client_ticks(job, [str(c) for c in clients])
        ax.set_xticks(range(len(ticks)), ticks, rotation=90, fontsize=7)
        ax.set_yticks(range(len(ticks)), ticks, fontsize=7)
        ax.set_xlabel("client l (neighbour)")
        ax.set_ylabel("client k")
        ax.set_title(_panel_title(members, job, 45), fontsize=9)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    assert image is not None  # there is at least one panel
    fig.colorbar(image, ax=axes, label="weight a_kl (each row sums to 1; diagonal 0)", shrink=0.8)
    fig.suptitle("Laplacian personalization graph (zero across clusters)", fontsize=11)
    return fig


def _rank_matrix(job: Job) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(ranks client × block, NaN where a client has none; split per client; row labels)."""
    clients = (job.allocation or {}).get("clients") or []
    if not clients:
        return None
    blocks = max((len(c.get("ranks") or []) for c in clients), default=0)
    if blocks == 0:
        return None
    ranks = np.full((len(clients), blocks), np.nan)
    splits = np.zeros(len(clients))
    for i, c in enumerate(clients):
        r = c.get("ranks") or []
        ranks[i, : len(r)] = r
        splits[i] = c.get("split", 0) if not c.get("dropped") else 0
    labels = [
        f"{c.get('client', i)} {task_title(str(c.get('task', '?')))} {c.get('device', '')}"
        + (" (dropped)" if c.get("dropped") else "")
        for i, c in enumerate(clients)
    ]
    return ranks, splits, np.asarray(labels)


def ranks(groups: Sequence[Group]) -> Figure | None:
    """Client × block LoRA ranks with the split point, one panel per distinct allocation."""
    panels = _shared_panels(groups, _rank_matrix)
    if not panels:
        return None
    all_ranks = np.concatenate([m[0][np.isfinite(m[0])] for _, _, m in panels])
    levels = sorted({int(r) for r in all_ranks})
    n = len(panels)
    cols = min(n, 2)
    rows = -(-n // cols)
    nclients = max(m[0].shape[0] for _, _, m in panels)
    fig = _new_figure(5.2 * cols + 1.0, (0.28 * nclients + 1.6) * rows + 0.5)
    axes = fig.subplots(rows, cols, squeeze=False)
    from matplotlib.colors import BoundaryNorm, ListedColormap

    cmap = ListedColormap([_viridis(i / max(1, len(levels) - 1)) for i in range(len(levels))]).with_extremes(
        bad="#dddddd"  # a dropped client's blocks
    )
    index = np.vectorize(lambda r: levels.index(int(r)) if np.isfinite(r) else np.nan)
    norm = BoundaryNorm(np.arange(len(levels) + 1) - 0.5, len(levels))
    image = None
    for ax, (members, job, (matrix, splits, labels)) in zip(axes.flat, panels):
        image = ax.imshow(index(matrix).astype(float), cmap=cmap, norm=norm, aspect="auto")
        for (i, b), r in np.ndenumerate(matrix):
            if np.isfinite(r):
                shade = levels.index(int(r)) / max(1, len(levels) - 1)
                ax.text(
                    b,
                    i,
                    f"{int(r)}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if shade < 0.6 else "black",
                )
        # the split: a step between the client's last block and the server's first
        xs, ys = [], []
        for i, s in enumerate(splits):
            xs += [s - 0.5, s - 0.5]
            ys += [i - 0.5, i + 0.5]
        ax.plot(xs, ys, color="black", lw=2.2)
        ax.set_xticks(range(matrix.shape[1]))
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
        ax.set_xlabel("transformer block (left of the black step: client; right: server)")
        ax.set_title(_panel_title(members, job), fontsize=9)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    assert image is not None  # there is at least one panel
    bar = fig.colorbar(image, ax=axes, shrink=0.8, ticks=range(len(levels)))
    bar.ax.set_yticklabels([str(r) for r in levels])
    bar.set_label("LoRA rank")
    fig.suptitle("LoRA rank per client and block (Phase 2 allocation)", fontsize=11)
    return fig


def _viridis(t: float) -> tuple[float, float, float, float]:
    from matplotlib import colormaps

    return colormaps["viridis"](0.1 + 0.8 * t)


def communication(groups: Sequence[Group]) -> Figure:
    """MB per round per group (seed band), and each group's total per job split into upload and download.

    Byte counts are deterministic and often identical across groups (every ablation that aggregates moves
    the same adapters), so the per-round points are dodged sideways and the totals get their own bars.
    """
    styles = group_styles(groups)
    fig = _new_figure(11.0, 4.6 + 0.25 * (len(groups) // 4))
    per_round, totals = fig.subplots(1, 2, width_ratios=(1.2, 1.0))
    dodge = 0.25 / max(1, len(groups) - 1)
    for i, g in enumerate(groups):
        x, data = _series(g.jobs, lambda r: (r.get("upload_bytes", 0) + r.get("download_bytes", 0)) / MB)
        _band(per_round, x + (i - (len(groups) - 1) / 2) * dodge, data, styles[g.key])
    per_round.set_xlabel("round (groups side by side)")
    per_round.set_ylabel("MB per round (upload + download, all clients)")
    per_round.set_title("Bytes moved per round", fontsize=10)
    per_round.grid(alpha=0.3)
    per_round.xaxis.get_major_locator().set_params(integer=True)
    per_round.set_ylim(bottom=0)

    y = np.arange(len(groups))[::-1]
    for yi, g in zip(y, groups):
        color = styles[g.key].color
        up, down = g.upload_bytes.mean / MB, g.download_bytes.mean / MB
        totals.barh(yi, up, color=color, edgecolor=color)
        totals.barh(yi, down, left=up, color="white", edgecolor=color, hatch="///")
        totals.annotate(
            f"{up + down:,.1f}",
            (up + down, yi),
            xytext=(3, 0),
            textcoords="offset points",
            va="center",
            fontsize=7,
        )
    totals.set_yticks(y, [g.label for g in groups], fontsize=8)
    totals.set_xlabel("MB per job (mean over seeds)")
    totals.set_title("Total per job: upload (solid) + download (hatched)", fontsize=10)
    totals.grid(axis="x", alpha=0.3)
    totals.margins(x=0.15)
    fig.suptitle("Communication (line: mean over seeds, band: min–max over seeds)", fontsize=11)
    _legend(fig, groups, styles)
    return fig


def draw_all(groups: Sequence[Group]) -> dict[str, Figure]:
    """Every figure the groups have data for, by file stem (the eta sweep needs >= 2 etas of ATLAS)."""
    if not groups:
        return {}
    drawn = {
        "convergence": convergence(groups),
        "sim_time": sim_time(groups),
        "ablations": ablation_comparison(groups),
        "eta_sweep": eta_sweep(groups),
        "adjacency": adjacency(groups),
        "ranks": ranks(groups),
        "communication": communication(groups),
    }
    return {name: fig for name, fig in drawn.items() if fig is not None}


# The figures that plot a primary metric (the others, bytes, graph and ranks, do not depend on the
# evaluation set).
METRIC_FIGURES = ("convergence", "sim_time", "ablations", "eta_sweep")


def mark_eval_set(figures: dict[str, Figure], text: str) -> None:
    """Add `text` as a second line to the title of each figure that plots a metric, so a PNG of the
    personal-set report says so on its own."""
    for name, fig in figures.items():
        if name in METRIC_FIGURES:
            title = fig.get_suptitle()
            fig.suptitle(f"{title}\n{text}" if title else text, fontsize=11)


def save_all(figures: dict[str, Figure], out_dir: Path) -> list[Path]:
    """Write each figure to out_dir/<name>.png, and remove report figures of an earlier run that this one
    did not draw (an eta sweep from before a job was deleted would otherwise look current)."""
    for stale in set(CAPTIONS) - set(figures):
        (out_dir / f"{stale}.png").unlink(missing_ok=True)
    if figures:
        out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, fig in figures.items():
        path = out_dir / f"{name}.png"
        fig.savefig(path, dpi=DPI, bbox_inches="tight", pad_inches=0.15)
        paths.append(path)
    return paths
