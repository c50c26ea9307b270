"""Figures for the landmark/detection attack section and the metric-vs-budget curves.

Kept apart from ``task_section.py`` so the section reads as what is shown and why, and these
functions as how it is drawn. Every function takes plain arrays and numbers (no store, no
model), returns a ``matplotlib.figure.Figure`` built without pyplot (Agg, no global state), and
draws nothing it does not also label: a reader of a mailed report has no other key.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from medrobust.report.plots import to_rgb_uint8

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

#: marker styles for landmarks: truth, clean prediction, adversarial prediction
TRUTH_STYLE = {"marker": "o", "s": 46, "facecolors": "none", "edgecolors": "#2ca02c",
               "linewidths": 1.6}
CLEAN_STYLE = {"marker": "x", "s": 36, "c": "#1f77b4", "linewidths": 1.6}
ADV_STYLE = {"marker": "+", "s": 60, "c": "#d62728", "linewidths": 1.8}
#: detection boxes: truth solid, clean dashed, adversarial dotted, the class gives the colour
BOX_STYLES = {"truth": "-", "clean": "--", "adversarial": ":"}


def class_colour(label: int) -> Any:
    """One colour per class (tab10, cycling): the same class has the same colour in every panel."""
    from matplotlib import colormaps

    return colormaps["tab10"](int(label) % 10)


def _blank(ax: Axes) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def _show(ax: Axes, image: np.ndarray, title: str) -> None:
    img = to_rgb_uint8(image)
    ax.imshow(img, interpolation="nearest")
    ax.set_xlim(-0.5, img.shape[1] - 0.5)
    ax.set_ylim(img.shape[0] - 0.5, -0.5)
    ax.set_title(title, fontsize=9)
    _blank(ax)


def perturbation_axes(ax: Axes, delta: np.ndarray) -> str:
    """Draw the channel-mean perturbation (C,H,W on the [0,1] scale) amplified to a symmetric
    colour range and return the title that states the scale, since the true-scale perturbation
    is invisible and an unstated amplification would mislead."""
    d = np.asarray(delta, dtype=np.float32)
    signed = d.mean(axis=0) if d.ndim == 3 else d
    peak = float(np.abs(d).max())
    shown = peak if peak > 0 else 1.0
    image = ax.imshow(signed, cmap="coolwarm", vmin=-shown, vmax=shown, interpolation="nearest")
    cbar = ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.02)
    cbar.ax.tick_params(labelsize=7)
    gain = 0.5 / shown
    title = (f"perturbation (mean over channels)\n\u00b1{255 * peak:.2f}/255 = "
             f"\u00b1{peak:.4f} fills the colours (\u00d7{gain:.0f})")
    ax.set_title(title, fontsize=8)
    _blank(ax)
    return title


def landmark_panel(image: np.ndarray, adversarial: np.ndarray | None, truth: np.ndarray,
                   clean_pred: np.ndarray, adv_pred: np.ndarray, delta: np.ndarray | None,
                   title: str) -> Figure:
    """Clean image with truth and clean prediction | attacked image with truth and adversarial
    prediction (a line from each true landmark to where the attack moved it) | perturbation.

    Points are (x, y) in input pixels. Without ``adversarial``/``delta`` (the attack could not
    be replayed) the adversarial prediction is drawn on the clean image and the perturbation
    panel is left out, and the panel title says so.
    """
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    cols = 3 if delta is not None else 2
    fig = Figure(figsize=(3.6 * cols, 3.6), layout="constrained")
    axes = fig.subplots(1, cols)
    t, c, a = (np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in (truth, clean_pred,
                                                                         adv_pred))
    _show(axes[0], image, "clean image:\ntruth and clean prediction")
    axes[0].scatter(t[:, 0], t[:, 1], **TRUTH_STYLE)
    axes[0].scatter(c[:, 0], c[:, 1], **CLEAN_STYLE)
    _show(axes[1], image if adversarial is None else adversarial,
          "attacked image:\ntruth and adversarial prediction" if adversarial is not None
          else "clean image:\ntruth and adversarial prediction")
    for (tx, ty), (ax_, ay) in zip(t, a, strict=False):
        axes[1].plot([tx, ax_], [ty, ay], color="#d62728", linewidth=0.8, alpha=0.8)
    axes[1].scatter(t[:, 0], t[:, 1], **TRUTH_STYLE)
    axes[1].scatter(a[:, 0], a[:, 1], **ADV_STYLE)
    if delta is not None:
        perturbation_axes(axes[2], delta)
    handles = [Line2D([], [], linestyle="none", marker="o", markerfacecolor="none",
                      markeredgecolor="#2ca02c", label="ground truth"),
               Line2D([], [], linestyle="none", marker="x", color="#1f77b4",
                      label="clean prediction"),
               Line2D([], [], linestyle="none", marker="+", color="#d62728", markersize=9,
                      label="adversarial prediction"),
               Line2D([], [], color="#d62728", linewidth=0.8, label="displacement")]
    fig.legend(handles=handles, loc="outside lower center", ncol=4, fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=10)
    return fig


def _boxes(ax: Axes, boxes: np.ndarray, labels: np.ndarray, style: str,
           scores: np.ndarray | None = None) -> None:
    from matplotlib.patches import Rectangle

    for k, (x0, y0, x1, y1) in enumerate(np.asarray(boxes, dtype=np.float64).reshape(-1, 4)):
        colour = class_colour(int(labels[k]))
        ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False,
                               edgecolor=colour, linestyle=style,
                               linewidth=1.8 if style == "-" else 1.4))
        if scores is not None:
            ax.text(x0 - 0.5, y0 - 0.5, f"{float(scores[k]):.2f}", fontsize=6, color="white",
                    va="bottom", bbox={"facecolor": colour, "edgecolor": "none", "pad": 0.5})


def detection_panel(image: np.ndarray, adversarial: np.ndarray | None,
                    truth: tuple[np.ndarray, np.ndarray], clean: np.ndarray, adv: np.ndarray,
                    class_names: Sequence[str], threshold: float, delta: np.ndarray | None,
                    title: str) -> Figure:
    """Truth boxes | clean detections | adversarial detections | perturbation.

    ``clean`` and ``adv`` are rows (x0, y0, x1, y1, score, label) as the campaign stores them;
    only those scoring at least ``threshold`` are drawn (with their score), so the panel shows
    what a user of the detector would act on. Boxes take their class's colour; the line style
    says whose box it is.
    """
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    cols = 4 if delta is not None else 3
    fig = Figure(figsize=(3.3 * cols, 3.7), layout="constrained")
    axes = fig.subplots(1, cols)
    t_boxes, t_labels = truth
    count = len(t_labels)
    _show(axes[0], image, f"ground truth: {count} box{'' if count == 1 else 'es'}\n"
                          "(on the clean image)")
    _boxes(axes[0], t_boxes, t_labels, BOX_STYLES["truth"])
    seen = {int(v) for v in np.asarray(t_labels).reshape(-1)}
    for ax, dets, img, who in ((axes[1], clean, image, "clean"),
                               (axes[2], adv, image if adversarial is None else adversarial,
                                "adversarial")):
        d = np.asarray(dets, dtype=np.float64).reshape(-1, 6)
        d = d[d[:, 4] >= threshold]
        where = "attacked image" if who == "adversarial" and adversarial is not None else \
            "clean image"
        _show(ax, img, f"{who} detections \u2265 {threshold:g}: {len(d)}\n(on the {where})")
        _boxes(ax, d[:, :4], d[:, 5].astype(np.int64), BOX_STYLES[who], d[:, 4])
        seen |= {int(v) for v in d[:, 5]}
    if delta is not None:
        perturbation_axes(axes[3], delta)
    names = list(class_names)
    handles: list[Any] = [Patch(facecolor=class_colour(k), edgecolor="none",
                                label=names[k] if k < len(names) else f"class {k}")
                          for k in sorted(seen)]
    handles += [Line2D([], [], color="black", linestyle=s, label=w)
                for w, s in BOX_STYLES.items()]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 7),
               fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=10)
    return fig


# -- metric vs budget ---------------------------------------------------------------------------

@dataclass
class CurvePoint:
    """One run on a curve: its budget, the metric before and after, and how many images."""

    eps: float
    value: float
    clean: float | None
    n: int
    run_id: int


@dataclass
class Curve:
    """Runs that differ only in their budget: one attack/norm on one model and dataset."""

    task: str
    metric: str
    metric_label: str
    norm: str
    label: str
    points: list[CurvePoint] = field(default_factory=list)
    #: the metric's best possible value when it has one (1 for shares), so axes show the range
    upper: float | None = None

    @property
    def n_text(self) -> str:
        ns = sorted({p.n for p in self.points})
        if not ns:
            return "n = 0"
        return f"n = {ns[0]}" if len(ns) == 1 else f"n = {ns[0]}\u2013{ns[-1]}"


def budget_x(eps: float, norm: str) -> float:
    """Where a budget sits on the x axis: Linf in grey levels (k of k/255), L2 as is."""
    return eps * 255 if norm == "linf" else eps


def budget_text(eps: float, norm: str) -> str:
    """'8/255' for Linf (the way papers quote it), '0.5' for L2 on the [0,1] scale."""
    return f"{eps * 255:.3g}/255" if norm == "linf" else f"{eps:.3g}"


AXIS_LABELS = {"linf": "Linf budget \u03b5 (k/255)", "l2": "L2 budget \u03b5 (images on [0,1])"}


def budget_figure(curves: Sequence[Curve], title: str) -> Figure:
    """Rows: the task's metrics; columns: the norms present (their budgets share no axis).

    Each curve is one line with a marker per run, its label carrying the sample size; its clean
    value (no attack) is a dashed line of the same colour, so the drop is read off directly.
    """
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    metrics = list(dict.fromkeys(c.metric for c in curves))
    labels = {c.metric: c.metric_label for c in curves}
    norms = [n for n in ("linf", "l2") if any(c.norm == n for c in curves)]
    norms += sorted({c.norm for c in curves} - set(norms))
    fig = Figure(figsize=(5.0 * len(norms), 3.4 * len(metrics) + 0.4), layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(metrics), len(norms), squeeze=False))
    colours: dict[str, Any] = {}
    for r, metric in enumerate(metrics):
        for c, norm in enumerate(norms):
            ax = axes[r, c]
            mine = [cv for cv in curves if cv.metric == metric and cv.norm == norm]
            for cv in mine:
                colour = colours.setdefault(cv.label, f"C{len(colours) % 10}")
                pts = sorted(cv.points, key=lambda p: p.eps)
                ax.plot([budget_x(p.eps, norm) for p in pts], [p.value for p in pts],
                        marker="o", color=colour, label=f"{cv.label} ({cv.n_text})")
                cleans = [p.clean for p in pts if p.clean is not None]
                if cleans:
                    ax.axhline(float(np.mean(cleans)), color=colour, linestyle="--",
                               linewidth=0.9)
            # from budget 0, where the dashed clean lines start, so a lone point reads too
            ax.set_xlim(left=0, right=max([budget_x(p.eps, norm) for cv in mine
                                           for p in cv.points] + [1e-9]) * 1.08)
            upper = max((cv.upper for cv in mine if cv.upper is not None), default=None)
            ax.set_ylim(bottom=0, top=None if upper is None else upper * 1.03)
            ax.set_xlabel(AXIS_LABELS.get(norm, f"{norm} budget"))
            ax.set_ylabel(labels[metric])
            ax.set_title(f"{labels[metric]} vs {norm} budget", fontsize=10)
            ax.grid(True, alpha=0.3)
            if mine:
                handles, names = ax.get_legend_handles_labels()
                handles.append(Line2D([], [], color="grey", linestyle="--"))
                names.append("clean (no attack)")
                ax.legend(handles, names, fontsize=7)
            else:
                ax.text(0.5, 0.5, "no runs", ha="center", va="center",
                        transform=ax.transAxes, color="grey")
    fig.suptitle(title, fontsize=11)
    return fig


def budget_alt(curves: Sequence[Curve], what: str) -> str:
    """Alt text that carries the plotted numbers, so the chart is not lost without sight."""
    parts = []
    for cv in curves:
        pts = sorted(cv.points, key=lambda p: p.eps)
        values = ", ".join(f"{p.value:.3g} at {budget_text(p.eps, cv.norm)}" for p in pts)
        parts.append(f"{cv.metric_label}, {cv.label} ({cv.n_text}): {values}")
    return f"Line chart of {what} against the attack budget. " + "; ".join(parts)


def classifier_panel(examples: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray, str, str]],
                     title: str) -> Figure:
    """One row per image: clean | adversarial | amplified perturbation.

    ``examples``: (clean (H,W,C) 0-255, adversarial (H,W,C) 0-255, delta (C,H,W) on [0,1],
    clean caption, adversarial caption). The perturbation is invisible at true scale, so it is
    amplified and its true range written on the panel (see ``perturbation_axes``).
    """
    from matplotlib.figure import Figure

    rows = max(len(examples), 1)
    fig = Figure(figsize=(8.4, 2.9 * rows), layout="constrained")
    axes = fig.subplots(rows, 3, squeeze=False)
    for r, (clean, adv, delta, clean_text, adv_text) in enumerate(examples):
        _show(axes[r][0], clean, clean_text)
        _show(axes[r][1], adv, adv_text)
        perturbation_axes(axes[r][2], delta)
    fig.suptitle(title, fontsize=10)
    return fig
