"""Certified segmentation by per-pixel randomized smoothing (SegCertify: Fischer, Baader &
Vechev, ICML 2021).

Each pixel of the smoothed segmenter takes the class its base model gives most often under
Gaussian noise of standard deviation ``sigma`` (on the [0,1] pixel scale). Cohen et al.'s radius
per pixel would need a bound per pixel and then the smallest of them; SegCertify instead fixes a
threshold ``tau`` and asks, for every pixel, whether its class wins with probability above
``tau``: a one-sided binomial test per pixel, corrected for the ``H * W`` tests (Holm by
default), so that with probability at least ``1 - alpha`` every non-abstaining pixel keeps its
class under any L2 perturbation of norm below ``sigma * Phi^-1(tau)``. Pixels whose test does not
reject abstain. As in CERTIFY, the class is chosen on ``n0`` selection samples and tested on
``n`` others: testing the class the same samples chose would void the test's level.

Noise comes from one generator per image and phase, drawn one sample at a time (see
``keyed_noise``), so an image's counts do not depend on the batch size, on which images share
its campaign batch, on a resume or on the worker (of the same device type).
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
from medrobust.attacks.criteria import predictions
from medrobust.certify.smoothing import (
    ABSTAIN,
    ESTIMATE,
    PREDICT,
    SELECT,
    _channels_last,
    keyed_noise,
    one_image,
)
from medrobust.errors import ConfigError
from medrobust.metrics.mean_interval import mean_ci95
from medrobust.store import ResultTable
from medrobust.utils.validation import check_choice, check_range

#: multiple-testing corrections over the pixels of one image
CORRECTIONS = ("holm", "bonferroni")


def binomial_tail(counts: np.ndarray, n: int, tau: float) -> np.ndarray:
    """One-sided p-values of H0: p <= tau against p > tau for ``counts`` successes of ``n``:
    P(Bin(n, tau) >= count), SciPy's exact binomial tail (binomtest's ``greater``)."""
    k = np.asarray(counts, dtype=np.int64)
    return np.asarray(binom.sf(k - 1, n, tau), dtype=np.float64)


def reject(p_values: np.ndarray, alpha: float, correction: str = "holm") -> np.ndarray:
    """Which hypotheses to reject (same shape, bool) with family-wise error at most ``alpha``.

    Bonferroni rejects ``p <= alpha / m``. Holm's step-down procedure (Holm 1979) sorts the
    p-values and rejects the ``j``-th smallest while every one up to it is at most
    ``alpha / (m - j + 1)``: the same guarantee, never fewer rejections, which matters when a
    whole image's pixels are tested at once."""
    check_range("alpha", alpha, 0, 1, low_inclusive=False, high_inclusive=False)
    check_choice("correction", correction, CORRECTIONS)
    p = np.asarray(p_values, dtype=np.float64)
    if np.isnan(p).any():
        raise ConfigError("p-values must not be NaN")
    flat = p.ravel()
    m = flat.size
    if m == 0:
        return np.zeros(p.shape, dtype=bool)
    if correction == "bonferroni":
        return flat.reshape(p.shape) <= alpha / m
    order = np.argsort(flat, kind="stable")
    passes = flat[order] <= alpha / (m - np.arange(m))
    stop = m if passes.all() else int(np.argmin(passes))
    out = np.zeros(m, dtype=bool)
    out[order[:stop]] = True
    return out.reshape(p.shape)


@dataclass(frozen=True)
class SegCertificate:
    """SegCertify's answer for one image.

    ``prediction``: (H,W) classes, ``ABSTAIN`` where the pixel's test did not reject; every other
    pixel keeps its class under any L2 perturbation of norm below ``radius`` (jointly, with
    probability of error at most ``alpha``). ``radius`` is ``sigma * Phi^-1(tau)``, the same for
    every pixel and image of a run (also when every pixel abstains: it is the radius the test
    was for). ``p_values`` are the raw one-sided p-values (before the correction)."""

    prediction: np.ndarray
    radius: float
    #: share of pixels that abstained
    abstained: float
    p_values: np.ndarray
    #: the class the selection samples chose per pixel, and its count among the ``n`` estimation
    #: samples (the count its p-value is computed from)
    selected: np.ndarray
    top_counts: np.ndarray
    n0: int
    n: int
    alpha: float
    tau: float
    correction: str

    @property
    def certified(self) -> np.ndarray:
        """(H,W) bool: the pixels that did not abstain."""
        return self.prediction != ABSTAIN


class SmoothedSegmenter:
    """A segmenter (``Segmenter`` or any module mapping float [0,1] (N,C,H,W) images to
    (N,K,H,W) logits; a single-logit head reads as two classes) smoothed per pixel under
    Gaussian noise of standard deviation ``sigma``. ``tau`` in (1/2, 1) sets the certified
    radius ``sigma * Phi^-1(tau)``: larger radii, more abstentions."""

    def __init__(self, model: nn.Module, sigma: float, num_classes: int, *, tau: float = 0.75,
                 batch_size: int = 32, seed: int = 0) -> None:
        self.model = model
        self.sigma = float(check_range("sigma", sigma, 0, low_inclusive=False))
        self.num_classes = int(check_range("num_classes", num_classes, 2))
        self.tau = float(check_range("tau", tau, 0.5, 1, low_inclusive=False,
                                     high_inclusive=False))
        self.batch_size = int(check_range("batch_size", batch_size, 1))
        self.seed = int(seed)
        self.net = _channels_last(model)

    @property
    def radius(self) -> float:
        """The L2 radius every non-abstaining pixel is certified at."""
        return float(self.sigma * norm.ppf(self.tau))

    @torch.inference_mode()
    def counts(self, x: torch.Tensor | np.ndarray, n: int, key: int, phase: int) -> np.ndarray:
        """(K,H,W) int64: how often each class wins each pixel over ``n`` noisy copies of one
        image ``x`` (C,H,W), from the image's stream ``key`` in ``phase``."""
        check_range("n", n, 1)
        device = model_device(self.net)
        image = one_image(x, device)
        was = self.net.training
        self.net.eval()
        total: torch.Tensor | None = None
        try:
            for noise in keyed_noise(tuple(image.shape), n, self.batch_size, seed=self.seed,
                                     key=key, phase=phase, device=device):
                noisy = (image.unsqueeze(0) + self.sigma * noise).contiguous(
                    memory_format=torch.channels_last)
                pred = predictions(self.net(noisy))
                if pred.ndim != 3:
                    raise ConfigError(f"the model must give (N,K,H,W) logits; its classes "
                                      f"have shape {tuple(pred.shape)}")
                if int(pred.max()) >= self.num_classes:
                    raise ConfigError(f"the model predicts class {int(pred.max())} but "
                                      f"num_classes is {self.num_classes}")
                if total is None:
                    total = torch.zeros((self.num_classes, pred[0].numel()), dtype=torch.int64,
                                        device=pred.device)
                flat = pred.reshape(pred.shape[0], -1)
                total.scatter_add_(0, flat, torch.ones_like(flat))
        finally:
            self.net.train(was)
        assert total is not None  # n >= 1
        return total.reshape(self.num_classes, *pred.shape[1:]).cpu().numpy()

    def certify(self, x: torch.Tensor | np.ndarray, n0: int, n: int, alpha: float, key: int,
                correction: str = "holm") -> SegCertificate:
        """SegCertify's CERTIFY: classes from ``n0`` selection samples, tested on ``n`` others
        (H0: the class wins the pixel with probability <= tau), corrected over the pixels."""
        check_range("n0", n0, 1)
        check_range("n", n, 1)
        check_range("alpha", alpha, 0, 1, low_inclusive=False, high_inclusive=False)
        check_choice("correction", correction, CORRECTIONS)
        return self.certify_radii(x, n0, n, alpha, key, None, correction)[0]

    def certify_radii(self, x: torch.Tensor | np.ndarray, n0: int, n: int, alpha: float,
                      key: int, radii: Sequence[float] | None, correction: str = "holm"
                      ) -> list[SegCertificate]:
        """CERTIFY at each L2 radius in ``radii`` (None: at ``tau``) from ONE set of samples:
        radius r tests tau = Phi(r / sigma) (r = 0: the majority, tau = 1/2), so a curve of
        certified Dice against the radius costs what one certificate costs. Each radius's
        certificate holds at level alpha by itself (as certified accuracy per radius)."""
        check_range("n0", n0, 1)
        check_range("n", n, 1)
        check_range("alpha", alpha, 0, 1, low_inclusive=False, high_inclusive=False)
        check_choice("correction", correction, CORRECTIONS)
        selected = np.argmax(self.counts(x, n0, key, SELECT), axis=0)
        counts = self.counts(x, n, key, ESTIMATE)
        top = np.take_along_axis(counts, selected[None], axis=0)[0]
        taus = [self.tau] if radii is None else [
            max(0.5, float(norm.cdf(float(r) / self.sigma))) for r in radii]
        out = []
        for tau in taus:
            p_values = binomial_tail(top, n, tau)
            keep = reject(p_values, alpha, correction)
            prediction = np.where(keep, selected, ABSTAIN).astype(np.int64)
            out.append(SegCertificate(
                prediction=prediction, radius=float(self.sigma * norm.ppf(tau)),
                abstained=float(1.0 - keep.mean()), p_values=p_values,
                selected=selected.astype(np.int64), top_counts=top.astype(np.int64),
                n0=int(n0), n=int(n), alpha=float(alpha), tau=float(tau),
                correction=correction))
        return out


def _masks(prediction: np.ndarray, truth: np.ndarray, num_classes: int
           ) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(prediction).astype(np.int64)
    t = np.asarray(truth).astype(np.int64)
    check_range("num_classes", num_classes, 2)
    if p.shape != t.shape or p.ndim != 2:
        raise ConfigError(f"prediction {p.shape} and truth {t.shape} must be the same (H,W)")
    if t.size and (t.min() < 0 or t.max() >= num_classes):
        raise ConfigError(f"truth classes must lie in 0..{num_classes - 1}")
    if p.size and (p.min() < ABSTAIN or p.max() >= num_classes):
        raise ConfigError(f"predicted classes must lie in 0..{num_classes - 1} or be "
                          f"{ABSTAIN} (abstain)")
    return p, t


def certified_dice(prediction: np.ndarray, truth: np.ndarray, num_classes: int) -> float:
    """A lower bound on the Dice of the smoothed segmentation under any perturbation within the
    certificate's radius (holding whenever the certificate does).

    Certified pixels keep their class; an abstained pixel may become anything, so for each
    foreground class ``c`` it counts against ``c``: a miss where the truth is ``c``, a false
    positive elsewhere. The Dice is ``metrics.segmentation``'s: the mean over the foreground
    classes present in the truth or the prediction, a class absent from the truth scoring 0 when
    predicted (1 when no foreground class is in either). A class absent from the truth counts
    here as predicted (Dice 0) when some pixel could take it. Each class at its own worst is a
    valid bound for the mean (exact with two classes; with more it can be loose, since one
    abstained pixel is charged as a false positive of every class)."""
    p, t = _masks(prediction, truth, num_classes)
    free = p == ABSTAIN
    scores = []
    for c in range(1, num_classes):
        tc = t == c
        tp = int(np.sum((p == c) & tc))
        fp = int(np.sum((p == c) & ~tc)) + int(np.sum(free & ~tc))
        fn = int(np.sum(tc)) - tp
        if tc.any():
            scores.append(2 * tp / (2 * tp + fp + fn))
        elif fp:
            scores.append(0.0)
    return float(np.mean(scores)) if scores else 1.0


def smoothed_dice(prediction: np.ndarray, truth: np.ndarray, num_classes: int) -> float:
    """The Dice of the smoothed segmentation at the clean image, with abstentions read as
    background: an abstained foreground pixel is a miss, an abstained background pixel is not
    held against the model (so ``smoothed_dice >= certified_dice``). Computed by
    ``metrics.segmentation`` itself, so it is the number the uncertified evaluation reports."""
    from medrobust.metrics.segmentation import per_image_metrics

    p, t = _masks(prediction, truth, num_classes)
    return float(per_image_metrics(np.where(p == ABSTAIN, 0, p), t, num_classes)["dice"][0])


def certified_pixel_accuracy(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Share of pixels certified with the true class (Fischer et al.'s certified accuracy)."""
    p, t = np.asarray(prediction), np.asarray(truth)
    if p.shape != t.shape:
        raise ConfigError(f"prediction {p.shape} and truth {t.shape} differ in shape")
    return float(np.mean(p == t)) if p.size else 0.0


# -- a segmenter's certificates as store rows and summaries ------------------------------------

TABLE = ResultTable(
    "certify_segmentation_results",
    {
        "dataset_index": "INTEGER",
        "clean_dice": "REAL",
        "smoothed_dice": "REAL",
        "by_radius": "JSON",
        "n": "INTEGER",
        "seconds": "REAL",
    },
)


def certifier(model: Any, s: Any) -> Callable[[Any, int], dict[str, Any]]:
    """(dataset, index) -> the image's row: the base model's Dice without noise, the smoothed
    segmentation's at radius 0 (abstentions as background) and, per radius, certified Dice,
    the share of pixels abstained and certified pixel accuracy (Fischer et al.'s measure)."""
    classes = int(model.num_classes)
    smooth = SmoothedSegmenter(model, s.sigma, classes, batch_size=s.batch_size, seed=s.seed)

    def certify_one(dataset: Any, i: int) -> dict[str, Any]:
        x = model.to_tensor(dataset.images[i:i + 1])
        truth = np.asarray(dataset.masks[i])
        clean = model.predict_tensor(x)[0].cpu().numpy()
        certs = smooth.certify_radii(x[0], s.n0, s.n, s.alpha, int(i), s.radii)
        return {"clean_dice": smoothed_dice(clean, truth, classes),
                "smoothed_dice": smoothed_dice(certs[0].selected, truth, classes),
                "by_radius": [{"radius": float(r), "tau": c.tau,
                               "certified_dice": certified_dice(c.prediction, truth, classes),
                               "abstained": c.abstained,
                               "pixel_accuracy": certified_pixel_accuracy(c.prediction, truth)}
                              for r, c in zip(s.radii, certs, strict=True)],
                "n": s.n}

    return certify_one


def check(model: Any, s: Any, c: Any, loss: Any
          ) -> Callable[[Any, int, Any, dict[str, Any], float], dict[str, Any]]:
    """(dataset, index, targets, certificate row, radius) -> the cross-check at that radius:
    PGD on the noise-averaged segmentation loss (``attack_smoothed``), then, per pixel,
    Cohen et al.'s PREDICT at the attacked image (the top class where a binomial test against
    the runner-up rejects a tie, Holm-corrected over the pixels). A violation is a pixel
    certified at the radius whose attacked prediction is confidently another class;
    ``attacked`` is the Dice of those predictions (undecided pixels as background), beside the
    certified Dice."""
    from medrobust.certify.attack import attack_smoothed

    classes = int(model.num_classes)
    smooth = SmoothedSegmenter(model, s.sigma, classes, batch_size=s.batch_size, seed=s.seed)

    def check_one(dataset: Any, i: int, targets: Any, row: dict[str, Any],
                  radius: float) -> dict[str, Any]:
        x = model.to_tensor(dataset.images[i:i + 1])
        truth = np.asarray(dataset.masks[i])
        cert = smooth.certify_radii(x[0], s.n0, s.n, s.alpha, int(i), [radius])[0]
        adv = attack_smoothed(model, loss, s.sigma, c.steps, c.samples, s.seed, x, targets,
                              radius, i)
        counts = smooth.counts(adv[0], s.n, int(i), PREDICT)
        order = np.sort(counts, axis=0)
        top, second = order[-1], order[-2]
        # two-sided binomial test of a tie between the top two (Cohen et al.'s PREDICT)
        k, m = top, top + second
        p_values = np.minimum(1.0, 2.0 * binom.sf(k - 1, m, 0.5))
        decided = reject(p_values, s.alpha, "holm")
        prediction = np.where(decided, np.argmax(counts, axis=0), ABSTAIN)
        flipped = cert.certified & decided & (prediction != cert.prediction)
        return {"attacked": smoothed_dice(prediction, truth, classes),
                "certified": next(b["certified_dice"] for b in row["by_radius"]
                                  if abs(b["radius"] - radius) < 1e-12),
                "violation": int(flipped.sum()), "l2": float((adv - x).flatten().norm())}

    return check_one


def summarise(rows: list[dict[str, Any]], settings: Any) -> dict[str, Any]:
    """Mean certified Dice per radius with a bootstrap 95 % interval over images, and the mean
    share of pixels abstained (at the first radius asked for, the curve's start)."""
    cells = []
    for j, r in enumerate(settings.radii):
        dice = [row["by_radius"][j]["certified_dice"] for row in rows]
        cells.append({"radius": float(r), "value": _mean(dice), "ci95": mean_ci95(dice),
                      "abstained": _mean([row["by_radius"][j]["abstained"] for row in rows]),
                      "pixel_accuracy": _mean([row["by_radius"][j]["pixel_accuracy"]
                                               for row in rows])})
    first = settings.radii[0] if settings.radii else 0.0
    return {"images": len(rows), "sigma": settings.sigma, "n": settings.n,
            "alpha": settings.alpha, "metric": "Dice", "certified": cells,
            "clean_dice": _mean([row["clean_dice"] for row in rows]),
            "smoothed_dice": _mean([row["smoothed_dice"] for row in rows]),
            "abstain_rate": cells[0]["abstained"] if cells else None,
            "abstain_of": f"pixels at L2 {first:g}"}


def describe(s: dict[str, Any]) -> list[str]:
    out = [f"Dice without noise {_fmt(s.get('clean_dice'))}, smoothed {_fmt(s.get('smoothed_dice'))}"]
    for c in s.get("certified") or []:
        lo, hi = c["ci95"] or (None, None)
        out.append(f"certified Dice at L2 {c['radius']:g}: {_fmt(c['value'])} (95 % CI "
                   f"{_fmt(lo)}-{_fmt(hi)}), pixels abstained {_fmt(c['abstained'])}")
    return out


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if len(values) else None


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"
