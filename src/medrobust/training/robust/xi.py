"""The threshold xi that says when a noisy sample is still "correct", from clean losses V.

Calibrated on the clean per-sample training loss terms V of a trained standard model (the paper,
section 2.3): ``mean`` (mean(V)), ``mean+2std`` (the paper's mean(V) + 2 std(V)) or ``huber``
(Huber location + 3 x Huber scale, the authors' landmark code). Loss distributions have a long
right tail, which inflates mean and std; Huber's joint M-estimate of location and scale is
barely moved by it. With several loss terms xi is a vector, one threshold per term (every term
but ``total``), and a sample is correct only when every term holds (paper, section 2.4).

The Huber estimator is written here with NumPy/SciPy (Huber's proposal 2, as
``statsmodels.robust.scale.Huber`` computes it: c = 1.5, location and scale iterated jointly from
the median and the normalised MAD) because statsmodels is not a medrobust dependency and the
estimator is twenty lines.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from scipy.stats import norm

from medrobust.errors import ConfigError
from medrobust.training.robust.config import XI_RULES


def huber_location_scale(values: np.ndarray, c: float = 1.5, tol: float = 1e-8,
                         max_iter: int = 100) -> tuple[float, float]:
    """Huber's proposal 2: the (location, scale) solving, for z = (v - location) / scale,
    mean(psi_c(z)) = 0 and mean(psi_c(z)^2) = E[psi_c(Z)^2] under a standard normal Z.

    psi_c clips at +-c. The fixed point is iterated from (median, MAD / 0.6745) as statsmodels
    does; constant data (MAD 0) return (median, 0).
    """
    a = np.asarray(values, dtype=np.float64).reshape(-1)
    if a.size == 0 or not np.isfinite(a).all():
        raise ConfigError("Huber estimation needs finite values")
    mu = float(np.median(a))
    scale = float(np.median(np.abs(a - mu)) / norm.ppf(0.75))
    if scale == 0:
        return mu, 0.0
    inside = 2 * norm.cdf(c) - 1
    gamma = inside + c ** 2 * (1 - inside) - 2 * c * norm.pdf(c)
    n = a.size
    for _ in range(max_iter):
        new_mu = float(np.clip(a, mu - c * scale, mu + c * scale).mean())
        subset = np.abs((a - mu) / scale) <= c
        denom = n * gamma - (n - subset.sum()) * c ** 2
        new_scale = float(np.sqrt((subset * (a - new_mu) ** 2).sum() / denom)) if denom > 0 \
            else scale
        done = abs(scale - new_scale) <= new_scale * tol and abs(mu - new_mu) <= new_scale * tol
        mu, scale = new_mu, new_scale
        if done:
            return mu, scale
    raise ConfigError(f"Huber location/scale did not converge in {max_iter} iterations")


def threshold(values: np.ndarray, rule: str) -> float:
    """One threshold from clean per-sample values by ``rule`` (see the module doc)."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if v.size == 0 or not np.isfinite(v).all():
        raise ConfigError("xi calibration needs finite clean losses of at least one sample")
    if rule == "mean":
        return float(v.mean())
    if rule == "mean+2std":
        return float(v.mean() + 2 * v.std())
    if rule == "huber":
        loc, scale = huber_location_scale(v)
        return float(loc + 3 * scale)
    raise ConfigError(f"xi rule must be one of {', '.join(XI_RULES)}, got {rule!r}")


def calibrate_xi(terms: Mapping[str, np.ndarray], rule: str) -> dict[str, float]:
    """One threshold per loss term (``total`` left out unless it is the only term)."""
    names = [k for k in terms if k != "total"] or list(terms)
    if not names:
        raise ConfigError("xi calibration needs at least one loss term")
    return {k: threshold(terms[k], rule) for k in names}
