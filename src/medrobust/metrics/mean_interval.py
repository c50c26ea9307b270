"""A bootstrap 95 % interval for a mean over images (Dice, radial error, a bound).

Why a bootstrap and not mean +- 1.96 SE: per-image Dice and radial errors are bounded, skewed
and often piled up at 0 or 1 under attack, where a normal interval leaves [0, 1] and is too
narrow; the percentile bootstrap stays inside the data's range. Seeded, so a report is stable.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def mean_ci95(values: Sequence[float] | np.ndarray, seed: int = 0, draws: int = 2000
              ) -> tuple[float, float] | None:
    """The percentile-bootstrap 95 % interval of the mean of the finite ``values`` (None when
    there are none; an infinite value makes the interval's end infinite, honestly)."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    v = v[~np.isnan(v)]
    if v.size == 0:
        return None
    rng = np.random.default_rng(seed)
    with np.errstate(invalid="ignore"):
        means = rng.choice(v, size=(draws, v.size), replace=True).mean(axis=1)
    if np.isfinite(means).all():
        lo, hi = np.percentile(means, [2.5, 97.5])
    else:  # interpolating between inf and a number gives NaN: take the order statistics
        lo = np.percentile(means, 2.5, method="lower")
        hi = np.percentile(means, 97.5, method="higher")
    return float(lo), float(hi)
