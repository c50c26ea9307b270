"""Plot and image helpers for the HTML report: everything becomes an embeddable PNG data URI.

The report is one self-contained file, so figures are never written next to it and linked:
each is rendered to PNG in memory and inlined as ``data:image/png;base64,...``. Figures are
built with ``matplotlib.figure.Figure`` (no pyplot), which renders with Agg and touches no global
backend state. Small medical images are upscaled with nearest neighbour so single pixels stay
crisp squares in any browser.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw

from medrobust.utils.images import to_rgb_uint8

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PNG_PREFIX = "data:image/png;base64,"


def png_bytes_to_data_uri(data: bytes) -> str:
    return PNG_PREFIX + base64.b64encode(data).decode("ascii")


def figure_to_data_uri(fig: Figure, dpi: int = 110) -> str:
    """A matplotlib figure as a PNG data URI."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return png_bytes_to_data_uri(buffer.getvalue())


def png_file_to_data_uri(path: str | Path) -> str:
    """A PNG file (e.g. a plot written by the analysis) as a data URI."""
    return png_bytes_to_data_uri(Path(path).read_bytes())


def display_scale(height: int, width: int, target: int = 160) -> int:
    """Integer upscaling factor that brings the longer side near ``target`` pixels (>= 1)."""
    return max(1, round(target / max(height, width, 1)))


def upscale(image: np.ndarray, scale: int) -> np.ndarray:
    """Nearest-neighbour upscaling by an integer factor (each pixel becomes a scale x scale block)."""
    img = to_rgb_uint8(image)
    return np.repeat(np.repeat(img, scale, axis=0), scale, axis=1)


def image_to_data_uri(image: np.ndarray, scale: int | None = None) -> str:
    """A uint8 image as a PNG data URI, upscaled (nearest) by ``scale`` (default: ~160 px)."""
    img = to_rgb_uint8(image)
    if scale is None:
        scale = display_scale(*img.shape[:2])
    buffer = io.BytesIO()
    Image.fromarray(upscale(img, scale)).save(buffer, format="PNG")
    return png_bytes_to_data_uri(buffer.getvalue())


def zoom_patch(image: np.ndarray, x: int, y: int, radius: int = 4, scale: int = 16,
               fill: int = 128) -> np.ndarray:
    """The (2r+1)^2 neighbourhood of pixel (x = column, y = row), upscaled, pixel outlined.

    The pixel stays in the centre at image borders (outside cells are grey ``fill``). The
    outline is black outside white, so it shows on any colour.
    """
    img = to_rgb_uint8(image)
    h, w = img.shape[:2]
    size = 2 * radius + 1
    patch = np.full((size, size, 3), fill, dtype=np.uint8)
    y0, y1 = max(y - radius, 0), min(y + radius + 1, h)
    x0, x1 = max(x - radius, 0), min(x + radius + 1, w)
    patch[y0 - (y - radius):y1 - (y - radius), x0 - (x - radius):x1 - (x - radius)] = \
        img[y0:y1, x0:x1]
    big = Image.fromarray(upscale(patch, scale))
    draw = ImageDraw.Draw(big)
    lo, hi = radius * scale, (radius + 1) * scale - 1
    draw.rectangle([lo - 2, lo - 2, hi + 2, hi + 2], outline=(0, 0, 0), width=2)
    draw.rectangle([lo, lo, hi, hi], outline=(255, 255, 255), width=1)
    return np.asarray(big)


def mark_pixels(image: np.ndarray, pixels: Sequence[tuple[int, int]], scale: int) -> np.ndarray:
    """The image upscaled by ``scale`` with a ring (black outside yellow) around each (x, y).

    The ring leaves the pixel itself and its direct neighbours visible.
    """
    big = Image.fromarray(upscale(image, scale))
    draw = ImageDraw.Draw(big)
    pad = max(3, scale)
    for x, y in pixels:
        box = [x * scale - pad, y * scale - pad, (x + 1) * scale - 1 + pad,
               (y + 1) * scale - 1 + pad]
        draw.ellipse([box[0] - 1, box[1] - 1, box[2] + 1, box[3] + 1], outline=(0, 0, 0),
                     width=2)
        draw.ellipse(box, outline=(255, 255, 0), width=1)
    return np.asarray(big)


def confusion_matrix_figure(matrix: Sequence[Sequence[int]], class_names: Sequence[str],
                            title: str = "") -> Figure:
    """Counts with true class as rows and predicted class as columns, each cell labelled."""
    from matplotlib.figure import Figure

    cm = np.asarray(matrix, dtype=np.int64)
    k = cm.shape[0]
    side = min(2.2 + 0.55 * k, 9.0)
    fig = Figure(figsize=(side + 0.8, side), layout="constrained")
    ax = fig.subplots()
    row_sums = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, row_sums, out=np.zeros(cm.shape, dtype=np.float64),
                      where=row_sums > 0)
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{cm[i, j]}\n{share[i, j]:.1%}", ha="center", va="center",
                    fontsize=9 if k <= 6 else 7,
                    color="white" if share[i, j] > 0.6 else "black")
    names = [str(c) for c in class_names]
    ax.set_xticks(range(k), names, rotation=30 if k > 3 else 0, ha="right" if k > 3 else "center")
    ax.set_yticks(range(k), names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if title:
        ax.set_title(title, fontsize=10)
    return fig


def history_figure(history: Sequence[dict[str, float]], title: str = "") -> Figure:
    """Training curves (losses left, validation accuracy/AUC right) from checkpoint history."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8.0, 3.2), layout="constrained")
    left, right = fig.subplots(1, 2)
    epochs = [h.get("epoch", i + 1) for i, h in enumerate(history)]
    for key, ax in (("train_loss", left), ("val_loss", left), ("val_accuracy", right),
                    ("val_auc", right), ("val_balanced_accuracy", right)):
        values = [h.get(key) for h in history]
        if any(v is not None for v in values):
            ax.plot(epochs, [np.nan if v is None else v for v in values], marker="o",
                    markersize=3, label=key.replace("_", " "))
    from matplotlib.ticker import MaxNLocator

    for ax in (left, right):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    left.set_xlabel("epoch")
    left.set_ylabel("loss")
    right.set_xlabel("epoch")
    right.set_ylabel("validation metric")
    for ax in (left, right):
        if ax.lines:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def image_grid_figure(images: Sequence[np.ndarray], titles: Sequence[str] | None = None,
                      ncols: int = 4, cell: float = 2.0) -> Figure:
    """Several images in one figure (nearest interpolation, no axes), one title each."""
    from matplotlib.figure import Figure

    n = max(len(images), 1)
    ncols = max(1, min(ncols, n))
    nrows = -(-n // ncols)
    fig = Figure(figsize=(cell * ncols, (cell + 0.35) * nrows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).reshape(-1)
    for i, ax in enumerate(axes):
        ax.set_axis_off()
        if i < len(images):
            ax.imshow(to_rgb_uint8(images[i]), interpolation="nearest")
            if titles is not None and i < len(titles):
                ax.set_title(titles[i], fontsize=8)
    return fig
