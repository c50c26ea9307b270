"""Certified regression outputs by median smoothing (Chiang, Curry, Abdelkader, Kumar,
Dickerson & Goldstein, NeurIPS 2020, "Detection as regression: certified object detection by
median smoothing").

Smoothing a real-valued output by the median of ``f(x + d)``, ``d ~ N(0, sigma^2 I)``, bounds
how far any perturbation of L2 norm ``<= eps`` can move it: the smoothed median at ``x + e``
lies between the ``p-`` and ``p+`` percentiles of ``f(x + d)``, ``p+- = Phi(Phi^-1(1/2) +-
eps / sigma)``. Those percentiles are bounded from ``n`` samples by order statistics whose
indices come from the binomial distribution (exact, SciPy), so the certified interval holds with
probability at least ``1 - alpha`` over the noise, jointly for the ``d`` outputs (Bonferroni over
the ``2 d`` one-sided bounds). Each radius's statement holds at ``1 - alpha`` by itself; they
share one set of samples and are not corrected across radii (as certified accuracy per radius
is reported in the literature).

Landmark coordinates are such outputs directly; a detector's are after ``match_to_reference``
fixes, per true box, which detection to read. ``+-inf`` marks an output that is missing on a
sample (a box not found): it sorts like any value, and a percentile that lands on it makes the
bound infinite, an honest "cannot certify".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.stats import binom, norm
from torch import nn

from medrobust.attacks.base import model_device
from medrobust.certify.smoothing import ESTIMATE, keyed_noise, one_image
from medrobust.errors import ConfigError
from medrobust.utils.validation import check_range

#: the coordinates ``match_to_reference`` gives a true box no detection matched: an empty box
MISSING_BOX = (np.inf, np.inf, -np.inf, -np.inf)


def percentile_probabilities(sigma: float, radius: float) -> tuple[float, float]:
    """``(p-, p+) = (Phi(-radius / sigma), Phi(radius / sigma))``: the percentiles of the noisy
    outputs at ``x`` that bracket the smoothed median anywhere within ``radius``."""
    check_range("sigma", sigma, 0, low_inclusive=False)
    check_range("radius", radius, 0)
    if not np.isfinite(radius):
        raise ConfigError(f"radius must be finite, got {radius}")
    return float(norm.cdf(-radius / sigma)), float(norm.cdf(radius / sigma))


def order_statistic_indices(n: int, p_lower: float, p_upper: float, alpha_each: float
                            ) -> tuple[int, int]:
    """1-based indices ``(k-, k+)`` of the sorted samples that bound the ``p_lower`` percentile
    from below and the ``p_upper`` percentile from above, each with error at most
    ``alpha_each``; ``k- = 0`` or ``k+ = n + 1`` when ``n`` samples cannot (infinite bound).

    ``X_(k) <= q_p`` exactly when at least ``k`` samples are ``<= q_p``, a Bin(n, >= p) count:
    ``k-`` is the largest ``k`` with ``P(Bin(n, p-) >= k) >= 1 - alpha_each``. ``X_(k) >= q_p``
    when at most ``k - 1`` samples are below ``q_p``: ``k+`` is the smallest ``k`` with
    ``P(Bin(n, p+) <= k - 1) >= 1 - alpha_each``. Both hold for discrete outputs too (ties only
    make them conservative). The tails are compared as ``cdf <= alpha`` and ``sf <= alpha``,
    where SciPy computes small probabilities to full relative precision."""
    check_range("n", n, 1)
    check_range("alpha_each", alpha_each, 0, 0.5, low_inclusive=False, high_inclusive=False)
    j = np.arange(n)  # j = k - 1
    low_ok = binom.cdf(j, n, p_lower) <= alpha_each  # P(Bin(n, p-) >= j + 1) >= 1 - alpha
    k_lower = n if low_ok.all() else int(np.argmin(low_ok))  # the leading run: monotone in k
    high_ok = binom.sf(j, n, p_upper) <= alpha_each  # P(Bin(n, p+) <= j) >= 1 - alpha
    k_upper = int(np.argmax(high_ok)) + 1 if high_ok.any() else n + 1
    return k_lower, k_upper


def _checked_samples(samples: np.ndarray | torch.Tensor) -> np.ndarray:
    s = samples.detach().cpu().numpy() if isinstance(samples, torch.Tensor) else samples
    s = np.asarray(s, dtype=np.float64)
    if s.ndim != 2 or s.shape[0] < 1:
        raise ConfigError(f"samples must be (n, d) with n >= 1, got shape {s.shape}")
    if np.isnan(s).any():
        raise ConfigError("samples hold NaN; mark a missing output with +inf or -inf")
    return s


def _median(ordered: np.ndarray) -> np.ndarray:
    """The sample median of sorted (n, d) samples: the middle one, or the mean of the middle
    two (the lower one where they are opposite infinities)."""
    n = ordered.shape[0]
    lo, hi = ordered[(n - 1) // 2], ordered[n // 2]
    with np.errstate(invalid="ignore"):
        mid = 0.5 * (lo + hi)
    return np.where(np.isnan(mid), lo, mid)


def _bounds(ordered: np.ndarray, sigma: float, radius: float, alpha: float
            ) -> tuple[np.ndarray, np.ndarray]:
    n, d = ordered.shape
    p_lo, p_hi = percentile_probabilities(sigma, radius)
    k_lo, k_hi = order_statistic_indices(n, p_lo, p_hi, alpha / (2 * d))
    lower = ordered[k_lo - 1] if k_lo >= 1 else np.full(d, -np.inf)
    upper = ordered[k_hi - 1] if k_hi <= n else np.full(d, np.inf)
    return lower.copy(), upper.copy()


def percentile_bounds(samples: np.ndarray | torch.Tensor, sigma: float, radius: float,
                      alpha: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(lower, median, upper)``, each (d,): the sample median of the noisy outputs and an
    interval that holds the smoothed median of every input within L2 ``radius``, for all ``d``
    coordinates at once with probability at least ``1 - alpha`` (``alpha / (2 d)`` per
    one-sided bound). Radius 0 gives a confidence interval for the smoothed median itself."""
    check_range("alpha", alpha, 0, 1, low_inclusive=False, high_inclusive=False)
    ordered = np.sort(_checked_samples(samples), axis=0)
    lower, upper = _bounds(ordered, sigma, radius, alpha)
    return lower, _median(ordered), upper


@dataclass(frozen=True)
class MedianCertificate:
    """Median smoothing's answer for one image: the smoothed outputs (sample medians) and, per
    radius, the interval each output stays in under any L2 perturbation that small."""

    median: np.ndarray
    radii: tuple[float, ...]
    #: (len(radii), d): row ``i`` bounds the outputs within ``radii[i]``
    lower: np.ndarray
    upper: np.ndarray
    n: int
    sigma: float
    alpha: float

    def interval(self, radius: float) -> tuple[np.ndarray, np.ndarray]:
        """The (d,) lower and upper bounds at one of the certified radii."""
        for i, r in enumerate(self.radii):
            if r == float(radius):
                return self.lower[i], self.upper[i]
        raise ConfigError(f"radius {radius} was not certified (radii: "
                          f"{', '.join(f'{r:g}' for r in self.radii)})")


OutputFn = Callable[[torch.Tensor], "np.ndarray | torch.Tensor"]


class MedianSmoother:
    """``fn`` (float [0,1] (B,C,H,W) images -> (B, d) outputs, NumPy or torch; more trailing
    dimensions are flattened) under Gaussian noise of standard deviation ``sigma`` on the
    [0,1] pixel scale, smoothed by the median. The noisy images are not clipped to [0,1]: what
    is certified is ``fn`` on them, whatever ``fn`` does with them. ``device``: where noise is
    drawn and ``fn`` is fed (default: ``fn``'s parameters' device when it is a module, else the
    image's)."""

    def __init__(self, fn: OutputFn, sigma: float, *, batch_size: int = 32, seed: int = 0,
                 device: torch.device | str | None = None) -> None:
        self.fn = fn
        self.sigma = float(check_range("sigma", sigma, 0, low_inclusive=False))
        self.batch_size = int(check_range("batch_size", batch_size, 1))
        self.seed = int(seed)
        self.device = torch.device(device) if device is not None else None

    def _device(self, x: Any) -> torch.device:
        if self.device is not None:
            return self.device
        if isinstance(self.fn, nn.Module):
            return model_device(self.fn)
        return x.device if isinstance(x, torch.Tensor) else torch.device("cpu")

    @torch.inference_mode()
    def samples(self, x: torch.Tensor | np.ndarray, n: int, key: int) -> np.ndarray:
        """(n, d) float64 outputs of ``fn`` on ``n`` noisy copies of one image ``x`` (C,H,W),
        from the image's own stream ``key`` (the same for any ``batch_size``)."""
        check_range("n", n, 1)
        device = self._device(x)
        image = one_image(x, device)
        module = self.fn if isinstance(self.fn, nn.Module) else None
        was = module.training if module is not None else False
        if module is not None:
            module.eval()
        rows: list[np.ndarray] = []
        try:
            for noise in keyed_noise(tuple(image.shape), n, self.batch_size, seed=self.seed,
                                     key=key, phase=ESTIMATE, device=device):
                out = self.fn(image.unsqueeze(0) + self.sigma * noise)
                out = out.detach().cpu().numpy() if isinstance(out, torch.Tensor) else out
                out = np.asarray(out, dtype=np.float64)
                if out.ndim < 1 or out.shape[0] != noise.shape[0]:
                    raise ConfigError(f"fn must give one output row per image: {noise.shape[0]}"
                                      f" images gave shape {out.shape}")
                out = out.reshape(out.shape[0], -1)
                if rows and out.shape[1] != rows[0].shape[1]:
                    raise ConfigError(f"fn gave {rows[0].shape[1]} outputs per image, then "
                                      f"{out.shape[1]}")
                rows.append(out)
        finally:
            if module is not None:
                module.train(was)
        return np.concatenate(rows, axis=0)

    def certify(self, x: torch.Tensor | np.ndarray, n: int, alpha: float,
                radii: Sequence[float], key: int) -> MedianCertificate:
        """Sample ``n`` noisy outputs once and bound them at every radius in ``radii``."""
        check_range("alpha", alpha, 0, 1, low_inclusive=False, high_inclusive=False)
        radii = tuple(float(r) for r in radii)
        if not radii:
            raise ConfigError("radii must name at least one radius")
        for r in radii:
            percentile_probabilities(self.sigma, r)  # refuses negative or infinite radii
        ordered = np.sort(_checked_samples(self.samples(x, n, key)), axis=0)
        pairs = [_bounds(ordered, self.sigma, r, alpha) for r in radii]
        return MedianCertificate(median=_median(ordered), radii=radii,
                                 lower=np.stack([p[0] for p in pairs]),
                                 upper=np.stack([p[1] for p in pairs]), n=int(n),
                                 sigma=self.sigma, alpha=float(alpha))


def _numpy(a: Any) -> np.ndarray:
    return np.asarray(a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else a)


def _boxes(name: str, a: Any, width: int) -> np.ndarray:
    arr = _numpy(a).astype(np.float64)
    if arr.size == 0 and arr.ndim <= 1:  # an empty list of boxes
        arr = arr.reshape(0, width)
    if arr.shape[-1:] != (width,):
        raise ConfigError(f"{name} must end in a dimension of {width}, got shape {arr.shape}")
    if np.isnan(arr).any():
        raise ConfigError(f"{name} must not hold NaN")
    return arr


def _ordered_bounds(lower: Any, upper: Any, width: int) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = _boxes("lower", lower, width), _boxes("upper", upper, width)
    if lo.shape != hi.shape:
        raise ConfigError(f"lower {lo.shape} and upper {hi.shape} differ in shape")
    if (lo > hi).any():
        raise ConfigError("lower bounds must not exceed upper bounds")
    return lo, hi


def radial_error_bound(lower: np.ndarray, upper: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """(K,) upper bounds on each landmark's radial error within the certified radius: the
    distance from the true (x, y) to the farthest corner of its box of certified coordinates
    ``[x_lo, x_hi] x [y_lo, y_hi]`` (inf when a bound is infinite)."""
    lo, hi = _ordered_bounds(lower, upper, 2)
    t = _boxes("truth", truth, 2)
    if t.shape != lo.shape or not np.isfinite(t).all():
        raise ConfigError(f"truth must be finite with the bounds' shape {lo.shape}, got "
                          f"{t.shape}")
    far = np.maximum(np.abs(lo - t), np.abs(hi - t))
    return np.hypot(far[..., 0], far[..., 1])


def iou_lower_bound(lower: np.ndarray, upper: np.ndarray, truth: np.ndarray) -> float:
    """A lower bound on the IoU with the true box of any box (x0, y0, x1, y1) whose coordinates
    lie in ``[lower, upper]``: the smallest intersection (left and top edges at their largest,
    right and bottom at their smallest) over the largest union (the box of the outer bounds,
    which holds every feasible box). 0 when the intervals allow an empty or disjoint box or an
    unbounded one."""
    lo, hi = _ordered_bounds(lower, upper, 4)
    t = _boxes("truth", truth, 4)
    if lo.shape != (4,) or t.shape != (4,) or not np.isfinite(t).all():
        raise ConfigError("iou_lower_bound takes one box: (4,) bounds and a finite (4,) truth")
    ix = min(lo[2], t[2]) - max(hi[0], t[0])
    iy = min(lo[3], t[3]) - max(hi[1], t[1])
    if not (ix > 0 and iy > 0):
        return 0.0
    inter = ix * iy  # finite: bounded by the true box
    outer = (lo[0], lo[1], hi[2], hi[3])
    outer_area = (outer[2] - outer[0]) * (outer[3] - outer[1])
    true_area = (t[2] - t[0]) * (t[3] - t[1])
    overlap = ((min(outer[2], t[2]) - max(outer[0], t[0]))
               * (min(outer[3], t[3]) - max(outer[1], t[1])))  # > 0: holds the inner box
    union = outer_area + true_area - overlap
    return float(inter / union) if np.isfinite(union) else 0.0


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(M, R) IoU of (M,4) and (R,4) boxes (x0, y0, x1, y1); 0 where a box is empty."""
    a, b = _boxes("boxes", a, 4).reshape(-1, 4), _boxes("boxes", b, 4).reshape(-1, 4)
    w = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    h = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.clip(w, 0, None) * np.clip(h, 0, None)

    def area(x: np.ndarray) -> np.ndarray:
        return np.clip(x[:, 2] - x[:, 0], 0, None) * np.clip(x[:, 3] - x[:, 1], 0, None)

    union = area(a)[:, None] + area(b)[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def match_to_reference(boxes: np.ndarray, labels: np.ndarray, scores: np.ndarray,
                       reference_boxes: np.ndarray, reference_labels: np.ndarray,
                       score_threshold: float, min_iou: float) -> np.ndarray:
    """(R,4): per reference (true) box, the confident (``score >= score_threshold``) detection
    of its class with the highest IoU with it, at least ``min_iou`` (ties: the higher score,
    then the earlier detection); ``MISSING_BOX`` when there is none.

    Why: median smoothing needs a fixed-length real output, and a detector's list of boxes is
    not one. For fixed reference boxes, "the detection matched to this true box" is a
    deterministic function of the image, so its coordinates can be median-smoothed and
    certified. Each reference box is matched on its own (two may read the same detection), so
    one box's output does not depend on the others. A box missed on too many noisy samples has
    infinite certified bounds (``+inf`` left/top, ``-inf`` right/bottom sort past every real
    coordinate) and an IoU bound of 0."""
    check_range("min_iou", min_iou, 0, 1)
    b = _boxes("boxes", boxes, 4).reshape(-1, 4)
    ref = _boxes("reference_boxes", reference_boxes, 4).reshape(-1, 4)
    lab, ref_lab = _numpy(labels).ravel(), _numpy(reference_labels).ravel()
    sc = _numpy(scores).astype(np.float64).ravel()
    if len(lab) != len(b) or len(sc) != len(b) or len(ref_lab) != len(ref):
        raise ConfigError(f"{len(b)} boxes need as many labels and scores (got {len(lab)} and "
                          f"{len(sc)}); {len(ref)} reference boxes got {len(ref_lab)} labels")
    out = np.tile(np.asarray(MISSING_BOX, dtype=np.float64), (len(ref), 1))
    if not len(b) or not len(ref):
        return out
    iou = box_iou(b, ref)
    ok = (sc[:, None] >= score_threshold) & (lab[:, None] == ref_lab[None, :]) & (iou >= min_iou)
    for r in range(len(ref)):
        cand = np.flatnonzero(ok[:, r])
        if cand.size:
            # lexsort: last key first; the earliest index wins what is left (stable order)
            best = cand[np.lexsort((-sc[cand], -iou[cand, r]))[0]]
            out[r] = b[best]
    return out
