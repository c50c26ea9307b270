"""The paper's Figure 5 panels: the image beside its min and max one-pixel score maps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from medrobust.analysis.confidence_map import ConfidenceMap


def confidence_figure(cmap: ConfidenceMap, image: np.ndarray, title: str = "") -> Figure:
    """Image | min map | max map | mean map, the best grid attack marked with a ring."""
    fig = Figure(figsize=(13, 3.6), layout="constrained")
    axes = fig.subplots(1, 4)
    shown = image[:, :, 0] if image.shape[2] == 1 else image
    axes[0].imshow(shown, cmap="gray" if image.shape[2] == 1 else None, vmin=0, vmax=255)
    axes[0].set_title(f"image ({cmap.score_name} = {cmap.clean_score:.4f})", fontsize=9)
    best = cmap.best_attack()
    for ax, data, name in ((axes[1], cmap.min, "min"), (axes[2], cmap.max, "max"),
                           (axes[3], cmap.mean, "mean")):
        im = ax.imshow(data, cmap="magma", interpolation="nearest")
        n = len(_levels(cmap.step))
        c = cmap.argmin_colour.shape[2]
        ax.set_title(f"{name} {cmap.score_name} over {n}^{c} = {n ** c:,} colours", fontsize=9)
        fig.colorbar(im, ax=ax, shrink=0.8)
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
                           title: str = "") -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    confidence_figure(cmap, image, title).savefig(path, dpi=110)
    return path


def _levels(step: int) -> list[int]:
    from medrobust.analysis.confidence_map import colour_levels

    return colour_levels(step)
