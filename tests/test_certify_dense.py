"""Certificates for dense tasks (issue 25): SegCertify's per-pixel test and Holm correction,
its abstain rules on models whose vote under noise is known, the certified Dice as a worst case
over abstained pixels, the noise stream's independence from the batch size; median smoothing's
order-statistic indices against a brute-force binomial sum and a coverage simulation, its
intervals on a function whose smoothed median is known in closed form, and the landmark, box and
matching helpers on hand cases."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy.stats import binom, binomtest, norm
from torch import nn

from medrobust.certify import (
    ABSTAIN,
    MISSING_BOX,
    MedianSmoother,
    SmoothedSegmenter,
    certified_dice,
    certified_pixel_accuracy,
    iou_lower_bound,
    match_to_reference,
    percentile_bounds,
    radial_error_bound,
    smoothed_dice,
)
from medrobust.certify.median import box_iou, order_statistic_indices, percentile_probabilities
from medrobust.certify.segmentation import binomial_tail, reject
from medrobust.certify.smoothing import ESTIMATE, SELECT
from medrobust.errors import ConfigError
from medrobust.metrics.segmentation import per_image_metrics


class PixelVote(nn.Module):
    """(N,2,H,W) logits: class 1 where channel 0 exceeds ``threshold``."""

    def __init__(self, threshold: float) -> None:
        super().__init__()
        self.threshold = threshold

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up = (x[:, 0] > self.threshold).float()
        return torch.stack([1 - up, up], dim=1)


class Fixed(nn.Module):
    """One-hot logits of a fixed class map, whatever the input."""

    def __init__(self, pattern: np.ndarray, num_classes: int) -> None:
        super().__init__()
        self.register_buffer("onehot", nn.functional.one_hot(
            torch.as_tensor(pattern), num_classes).permute(2, 0, 1).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.onehot.unsqueeze(0).expand(x.shape[0], -1, -1, -1).clone()


# ----------------------------------------------------------------------------- SegCertify


def test_holm_and_bonferroni_match_the_textbook_procedures():
    # m = 4, alpha = 0.1: Holm's thresholds 0.025, 0.0333, 0.05, 0.1 reject the three smallest;
    # Bonferroni's 0.025 rejects two
    p = np.array([[0.03, 0.01], [0.2, 0.02]])
    assert reject(p, 0.1, "holm").tolist() == [[True, True], [False, True]]
    assert reject(p, 0.1, "bonferroni").tolist() == [[False, True], [False, True]]
    rng = np.random.default_rng(0)
    for _ in range(20):
        m = int(rng.integers(1, 200))
        pv = np.concatenate([rng.uniform(0, 1, m), rng.uniform(0, 1e-3, m)])
        pv[rng.integers(0, 2 * m)] = pv[0]  # ties
        for method in ("holm", "bonferroni"):
            expected = _multiple_tests(pv, 0.05, method)
            assert np.array_equal(reject(pv, 0.05, method), expected)
        assert (reject(pv, 0.05, "holm") >= reject(pv, 0.05, "bonferroni")).all()
    with pytest.raises(ConfigError):
        reject(p, 0.05, "fdr")


def _multiple_tests(p: np.ndarray, alpha: float, method: str) -> np.ndarray:
    """Bonferroni and Holm written out as the textbook states them, one p-value at a time
    (statsmodels' multipletests gives the same; it is not a dependency of the project)."""
    m = len(p)
    if method == "bonferroni":
        return p <= alpha / m
    out = np.zeros(m, bool)
    for j, i in enumerate(np.argsort(p, kind="stable")):
        if p[i] > alpha / (m - j):
            break
        out[i] = True
    return out


def test_pixel_p_values_are_scipys_one_sided_binomial_test():
    for k in (0, 60, 75, 90, 100):
        assert binomial_tail(np.array([k]), 100, 0.75)[0] == pytest.approx(
            binomtest(k, 100, 0.75, alternative="greater").pvalue, rel=1e-9)


def test_a_fixed_segmentation_certifies_every_pixel_at_sigma_phi_inv_tau():
    pattern = np.random.default_rng(1).integers(0, 3, (6, 7))
    smooth = SmoothedSegmenter(Fixed(pattern, 3), sigma=0.5, num_classes=3, tau=0.8,
                               batch_size=16, seed=0)
    cert = smooth.certify(torch.rand(2, 6, 7), n0=10, n=100, alpha=0.001, key=0)
    assert np.array_equal(cert.prediction, pattern) and cert.abstained == 0.0
    assert cert.certified.all() and (cert.top_counts == 100).all()
    assert cert.radius == pytest.approx(0.5 * norm.ppf(0.8), rel=1e-12)
    assert np.allclose(cert.p_values, 0.8 ** 100, rtol=1e-9)
    assert certified_dice(cert.prediction, pattern, 3) == 1.0
    assert certified_pixel_accuracy(cert.prediction, pattern) == 1.0


def test_a_coin_flip_pixel_vote_abstains_everywhere():
    smooth = SmoothedSegmenter(PixelVote(0.5), sigma=0.25, num_classes=2, tau=0.75,
                               batch_size=50, seed=2)
    cert = smooth.certify(torch.full((1, 5, 5), 0.5), n0=50, n=400, alpha=0.01, key=1)
    assert (cert.prediction == ABSTAIN).all() and cert.abstained == 1.0
    assert ((cert.top_counts > 140) & (cert.top_counts < 260)).all()
    assert certified_pixel_accuracy(cert.prediction, np.ones((5, 5), int)) == 0.0
    assert certified_dice(cert.prediction, np.ones((5, 5), int), 2) == 0.0


def test_pixels_far_from_the_threshold_certify_and_those_on_it_abstain():
    """Channel 0 at 0.95, 0.5 and 0.05 by column band: with sigma 0.25 the far bands vote their
    class with probability Phi(1.8) = 0.96 > tau, the middle one flips a coin."""
    x = torch.zeros(2, 6, 9)
    x[0, :, :3], x[0, :, 3:6], x[0, :, 6:] = 0.95, 0.5, 0.05
    smooth = SmoothedSegmenter(PixelVote(0.5), sigma=0.25, num_classes=2, seed=0)
    before = x.clone()
    cert = smooth.certify(x, n0=20, n=500, alpha=0.001, key=7)
    assert torch.equal(x, before)  # the input is never changed
    # the class comes from the selection stream, its count from the estimation stream
    assert np.array_equal(cert.selected, smooth.counts(x, 20, 7, SELECT).argmax(axis=0))
    counts = smooth.counts(x, 500, 7, ESTIMATE)
    assert np.array_equal(cert.top_counts,
                          np.take_along_axis(counts, cert.selected[None], axis=0)[0])
    assert np.allclose(cert.p_values, binom.sf(cert.top_counts - 1, 500, 0.75))
    assert (cert.prediction[:, :3] == 1).all() and (cert.prediction[:, 6:] == 0).all()
    assert (cert.prediction[:, 3:6] == ABSTAIN).all()
    assert cert.abstained == pytest.approx(1 / 3)
    truth = np.zeros((6, 9), int)
    truth[:, :3] = 1
    # Dice 1 on the certified pixels, but the 18 abstained truth-background pixels may all
    # turn foreground: 2*18 / (2*18 + 18)
    assert certified_dice(cert.prediction, truth, 2) == pytest.approx(36 / 54)
    assert smoothed_dice(cert.prediction, truth, 2) == 1.0


def test_counts_do_not_depend_on_the_batch_size_and_follow_the_seed_key_and_phase():
    x = torch.full((1, 4, 5), 0.5)
    a = SmoothedSegmenter(PixelVote(0.5), 0.25, 2, batch_size=7, seed=3).counts(x, 100, 4, ESTIMATE)
    b = SmoothedSegmenter(PixelVote(0.5), 0.25, 2, batch_size=32, seed=3).counts(x, 100, 4,
                                                                                 ESTIMATE)
    assert a.shape == (2, 4, 5) and a.dtype == np.int64 and (a.sum(axis=0) == 100).all()
    assert np.array_equal(a, b)
    smooth = SmoothedSegmenter(PixelVote(0.5), 0.25, 2, batch_size=32, seed=3)
    assert not np.array_equal(a, smooth.counts(x, 100, 5, ESTIMATE))  # another image
    assert not np.array_equal(a, smooth.counts(x, 100, 4, SELECT))  # selection != estimation
    other = SmoothedSegmenter(PixelVote(0.5), 0.25, 2, batch_size=32, seed=4)
    assert not np.array_equal(a, other.counts(x, 100, 4, ESTIMATE))
    # the first 30 samples are the first 30 of the 100: one stream, read in order
    first = smooth.counts(x, 30, 4, ESTIMATE)
    assert (first <= a).all()


def test_the_segmenter_refuses_what_it_cannot_certify():
    with pytest.raises(ConfigError, match="tau"):
        SmoothedSegmenter(PixelVote(0.5), 0.25, 2, tau=0.5)
    smooth = SmoothedSegmenter(Fixed(np.full((3, 3), 2), 3), 0.25, 2)
    with pytest.raises(ConfigError, match="num_classes"):
        smooth.counts(torch.zeros(1, 3, 3), 4, 0, ESTIMATE)
    with pytest.raises(ConfigError, match="correction"):
        SmoothedSegmenter(PixelVote(0.5), 0.25, 2).certify(torch.zeros(1, 3, 3), 5, 5, 0.01,
                                                           0, correction="none")
    with pytest.raises(ConfigError, match=r"\(C,H,W\)"):
        SmoothedSegmenter(PixelVote(0.5), 0.25, 2).counts(torch.zeros(1, 1, 3, 3), 4, 0, 0)


@pytest.mark.parametrize("k", [2, 3, 4])
def test_certified_dice_is_the_dice_when_nothing_abstains(k):
    rng = np.random.default_rng(k)
    cases = [(rng.integers(0, k, (6, 6)), rng.integers(0, k, (6, 6))) for _ in range(10)]
    cases += [(np.zeros((4, 4), int), np.zeros((4, 4), int)),  # nothing anywhere: 1
              (np.ones((4, 4), int), np.zeros((4, 4), int)),  # foreground on empty truth: 0
              (np.zeros((4, 4), int), np.full((4, 4), k - 1))]
    for pred, truth in cases:
        plain = per_image_metrics(pred, truth, k)["dice"][0]
        assert certified_dice(pred, truth, k) == pytest.approx(plain, abs=1e-6)  # MONAI: float32
        assert smoothed_dice(pred, truth, k) == pytest.approx(plain, abs=1e-6)  # MONAI: float32


@pytest.mark.parametrize("k", [2, 3])
def test_certified_dice_bounds_every_filling_of_the_abstained_pixels(k):
    """Brute force: an abstained pixel may take any class under the perturbation; the bound is
    at most the worst Dice over all fillings (equal to it with two classes) and drops as
    pixels abstain."""
    rng = np.random.default_rng(10 + k)
    for _ in range(15):
        truth = rng.integers(0, k, (3, 4))
        pred = np.where(rng.random((3, 4)) < 0.8, truth, rng.integers(0, k, (3, 4)))
        free = rng.choice(12, size=4, replace=False)
        held = pred.copy().ravel()
        held[free] = ABSTAIN
        held = held.reshape(3, 4)
        worst = 1.0
        for fill in itertools.product(range(k), repeat=len(free)):
            filled = held.copy().ravel()
            filled[free] = fill
            worst = min(worst, per_image_metrics(filled.reshape(3, 4), truth, k)["dice"][0])
        bound = certified_dice(held, truth, k)
        assert bound <= worst + 1e-6  # MONAI: float32
        if k == 2:
            assert bound == pytest.approx(worst, abs=1e-6)
        assert bound <= certified_dice(pred, truth, k) + 1e-12
        assert smoothed_dice(held, truth, k) >= bound - 1e-6
    truth = np.zeros((4, 4), int)
    truth[1:3, 1:3] = 1
    pred = truth.copy()
    pred[0, 0] = ABSTAIN  # a truth-background pixel that may turn foreground
    assert certified_dice(pred, truth, 2) == pytest.approx(8 / 9)
    pred[1, 1] = ABSTAIN  # and a truth-foreground pixel that may be missed
    assert certified_dice(pred, truth, 2) == pytest.approx(6 / 8)
    with pytest.raises(ConfigError):
        certified_dice(pred, truth[:3], 2)


# ----------------------------------------------------------------------------- median smoothing


def _brute_force_indices(n: int, p_lo: float, p_hi: float, a: float) -> tuple[int, int]:
    """The definitions, by summing binomial probabilities term by term."""
    pmf_lo, pmf_hi = binom.pmf(np.arange(n + 1), n, p_lo), binom.pmf(np.arange(n + 1), n, p_hi)
    k_lo = max([k for k in range(1, n + 1) if pmf_lo[k:].sum() >= 1 - a], default=0)
    k_hi = min([k for k in range(1, n + 1) if pmf_hi[:k].sum() >= 1 - a], default=n + 1)
    return k_lo, k_hi


@pytest.mark.parametrize("n,sigma,radius,alpha", [(50, 0.25, 0.0, 0.05), (200, 0.5, 0.1, 0.01),
                                                  (1000, 0.25, 0.3, 0.001), (15, 1.0, 0.2, 0.1),
                                                  (40, 0.1, 0.25, 0.01)])
def test_order_statistic_indices_follow_the_binomial_definitions(n, sigma, radius, alpha):
    p_lo, p_hi = percentile_probabilities(sigma, radius)
    assert p_lo == pytest.approx(norm.cdf(norm.ppf(0.5) - radius / sigma))
    assert (p_lo, p_hi) == pytest.approx((1 - p_hi, norm.cdf(radius / sigma)))
    k_lo, k_hi = order_statistic_indices(n, p_lo, p_hi, alpha)
    assert (k_lo, k_hi) == _brute_force_indices(n, p_lo, p_hi, alpha)
    assert k_hi == n + 1 - k_lo  # the two tails mirror each other
    # and percentile_bounds reads those order statistics, at alpha / (2 d) for d outputs
    rng = np.random.default_rng(n)
    samples = rng.normal(size=(n, 3))
    lower, median, upper = percentile_bounds(samples, sigma, radius, 6 * alpha)
    ordered = np.sort(samples, axis=0)
    assert np.array_equal(lower, ordered[k_lo - 1] if k_lo else np.full(3, -np.inf))
    assert np.array_equal(upper, ordered[k_hi - 1] if k_hi <= n else np.full(3, np.inf))
    assert np.allclose(median, np.median(samples, axis=0))


def test_order_statistic_bounds_cover_the_percentiles_as_often_as_promised():
    """20 000 simulated sample sets: the lower bound falls under the true p- percentile with the
    frequency the binomial predicts (an index off by one would move it by ~0.05)."""
    n, alpha_each, radius = 60, 0.1, 0.2
    p_lo, p_hi = percentile_probabilities(1.0, radius)
    k_lo, k_hi = order_statistic_indices(n, p_lo, p_hi, alpha_each)
    ordered = np.sort(np.random.default_rng(0).normal(size=(n, 20_000)), axis=0)
    low_cover = np.mean(ordered[k_lo - 1] <= norm.ppf(p_lo))
    high_cover = np.mean(ordered[k_hi - 1] >= norm.ppf(p_hi))
    expected = binom.sf(k_lo - 1, n, p_lo)
    assert expected >= 1 - alpha_each and binom.sf(k_lo, n, p_lo) < 1 - alpha_each
    assert low_cover == pytest.approx(expected, abs=0.01)
    assert high_cover == pytest.approx(expected, abs=0.01)


def test_intervals_widen_with_the_radius_and_become_infinite():
    samples = np.random.default_rng(3).normal(size=(500, 4))
    radii = [0.0, 0.05, 0.1, 0.2, 0.4, 0.8]
    bounds = [percentile_bounds(samples, 0.25, r, 0.01) for r in radii]
    lows, highs = np.stack([b[0] for b in bounds]), np.stack([b[2] for b in bounds])
    assert (np.diff(lows, axis=0) <= 0).all() and (np.diff(highs, axis=0) >= 0).all()
    assert (np.diff(lows, axis=0) < 0).any()
    median = bounds[0][1]
    assert (lows[0] <= median).all() and (median <= highs[0]).all()
    # radius 0.8 = 3.2 sigma: the 0.07% percentile is beyond 500 samples
    assert np.isinf(lows[-1]).all() and np.isinf(highs[-1]).all()
    assert (lows[-1] < 0).all() and (highs[-1] > 0).all()
    # five samples cannot bound even the median at 99%: P(all five above it) = 1/32
    lo, med, hi = percentile_bounds(np.arange(5.0)[:, None], 1.0, 0.0, 0.01)
    assert lo[0] == -np.inf and hi[0] == np.inf and med[0] == 2.0


def test_missing_outputs_sort_as_infinities_and_nan_is_refused():
    col = np.concatenate([np.linspace(0, 1, 300), np.full(700, np.inf)])[:, None]
    lo, med, hi = percentile_bounds(col, 0.5, 0.0, 0.01)
    assert med[0] == np.inf and hi[0] == np.inf and lo[0] == np.inf  # missing on 70%
    few = np.concatenate([np.full(10, -np.inf), np.linspace(0, 1, 990)])[:, None]
    lo, med, hi = percentile_bounds(few, 0.5, 0.1, 0.01)
    assert np.isfinite([lo[0], med[0], hi[0]]).all() and lo[0] <= med[0] <= hi[0]
    both = np.array([[-np.inf], [np.inf]])
    assert percentile_bounds(both, 0.5, 0.0, 0.5)[1][0] == -np.inf  # not NaN
    with pytest.raises(ConfigError, match="NaN"):
        percentile_bounds(np.array([[0.0], [np.nan]]), 0.5, 0.0, 0.01)
    with pytest.raises(ConfigError, match="radius"):
        percentile_bounds(col, 0.5, -0.1, 0.01)


def _half_means(batch: torch.Tensor) -> torch.Tensor:
    """(B,2): the mean of the left and of the right half of channel 0."""
    w = batch.shape[-1] // 2
    return torch.stack([batch[:, 0, :, :w].mean(dim=(1, 2)), batch[:, 0, :, w:].mean(dim=(1, 2))],
                       dim=1)


def test_the_certified_interval_holds_the_perturbed_images_smoothed_median():
    """fn = the two half-image means of an 8x8 image (32 pixels each): under noise each is its
    clean value plus N(0, sigma^2 / 32), so the smoothed median is the clean mean, and a
    perturbation of L2 norm r spent on one half moves that half's by r / sqrt(32), the most any
    such perturbation can. Median smoothing's interval at r is exactly that shift wide (up to
    the order statistics' slack), so it must hold the perturbed value and not be much wider."""
    sigma, n = 0.5, 2000
    x = torch.rand(1, 8, 8, generator=torch.Generator().manual_seed(0))
    smooth = MedianSmoother(_half_means, sigma, batch_size=250, seed=1)
    cert = smooth.certify(x, n, 0.001, [0.0, 0.1, 0.25, 0.5], key=3)
    clean = _half_means(x[None])[0].double().numpy()
    spread = sigma / np.sqrt(32)
    assert np.allclose(cert.median, clean, atol=0.15 * spread)
    for i, r in enumerate(cert.radii):
        lo, hi = cert.interval(r)
        assert np.array_equal(lo, cert.lower[i]) and np.array_equal(hi, cert.upper[i])
        for half in (0, 1):
            for sign in (-1, 1):
                e = torch.zeros_like(x)
                cols = slice(0, 4) if half == 0 else slice(4, 8)
                e[0, :, cols] = sign * r / np.sqrt(32)  # ||e||_2 = r
                assert float(e.norm()) == pytest.approx(r, abs=1e-6)
                moved = clean[half] + sign * r / np.sqrt(32)
                assert lo[half] <= moved <= hi[half]
                if r > 0:  # and the estimate from samples of the perturbed image agrees
                    est = np.median(smooth.samples(x + e, 1000, key=9)[:, half])
                    assert lo[half] - 0.1 * spread <= est <= hi[half] + 0.1 * spread
            assert hi[half] - (clean[half] + r / np.sqrt(32)) < 0.3 * spread
            assert (clean[half] - r / np.sqrt(32)) - lo[half] < 0.3 * spread
    with pytest.raises(ConfigError, match="not certified"):
        cert.interval(0.3)


def test_median_samples_follow_the_key_not_the_batch_size():
    def pixels(batch: torch.Tensor) -> np.ndarray:  # elementwise: no reduction order to vary
        return batch[:, 0, [1, 3], [2, 0]].numpy()

    x = torch.rand(1, 4, 4, generator=torch.Generator().manual_seed(2))
    before = x.clone()
    a = MedianSmoother(pixels, 0.3, batch_size=7, seed=5).samples(x, 60, key=1)
    b = MedianSmoother(pixels, 0.3, batch_size=32, seed=5).samples(x, 60, key=1)
    assert a.shape == (60, 2) and np.array_equal(a, b) and torch.equal(x, before)
    assert not np.array_equal(a, MedianSmoother(pixels, 0.3, seed=5).samples(x, 60, key=2))
    assert not np.array_equal(a, MedianSmoother(pixels, 0.3, seed=6).samples(x, 60, key=1))
    # the noise is Gaussian with standard deviation sigma around the pixel
    many = MedianSmoother(pixels, 0.3, batch_size=500, seed=5).samples(x, 4000, key=1)
    assert np.allclose(many.std(axis=0), 0.3, rtol=0.05)
    assert np.allclose(many.mean(axis=0), x[0, [1, 3], [2, 0]].numpy(), atol=0.03)


def test_radial_error_bound_on_hand_cases():
    lower = np.array([[0.0, 0.0], [0.0, 0.0], [0.0, -np.inf]])
    upper = np.array([[2.0, 1.0], [2.0, 1.0], [1.0, 1.0]])
    truth = np.array([[1.0, 0.0], [5.0, 5.0], [0.5, 0.5]])
    bound = radial_error_bound(lower, upper, truth)
    assert bound[0] == pytest.approx(np.sqrt(2)) and bound[1] == pytest.approx(5 * np.sqrt(2))
    assert bound[2] == np.inf
    rng = np.random.default_rng(0)  # every point of the box is at most that far
    pts = lower[:2] + rng.random((1000, 2, 2)) * (upper[:2] - lower[:2])
    assert (np.linalg.norm(pts - truth[:2], axis=2) <= bound[:2] + 1e-12).all()
    with pytest.raises(ConfigError):
        radial_error_bound(upper, lower, truth)


def test_iou_lower_bound_on_hand_cases():
    t = np.array([0.0, 0.0, 10.0, 10.0])
    assert iou_lower_bound(t, t, t) == 1.0
    b = np.array([1.0, 1.0, 3.0, 3.0])
    assert iou_lower_bound(b, b, np.array([0.0, 0.0, 2.0, 2.0])) == pytest.approx(1 / 7)
    # smallest box (2, 2, 8, 8) inside, largest (0, 0, 10, 10) = the truth: 36 / 100
    assert iou_lower_bound([0, 0, 8, 8], [2, 2, 10, 10], t) == pytest.approx(0.36)
    # largest box (-2, 0, 10, 12) holds the truth: union 144
    assert iou_lower_bound([-2, 0, 8, 8], [2, 2, 10, 12], t) == pytest.approx(36 / 144)
    assert iou_lower_bound([0, 0, 8, 8], [9, 2, 10, 10], t) == 0.0  # x0 may pass x1: empty
    assert iou_lower_bound([0, 0, 8, 8], [2, 2, np.inf, 10], t) == 0.0  # unbounded
    assert iou_lower_bound([0, 0, -np.inf, -np.inf], [np.inf, np.inf, 10, 10], t) == 0.0
    assert iou_lower_bound([20, 20, 30, 30], [20, 20, 30, 30], t) == 0.0  # disjoint


def test_iou_lower_bound_is_below_every_box_inside_the_intervals():
    rng = np.random.default_rng(4)
    for _ in range(50):
        (x0, x1), (y0, y1) = np.sort(rng.uniform(0, 20, 2)), np.sort(rng.uniform(0, 20, 2))
        truth = np.array([x0, y0, x1 + 1, y1 + 1])
        centre = truth + rng.normal(0, 1, 4)
        lower, upper = centre - rng.uniform(0, 2, 4), centre + rng.uniform(0, 2, 4)
        bound = iou_lower_bound(lower, upper, truth)
        boxes = lower + rng.random((500, 4)) * (upper - lower)
        boxes = np.concatenate([boxes, [[upper[0], upper[1], lower[2], lower[3]],
                                        [lower[0], lower[1], upper[2], upper[3]]]])
        assert 0 <= bound <= box_iou(boxes, truth[None])[:, 0].min() + 1e-12


def test_match_to_reference_on_hand_cases():
    refs = np.array([[0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 10, 10]], dtype=float)
    ref_labels = np.array([1, 2, 2])
    boxes = np.array([[1, 1, 10, 10],     # class 1, IoU 0.81, confident
                      [0, 0, 10, 10],     # class 1, IoU 1, not confident
                      [0, 0, 9, 10],      # class 1, IoU 0.9, confident: the best
                      [29, 29, 40, 40],   # class 2, IoU 1/220 < min_iou
                      [2, 2, 12, 12]],    # class 2, IoU 64/136, for the third reference
                     dtype=float)
    labels = np.array([1, 1, 1, 2, 2])
    scores = np.array([0.9, 0.3, 0.6, 0.99, 0.5])
    out = match_to_reference(boxes, labels, scores, refs, ref_labels, 0.5, 0.1)
    assert out.shape == (3, 4)
    assert np.array_equal(out[0], boxes[2]) and np.array_equal(out[2], boxes[4])
    assert np.array_equal(out[1], MISSING_BOX)
    # min_iou 0: the class-2 box far off now matches the second reference
    loose = match_to_reference(boxes, labels, scores, refs, ref_labels, 0.5, 0.0)
    assert np.array_equal(loose[1], boxes[3])
    # equal IoU: the higher score wins (over a slightly worse fit with the same score)
    twins = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [1e-6, 0, 10, 10]], dtype=float)
    got = match_to_reference(twins, [1, 1, 1], [0.7, 0.8, 0.8], refs[:1], [1], 0.5, 0.1)
    assert np.array_equal(got[0], twins[1])
    got = match_to_reference(twins, [1, 1, 1], [0.7, 0.6, 0.8], refs[:1], [1], 0.5, 0.1)
    assert np.array_equal(got[0], twins[0])
    none = match_to_reference(np.zeros((0, 4)), [], [], refs, ref_labels, 0.5, 0.1)
    assert np.array_equal(none, np.tile(MISSING_BOX, (3, 1)))
    with pytest.raises(ConfigError):
        match_to_reference(boxes, labels[:2], scores, refs, ref_labels, 0.5, 0.1)


def test_a_box_missed_on_most_noisy_samples_cannot_be_certified():
    """Matched coordinates over 100 samples, the box missing on 60: its certified bounds are
    infinite and its IoU bound 0; found on all, they are finite and the bound positive."""
    found = np.array([0.0, 0.0, 10.0, 10.0]) + np.random.default_rng(0).normal(0, 0.2, (100, 4))
    missing = found.copy()
    missing[:60] = MISSING_BOX
    truth = np.array([0.0, 0.0, 10.0, 10.0])
    lo, _, hi = percentile_bounds(missing, 0.25, 0.1, 0.01)
    assert (hi[:2] == np.inf).all() and (lo[2:] == -np.inf).all()
    assert iou_lower_bound(lo, hi, truth) == 0.0
    lo, _, hi = percentile_bounds(found, 0.25, 0.1, 0.01)
    assert np.isfinite(lo).all() and np.isfinite(hi).all()
    assert 0.8 < iou_lower_bound(lo, hi, truth) < 1.0
