"""The defence picture: clean / attacked / denoised / difference, one row per example.

A reader should see what a defence does to an attacked image and to everything else: the
difference columns show |image - clean| (largest channel, amplified), so a defence that only
removes the attack pixel leaves a dark difference map, while one that blurs lights up everywhere.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from medrobust.errors import ConfigError
from medrobust.utils.images import as_float_batch, to_rgb_uint8

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: Differences are multiplied by this before display, so a 1/4 change is shown at full scale.
DIFF_GAIN = 4.0


def difference_map(clean: np.ndarray, other: np.ndarray, gain: float = DIFF_GAIN) -> np.ndarray:
    """uint8 (H,W) map of max-over-channels |other - clean| * gain (clipped), for display."""
    a, _ = as_float_batch(clean)
    b, _ = as_float_batch(other)
    d = np.abs(b[0] - a[0]).max(axis=-1)
    return np.clip(np.rint(d * gain * 255.0), 0, 255).astype(np.uint8)


def _u8(image: np.ndarray) -> np.ndarray:
    x, _ = as_float_batch(image)
    return np.rint(x[0] * 255.0).astype(np.uint8)


def defence_grid_figure(clean: np.ndarray, attacked: np.ndarray,
                        denoised: Mapping[str, np.ndarray],
                        row_titles: Sequence[str] | None = None, cell: float = 1.25) -> Figure:
    """A grid figure: per row clean, attacked, |attacked - clean|, then per defence its output
    and |output - clean|. ``clean``/``attacked``: (N,H,W,C); ``denoised``: name -> (N,H,W,C).
    """
    from matplotlib.figure import Figure

    n = len(clean)
    if len(attacked) != n or any(len(v) != n for v in denoised.values()):
        raise ConfigError("clean, attacked and denoised images must have the same count")
    if n == 0:
        raise ConfigError("no images to show")
    columns = ["clean", "attacked", "|attacked - clean|"]
    for name in denoised:
        columns += [name, f"|{name} - clean|"]
    fig = Figure(figsize=(cell * len(columns), (cell + 0.1) * n + 0.4), layout="constrained")
    axes = fig.subplots(n, len(columns), squeeze=False)
    for r in range(n):
        cells: list[tuple[np.ndarray, bool]] = [
            (_u8(clean[r]), False), (_u8(attacked[r]), False),
            (difference_map(clean[r], attacked[r]), True)]
        for images in denoised.values():
            cells += [(_u8(images[r]), False), (difference_map(clean[r], images[r]), True)]
        for c, (img, is_diff) in enumerate(cells):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if is_diff:
                ax.imshow(img, cmap="magma", vmin=0, vmax=255, interpolation="nearest")
            else:
                ax.imshow(to_rgb_uint8(img), interpolation="nearest")
            if r == 0:
                ax.set_title(columns[c], fontsize=7)
            if c == 0 and row_titles is not None and r < len(row_titles):
                ax.set_ylabel(row_titles[r], fontsize=7)
    return fig


def save_defence_grid(path: str, clean: np.ndarray, attacked: np.ndarray,
                      denoised: Mapping[str, np.ndarray],
                      row_titles: Sequence[str] | None = None) -> str:
    """Render the grid to a PNG file and return its path."""
    fig = defence_grid_figure(clean, attacked, denoised, row_titles)
    fig.savefig(path, dpi=110)
    return path
