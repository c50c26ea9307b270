"""Chromatic analysis (Alatalo et al. 2022, section 3.1): how far an attack colour is from its
surroundings.

h = sqrt(mean over channels of (c - c_mu)^2), colours scaled to [0,1], where c_mu is the mean
colour of the attacked pixel's 8 neighbours in the ORIGINAL image (fewer at borders and corners).
"""

from __future__ import annotations

import numpy as np


def neighbour_mean(image: np.ndarray, x: int, y: int) -> np.ndarray:
    """Mean colour (C,) in 0..255 of the up-to-8 neighbours of (x = column, y = row)."""
    img = np.asarray(image, dtype=np.float64)
    if img.ndim == 2:
        img = img[:, :, None]
    h, w = img.shape[:2]
    if not (0 <= x < w and 0 <= y < h):
        raise ValueError(f"pixel ({x}, {y}) is outside a {w}x{h} image")
    rows = slice(max(y - 1, 0), min(y + 2, h))
    cols = slice(max(x - 1, 0), min(x + 2, w))
    block = img[rows, cols]
    total = block.sum(axis=(0, 1)) - img[y, x]
    count = block.shape[0] * block.shape[1] - 1
    return total / count


def colour_distance(colour: np.ndarray | list[float], mean: np.ndarray | list[float]) -> float:
    """The paper's h: RMSE over channels between two 0..255 colours, on the [0,1] scale."""
    c = np.asarray(colour, dtype=np.float64) / 255.0
    m = np.asarray(mean, dtype=np.float64) / 255.0
    return float(np.sqrt(np.mean((c - m) ** 2)))
