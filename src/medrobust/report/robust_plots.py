"""Figures of the adversarial-training section: metric-vs-budget curves and margin histograms.

Kept apart from ``robust_section`` so the section reads as "what is shown and why" and this file
as "how it is drawn". Every figure has an alt text builder next to it that carries the plotted
numbers, so the page says the same thing to a reader who cannot see the chart.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from medrobust.report.names import budget_text
from medrobust.report.robust_data import (
    ATTACK_NAMES,
    Evaluated,
    Group,
    cell_rms,
    formatter,
    metric_name,
    metric_unit,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

#: bins of the final-margin histogram drawn from the margins file
MARGIN_BINS = 20


# -- metric vs budget -----------------------------------------------------------------------------

@dataclass
class Line:
    """One model's points under one attack and norm; budget 0 is its clean score."""

    label: str
    clean: float | None
    points: dict[float, float] = field(default_factory=dict)


def curve_lines(group: Group) -> dict[tuple[str, str], list[Line]]:
    """(attack, norm) -> one line per model, in table order. A model evaluated in several budget
    sets contributes every budget it has (the run with more images wins a shared budget)."""
    panels: dict[tuple[str, str], dict[str, Line]] = {}
    for bset in group.sets:
        for a in bset.attacks:
            panels.setdefault((a, bset.norm), {})
    for m in group.models:
        runs = sorted((mm for s in group.sets for mm in s.models if mm.model_dir == m.model_dir),
                      key=lambda mm: (mm.images, mm.run["id"]))
        for mm in runs:  # ascending, so the run with the most images is written last
            for c in mm.summary.get("cells") or []:
                if c.get("attacked") is None:
                    continue
                key = (str(c["attack"]), str(c["norm"]))
                line = panels.setdefault(key, {}).setdefault(m.label, Line(m.label, None))
                line.points[float(c["eps"])] = float(c["attacked"])
                if mm.summary.get("clean") is not None:
                    line.clean = float(mm.summary["clean"])
    return {k: list(v.values()) for k, v in panels.items() if v}


def rms_factor(group: Group) -> float | None:
    """Grey levels of per-pixel RMS per unit of L2 budget, from the protocol's own budget
    texts (computed from the evaluated images' size)."""
    ratios = [rms / float(c["eps"]) for m in group.models for c in m.summary.get("cells") or []
              if c.get("norm") == "l2" and (rms := cell_rms(c)) is not None and c.get("eps")]
    return statistics.median(ratios) if ratios else None


def _shown(metric: str, value: float) -> float:
    return 100 * value if metric == "accuracy" else value


def _x(eps: float, norm: str) -> float:
    return eps * 255 if norm == "linf" else eps


def _x_label(norm: str) -> str:
    return "Linf budget (k/255 grey levels)" if norm == "linf" else \
        "L2 budget (image on the [0,1] scale)"


def _rms_axis(ax: Axes, factor: float | None) -> None:
    """A second x axis on top: the same L2 budgets as per-pixel RMS in grey levels."""
    if factor is None or not factor > 0:
        return
    top = ax.secondary_xaxis("top", functions=(lambda x: x * factor, lambda x: x / factor))
    top.set_xlabel("per-pixel RMS (k/255 grey levels)", fontsize=8)
    top.tick_params(labelsize=8)


def curve_figure(group: Group) -> Figure:
    """One panel per attack (and norm), one line per model from its clean score at budget 0."""
    from matplotlib.figure import Figure

    panels = curve_lines(group)
    keys = list(panels)
    cols = min(len(keys), 3)
    rows = math.ceil(len(keys) / cols)
    fig = Figure(figsize=(4.6 * cols, 3.7 * rows + 0.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    metric, unit = group.metric, group.unit
    y_label = f"{metric_name(metric)} ({metric_unit(metric, unit)})"
    factor = rms_factor(group)
    colours = {m.label: f"C{i % 10}" for i, m in enumerate(group.models)}
    for ax, (attack, norm) in zip(axes, keys, strict=False):
        for line in panels[(attack, norm)]:
            budgets = sorted(line.points)
            xs = ([0.0] if line.clean is not None else []) + [_x(e, norm) for e in budgets]
            ys = ([_shown(metric, line.clean)] if line.clean is not None else []) + \
                [_shown(metric, line.points[e]) for e in budgets]
            ax.plot(xs, ys, marker="o", color=colours.get(line.label), label=line.label)
        ax.set_xlim(left=0)
        if metric != "mre":
            ax.set_ylim(bottom=0, top=(100 if metric == "accuracy" else 1) * 1.03)
        else:
            ax.set_ylim(bottom=0)
        ax.set_xlabel(_x_label(norm))
        ax.set_ylabel(y_label)
        ax.set_title(f"{ATTACK_NAMES.get(attack, attack)} ({norm.upper() if norm == 'l2' else 'Linf'})",
                     fontsize=10)
        ax.grid(True, alpha=0.3)
        if norm == "l2":
            _rms_axis(ax, factor)
        ax.legend(fontsize=7, loc="best")
    for ax in axes[len(keys):]:
        ax.set_visible(False)
    return fig


def curve_alt(group: Group) -> str:
    """The curves in words: per attack, each model's score from budget 0 on."""
    fmt = formatter(group.metric)
    parts = []
    for (attack, norm), lines in curve_lines(group).items():
        text = "; ".join(
            f"{ln.label}: " + ", ".join(
                ([f"{fmt(ln.clean)} clean"] if ln.clean is not None else []) +
                [f"{fmt(ln.points[e])} at {budget_text(norm, e)}" for e in sorted(ln.points)])
            for ln in lines)
        parts.append(f"{ATTACK_NAMES.get(attack, attack)}: {text}")
    return (f"Line chart of {metric_name(group.metric)} against the attack budget, one line per "
            "model. " + ". ".join(parts) + ".")


# -- margins --------------------------------------------------------------------------------------

@dataclass
class MarginData:
    """The final margins as a histogram and the mean margin per epoch (epoch 0: the start D)."""

    counts: list[int]
    edges: list[float]
    final_mean: float
    epochs: list[int]
    means: list[float]
    lows: list[float]
    highs: list[float]
    source: str
    factor: float | None
    shape: list[int] | None

    @property
    def scale_text(self) -> str:
        if self.factor is None:
            return "the per-pixel RMS is not recorded (no image shape in the checkpoint)"
        dims = "\u00d7".join(str(s) for s in self.shape or [])
        return (f"per-pixel RMS in grey levels = L2 \u00d7 {self.factor:.3g} "
                f"({dims} images; the top axis)")


def margin_data(model: Evaluated) -> MarginData | None:
    """The margins of an adaptive-margin checkpoint: its margins file when written (every
    image's final margin), else the last epoch's histogram in its history."""
    robust = model.robust
    history = [e for e in (model.meta or {}).get("history") or [] if e.get("margins")]
    shape = (robust.get("scales") or {}).get("image_shape")
    factor = 255 / math.sqrt(math.prod(shape)) if shape else None
    counts: list[int] | None = None
    edges: list[float] = []
    final_mean = None
    source = ""
    path = Path(model.model_dir) / str(robust.get("margins_file") or "")
    if robust.get("margins_file") and path.is_file():
        try:
            from medrobust.training.robust.margins import Margins

            values = Margins.load(path).values.numpy()
        except Exception:
            values = None
        if values is not None and values.size:
            top = max(float(values.max()), float(robust.get("delta") or 0), 1e-12)
            c, e = np.histogram(values, bins=MARGIN_BINS, range=(0.0, top))
            counts, edges = [int(v) for v in c], [float(v) for v in e]
            final_mean = float(values.mean())
            source = f"final margins from {path.name}, {values.size} training images"
    if counts is None:
        last = robust.get("margins") or (history[-1]["margins"] if history else None)
        if not last or not last.get("counts"):
            return None
        counts, edges = [int(v) for v in last["counts"]], [float(v) for v in last["edges"]]
        final_mean = float(last["mean"])
        source = "final margins from the last epoch's histogram in the checkpoint's history"
    delta = robust.get("delta")
    epochs, means, lows, highs = [], [], [], []
    if delta is not None:
        epochs, means, lows, highs = [0], [float(delta)], [float(delta)], [float(delta)]
    for i, e in enumerate(history, start=1):
        epochs.append(int(e.get("epoch", i)))
        means.append(float(e["margins"]["mean"]))
        lows.append(float(e["margins"].get("min", e["margins"]["mean"])))
        highs.append(float(e["margins"].get("max", e["margins"]["mean"])))
    return MarginData(counts, edges, float(final_mean), epochs, means, lows, highs, source,
                      factor, list(shape) if shape else None)


def margin_figure(label: str, data: MarginData) -> Figure:
    """Left: the final margins' histogram; right: the mean margin per epoch (min-max band)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(9.6, 3.6), layout="constrained")
    left, right = fig.subplots(1, 2)
    widths = np.diff(data.edges)
    left.bar(data.edges[:-1], data.counts, width=widths, align="edge", color="C3",
             edgecolor="white")
    left.axvline(data.final_mean, color="black", linestyle="--", linewidth=1,
                 label=f"mean {data.final_mean:.3g}")
    left.set_xlabel("margin: L2 budget (image on the [0,1] scale)")
    left.set_ylabel("training images")
    left.set_title("Final margins", fontsize=10)
    left.legend(fontsize=8)
    _rms_axis(left, data.factor)
    if data.epochs:
        right.plot(data.epochs, data.means, marker="o", color="C3", label="mean margin")
        right.fill_between(data.epochs, data.lows, data.highs, color="C3", alpha=0.15,
                           label="min to max")
        right.legend(fontsize=8)
    right.xaxis.set_major_locator(MaxNLocator(integer=True))
    right.set_xlabel("epoch (0: the start, D)")
    right.set_ylabel("margin: L2 budget (image on [0,1])")
    right.set_title("Mean margin per epoch", fontsize=10)
    right.set_ylim(bottom=0)
    right.grid(True, alpha=0.3)
    if data.factor:
        f = data.factor
        other = right.secondary_yaxis("right", functions=(lambda y: y * f, lambda y: y / f))
        other.set_ylabel("per-pixel RMS (k/255)", fontsize=8)
    fig.suptitle(label, fontsize=10)
    return fig


def margin_alt(label: str, data: MarginData) -> str:
    """The histogram and the growth in words."""
    bins = ", ".join(f"{c} in {lo:.3g}-{hi:.3g}" for c, lo, hi in
                     zip(data.counts, data.edges[:-1], data.edges[1:], strict=False) if c)
    growth = ", ".join(f"epoch {e}: {m:.3g}" for e, m in zip(data.epochs, data.means,
                                                            strict=False))
    rms = "" if data.factor is None else \
        f" (RMS {data.final_mean * data.factor:.3g}/255 per pixel)"
    return (f"Histogram of the final L2 margins of {label}: mean {data.final_mean:.3g}{rms}; "
            f"training images per margin range: {bins}. Mean margin per epoch: {growth}.")
