"""Receptive-field box arithmetic for one-pixel changes, one spatial axis at a time.

A one-pixel change at input row y can only alter a contiguous band of rows in every later
feature map (its cone). Rows and columns are independent, so each axis is a table over the input
positions: ``lo[y]`` and ``hi[y]`` bound the rows that may differ from the clean activation
(``lo > hi`` means none do). The bounds are conservative (a superset), which keeps the engine
exact: recomputing a clean position from correct inputs reproduces the clean value.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Band:
    """Per input position, the [lo, hi] band of one axis of a feature map of length ``size``."""

    lo: np.ndarray
    hi: np.ndarray
    size: int

    @staticmethod
    def identity(size: int) -> Band:
        pos = np.arange(size)
        return Band(pos.copy(), pos.copy(), size)

    @property
    def empty(self) -> np.ndarray:
        return self.lo > self.hi


def sliding(band: Band, kernel: int, stride: int, padding: int, dilation: int,
            out_size: int) -> Band:
    """Outputs of a sliding window (convolution, pooling) that read any changed input."""
    reach = (kernel - 1) * dilation
    lo = -((-(band.lo + padding - reach)) // stride)  # ceil division
    hi = (band.hi + padding) // stride
    lo = np.clip(lo, 0, None)
    hi = np.clip(hi, None, out_size - 1)
    empty = band.empty | (lo > hi)
    return Band(np.where(empty, 1, lo), np.where(empty, 0, hi), out_size)


def shifted(band: Band, before: int, out_size: int) -> Band:
    """Constant padding of ``before`` positions in front: the band moves with the data."""
    empty = band.empty
    return Band(np.where(empty, 1, band.lo + before), np.where(empty, 0, band.hi + before),
                out_size)


def union(bands: list[Band]) -> Band:
    """Elementwise ops of several changed operands change the union of their bands."""
    size = bands[0].size
    big = np.iinfo(np.int64).max
    lo = np.min([np.where(b.empty, big, b.lo) for b in bands], axis=0)
    hi = np.max([np.where(b.empty, -1, b.hi) for b in bands], axis=0)
    empty = lo > hi
    return Band(np.where(empty, 1, lo), np.where(empty, 0, hi), size)
