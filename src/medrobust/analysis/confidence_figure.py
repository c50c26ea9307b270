"""The paper's Figure 5 panels: the image beside its min and max one-pixel score maps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FormatStrFormatter

from medrobust.analysis.confidence_map import ConfidenceMap

#: colour scales of the three maps: one absolute 0-1 scale shared by all of them (so two
#: images, or two runs, can be compared by colour alone), or each map stretched to its own range
SCALES = ("absolute", "auto")


def confidence_figure(cmap: ConfidenceMap, image: np.ndarray, title: str = "",
                      scale: str = "absolute") -> Figure:
    """Image | min map | max map | mean map, the best grid attack marked with a ring.

    ``scale="absolute"`` (default) draws the three maps on one labelled 0-1 score scale with a
    single colour bar: the same colour means the same score in every panel and every report,
    which a reader comparing images assumes. ``scale="auto"`` stretches each map to its own
    range (with its own bar), which shows structure in maps that a confident model keeps
    within 1e-4 of 1 but no longer lets colours be compared across panels.
    """
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {', '.join(SCALES)}, got {scale!r}")
    fig = Figure(figsize=(13, 3.6), layout="constrained")
    axes = fig.subplots(1, 4)
    shown = image[:, :, 0] if image.shape[2] == 1 else image
    axes[0].imshow(shown, cmap="gray" if image.shape[2] == 1 else None, vmin=0, vmax=255)
    axes[0].set_title(f"image ({cmap.score_name} = {cmap.clean_score:.4f})", fontsize=9)
    best = cmap.strongest_change()
    n = len(_levels(cmap.step))
    c = cmap.argmin_colour.shape[2]
    im = None
    for ax, data, name in ((axes[1], cmap.min, "min"), (axes[2], cmap.max, "max"),
                           (axes[3], cmap.mean, "mean")):
        limits = {"vmin": 0.0, "vmax": 1.0} if scale == "absolute" else {}
        im = ax.imshow(data, cmap="magma", interpolation="nearest", **limits)
        ax.set_title(f"{name} {cmap.score_name} over {n}^{c} = {n ** c:,} colours", fontsize=9)
        if scale == "auto":
            bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
            bar.set_label(f"{cmap.score_name} (own range)", fontsize=8)
            # Confident models put whole maps within 1e-4 of 1: plain decimals with just
            # enough digits read better than matplotlib's "1e-5 + 9.998e-1" offset notation.
            bar.formatter = FormatStrFormatter(f"%.{_digits(data)}f")
            bar.update_ticks()
    if scale == "absolute" and im is not None:
        bar = fig.colorbar(im, ax=list(axes[1:]), fraction=0.02, pad=0.01)
        bar.set_label(f"{cmap.score_name} (absolute scale, 0-1, shared)", fontsize=8)
        bar.formatter = FormatStrFormatter("%.1f")
        bar.update_ticks()
    for ax in axes:
        ax.scatter([best["x"]], [best["y"]], s=90, facecolors="none", edgecolors="cyan",
                   linewidths=1.5)
        ax.set_xticks([])
        ax.set_yticks([])
    verdict = ("one-pixel robust on this grid" if cmap.robust else
               f"broken at x={best['x']}, y={best['y']} by colour {best['colour']} "
               f"({best['successful_pixels']} vulnerable pixels)")
    fig.suptitle(f"{title}  {verdict}".strip(), fontsize=10)
    return fig


def save_confidence_figure(cmap: ConfidenceMap, image: np.ndarray, path: str | Path,
                           title: str = "", scale: str = "absolute") -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    confidence_figure(cmap, image, title, scale).savefig(path, dpi=110)
    return path


def _digits(data: np.ndarray) -> int:
    """Decimals that tell the colour bar's ticks apart for this map's range."""
    finite = data[np.isfinite(data)]
    spread = float(finite.max() - finite.min()) if finite.size else 1.0
    return int(np.clip(np.ceil(-np.log10(max(spread, 1e-12))) + 1, 2, 8))


def _levels(step: int) -> list[int]:
    from medrobust.analysis.confidence_map import colour_levels

    return colour_levels(step)
