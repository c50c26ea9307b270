"""Landmark and detection models' certificates as store rows and summaries (median smoothing,
Chiang et al. 2020; the maths is ``certify.median``).

Landmarks: the median-smoothed coordinates of every landmark, bounded jointly at each radius;
each landmark's certified radial error is the farthest point of its box of bounds from the
truth (in mm where the data gives pixel sizes, else in original pixels), and an image's bound
is their mean: no perturbation within the radius can make the smoothed model's MRE on it
larger. Detection: per true box (difficult ones aside, as the reported mAP ignores them) the
median-smoothed coordinates of the detection matched to it; the box counts as certified found
at a radius when the worst IoU its bounds allow is still >= 0.5.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from medrobust.certify.attack import attack_smoothed, median_violation
from medrobust.certify.median import (
    MedianSmoother,
    box_iou,
    iou_lower_bound,
    match_to_reference,
    radial_error_bound,
)
from medrobust.metrics.mean_interval import mean_ci95
from medrobust.metrics.proportion import proportion
from medrobust.store import ResultTable

#: a detection counts from this score, as the detection rows' "confident" detections
SCORE_THRESHOLD = 0.3
#: the IoU at which a true box counts as found (the breakdown's and mAP@0.5's)
FOUND_IOU = 0.5
#: the least IoU at which a detection is read as "the one matched to" a true box at all
MATCH_IOU = 0.1

LANDMARK_TABLE = ResultTable(
    "certify_landmark_results",
    {
        "dataset_index": "INTEGER",
        "unit": "TEXT",
        "clean_mre": "REAL",
        "smoothed_mre": "REAL",
        "by_radius": "JSON",
        "n": "INTEGER",
        "seconds": "REAL",
    },
)

DETECTION_TABLE = ResultTable(
    "certify_detection_results",
    {
        "dataset_index": "INTEGER",
        "boxes": "INTEGER",
        "clean_found": "INTEGER",
        "smoothed_found": "INTEGER",
        "by_radius": "JSON",
        "n": "INTEGER",
        "seconds": "REAL",
    },
)


# -- landmarks ----------------------------------------------------------------------------------

def _original(points: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """(K,2) input-pixel coordinates in original pixels (``scale`` = resized / original)."""
    return np.asarray(points, dtype=np.float64) / np.asarray(scale, dtype=np.float64)[None, :]


def landmark_certifier(model: Any, s: Any) -> Callable[[Any, int], dict[str, Any]]:
    """(dataset, index) -> the image's row: MRE of the base model and of the smoothed median,
    and per radius the certified MRE bound, the largest landmark's bound and the share of
    landmarks certified within 2 units (the SDR@2 mm radius)."""
    k = int(model.num_landmarks)
    smooth = _landmark_smoother(model, s)

    def certify_one(dataset: Any, i: int) -> dict[str, Any]:
        x = model.to_tensor(dataset.images[i:i + 1])
        scale = np.asarray(dataset.scales[i], dtype=np.float64)
        mm = None if dataset.pixel_size_mm is None else float(dataset.pixel_size_mm[i])
        to_unit = 1.0 if mm is None else mm
        truth = _original(dataset.landmarks[i], scale)
        clean = _original(model.predict_tensor(x)[0].numpy(), scale)
        cert = smooth.certify(x[0], s.n, s.alpha, s.radii, key=int(i))
        median = _original(cert.median.reshape(k, 2), scale)

        def mre(pred: np.ndarray) -> float:
            return float(np.linalg.norm(pred - truth, axis=1).mean() * to_unit)

        by_radius = []
        for r in s.radii:
            lo, hi = cert.interval(r)
            bound = radial_error_bound(_original(lo.reshape(k, 2), scale),
                                       _original(hi.reshape(k, 2), scale), truth) * to_unit
            by_radius.append({"radius": float(r), "mre_bound": float(bound.mean()),
                              "max_bound": float(bound.max()),
                              "within_2": float((bound <= 2.0).mean())})
        return {"unit": "px" if mm is None else "mm", "clean_mre": mre(clean),
                "smoothed_mre": mre(median), "by_radius": by_radius, "n": s.n}

    return certify_one


def _landmark_smoother(model: Any, s: Any) -> MedianSmoother:
    def points(batch: torch.Tensor) -> torch.Tensor:
        return model.predict_tensor(batch, batch_size=s.batch_size).reshape(batch.shape[0], -1)

    return MedianSmoother(points, s.sigma, batch_size=s.batch_size, seed=s.seed,
                          device=model.device)


#: the noise stream of a cross-check's samples at the attacked image (apart from the
#: certificate's own, whose key is the dataset index)
CHECK_KEY = 10**9


def landmark_check(model: Any, s: Any, c: Any, loss: Any
                   ) -> Callable[[Any, int, Any, dict[str, Any], float], dict[str, Any]]:
    """(dataset, index, targets, certificate row, radius) -> the cross-check at that radius:
    PGD on the noise-averaged landmark loss (``attack_smoothed``), then the smoothed median at
    the attacked image. A violation: some coordinate's median lies, beyond its own confidence
    interval, outside the certified interval; ``attacked`` is that median's MRE beside the
    certified MRE bound."""
    k = int(model.num_landmarks)
    smooth = _landmark_smoother(model, s)

    def check_one(dataset: Any, i: int, targets: Any, row: dict[str, Any],
                  radius: float) -> dict[str, Any]:
        x = model.to_tensor(dataset.images[i:i + 1])
        scale = np.asarray(dataset.scales[i], dtype=np.float64)
        to_unit = 1.0 if dataset.pixel_size_mm is None else float(dataset.pixel_size_mm[i])
        lo, hi = smooth.certify(x[0], s.n, s.alpha, (radius,), key=int(i)).interval(radius)
        adv = attack_smoothed(model, loss, s.sigma, c.steps, c.samples, s.seed, x, targets,
                              radius, i)
        samples = smooth.samples(adv[0], s.n, key=CHECK_KEY + int(i))
        bad = median_violation(samples, s.sigma, s.alpha, lo, hi)
        median = _original(np.median(samples, axis=0).reshape(k, 2), scale)
        truth = _original(dataset.landmarks[i], scale)
        return {"attacked": float(np.linalg.norm(median - truth, axis=1).mean() * to_unit),
                "certified": _at(row, radius, "mre_bound"), "violation": int(bad.sum()),
                "l2": float((adv - x).flatten().norm())}

    return check_one


def _at(row: dict[str, Any], radius: float, key: str) -> float | None:
    """A certificate row's value at ``radius``."""
    return next((c[key] for c in row["by_radius"] if abs(c["radius"] - radius) < 1e-12), None)


def landmark_summary(rows: list[dict[str, Any]], settings: Any) -> dict[str, Any]:
    """Per radius the mean certified MRE bound over images (bootstrap 95 % interval; infinite
    where some landmark could not be bounded at all) and the share of landmarks certified
    within 2 units."""
    cells = []
    for j, r in enumerate(settings.radii):
        bounds = [row["by_radius"][j]["mre_bound"] for row in rows]
        cells.append({"radius": float(r), "value": _mean(bounds), "ci95": mean_ci95(bounds),
                      "within_2": _mean([row["by_radius"][j]["within_2"] for row in rows]),
                      "unbounded_images": int(sum(not np.isfinite(b) for b in bounds))})
    unit = rows[0]["unit"] if rows else ""
    return {"images": len(rows), "sigma": settings.sigma, "n": settings.n,
            "alpha": settings.alpha, "metric": f"MRE bound ({unit})", "unit": unit,
            "lower_is_better": True, "certified": cells,
            "clean_mre": _mean([row["clean_mre"] for row in rows]),
            "smoothed_mre": _mean([row["smoothed_mre"] for row in rows]),
            # the median always exists: no landmark abstains; an unbounded one is the analogue
            "abstain_rate": (cells[-1]["unbounded_images"] / len(rows)) if rows and cells
            else None,
            "abstain_of": f"images with an unbounded landmark at L2 {settings.radii[-1]:g}"
            if settings.radii else "images"}


def landmark_describe(s: dict[str, Any]) -> list[str]:
    unit = s.get("unit", "")
    out = [f"MRE without noise {_fmt(s.get('clean_mre'))} {unit}, smoothed median "
           f"{_fmt(s.get('smoothed_mre'))} {unit}"]
    for c in s.get("certified") or []:
        lo, hi = c["ci95"] or (None, None)
        out.append(f"certified MRE bound at L2 {c['radius']:g}: {_fmt(c['value'])} {unit} (95 % "
                   f"CI {_fmt(lo)}-{_fmt(hi)}); landmarks certified within 2 {unit}: "
                   f"{_fmt(c['within_2'])}")
    return out


# -- detection ----------------------------------------------------------------------------------

def detection_certifier(model: Any, s: Any) -> Callable[[Any, int], dict[str, Any]]:
    """(dataset, index) -> the image's row: true boxes found at IoU 0.5 by the base model and
    by the smoothed median boxes, and per radius the boxes certified found and the mean of
    their IoU lower bounds."""

    def certify_one(dataset: Any, i: int) -> dict[str, Any]:
        truth, matched, smooth = _box_smoother(model, s, dataset, i)
        x = model.to_tensor(dataset.images[i:i + 1])
        row: dict[str, Any] = {"boxes": len(truth), "n": s.n}
        if len(truth) == 0:  # nothing to find: nothing to certify
            return {**row, "clean_found": 0, "smoothed_found": 0,
                    "by_radius": [{"radius": float(r), "certified": 0, "mean_iou_bound": None}
                                  for r in s.radii]}
        cert = smooth.certify(x[0], s.n, s.alpha, s.radii, key=int(i))
        clean = matched(x)[0].reshape(-1, 4)
        median = cert.median.reshape(-1, 4)
        by_radius = []
        for r in s.radii:
            lo, hi = (b.reshape(-1, 4) for b in cert.interval(r))
            ious = [iou_lower_bound(lo[j], hi[j], truth[j]) for j in range(len(truth))]
            by_radius.append({"radius": float(r),
                              "certified": int(sum(v >= FOUND_IOU for v in ious)),
                              "mean_iou_bound": float(np.mean(ious))})
        return {**row, "clean_found": _found(clean, truth),
                "smoothed_found": _found(median, truth), "by_radius": by_radius}

    return certify_one


def _box_smoother(model: Any, s: Any, dataset: Any, i: int
                  ) -> tuple[np.ndarray, Callable[[torch.Tensor], np.ndarray], MedianSmoother]:
    """Image ``i``'s true boxes (difficult ones aside), the function reading each one's
    matched detection, and its median smoother."""
    keep = ~np.asarray(dataset.difficult[i], dtype=bool)
    truth = np.asarray(dataset.boxes[i], dtype=np.float64).reshape(-1, 4)[keep]
    labels = np.asarray(dataset.labels[i], dtype=np.int64)[keep]

    def matched(batch: torch.Tensor) -> np.ndarray:
        return np.stack([match_to_reference(b, lab, sc, truth, labels, SCORE_THRESHOLD,
                                            MATCH_IOU).reshape(-1)
                         for b, sc, lab in model.predict_tensor(batch)])

    return truth, matched, MedianSmoother(matched, s.sigma, batch_size=s.batch_size,
                                          seed=s.seed, device=model.device)


def detection_check(model: Any, s: Any, c: Any, loss: Any
                    ) -> Callable[[Any, int, Any, dict[str, Any], float], dict[str, Any]]:
    """The cross-check of box certificates at one radius (as ``landmark_check``): a violation
    is a box coordinate whose attacked median lies, beyond doubt, outside its certified
    interval; ``attacked`` is how many true boxes the attacked medians still find, beside the
    count certified found."""

    def check_one(dataset: Any, i: int, targets: Any, row: dict[str, Any],
                  radius: float) -> dict[str, Any]:
        truth, _, smooth = _box_smoother(model, s, dataset, i)
        if len(truth) == 0:
            return {"attacked": 0.0, "certified": 0.0, "violation": 0, "l2": 0.0}
        x = model.to_tensor(dataset.images[i:i + 1])
        lo, hi = smooth.certify(x[0], s.n, s.alpha, (radius,), key=int(i)).interval(radius)
        adv = attack_smoothed(model, loss, s.sigma, c.steps, c.samples, s.seed, x, targets,
                              radius, i)
        samples = smooth.samples(adv[0], s.n, key=CHECK_KEY + int(i))
        # a missing box is +-inf in its samples: compare only where both are finite or equal
        with np.errstate(invalid="ignore"):
            bad = median_violation(samples, s.sigma, s.alpha, lo, hi)
        median = np.median(samples, axis=0).reshape(-1, 4)
        return {"attacked": float(_found(median, truth)),
                "certified": float(_at(row, radius, "certified") or 0),
                "violation": int(bad.sum()), "l2": float((adv - x).flatten().norm())}

    return check_one


def _found(boxes: np.ndarray, truth: np.ndarray) -> int:
    """True boxes whose matched box overlaps them at IoU >= 0.5 (row j against truth j)."""
    return int(sum(box_iou(boxes[j:j + 1], truth[j:j + 1])[0, 0] >= FOUND_IOU
                   for j in range(len(truth))))


def detection_summary(rows: list[dict[str, Any]], settings: Any) -> dict[str, Any]:
    """Per radius the share of true boxes certified found at IoU 0.5 (Wilson 95 % interval over
    boxes, which treats the boxes of one image as independent: read it as indicative)."""
    boxes = sum(int(row["boxes"]) for row in rows)
    cells = []
    for j, r in enumerate(settings.radii):
        p = proportion(sum(int(row["by_radius"][j]["certified"]) for row in rows), boxes)
        cells.append({"radius": float(r), "value": p.rate, "ci95": p.ci95,
                      "certified": p.k, "boxes": boxes})
    return {"images": len(rows), "sigma": settings.sigma, "n": settings.n,
            "alpha": settings.alpha, "metric": "share of true boxes found (IoU 0.5)",
            "metric_is_share": True, "certified": cells, "boxes": boxes,
            "clean_found": proportion(sum(int(r["clean_found"]) for r in rows), boxes).rate,
            "smoothed_found": proportion(sum(int(r["smoothed_found"]) for r in rows),
                                         boxes).rate,
            "abstain_rate": None if not cells or cells[0]["value"] is None else
            1.0 - cells[0]["value"],
            "abstain_of": f"true boxes not certified at L2 {settings.radii[0]:g}"
            if settings.radii else "boxes"}


def detection_describe(s: dict[str, Any]) -> list[str]:
    out = [f"{s.get('boxes', 0)} true boxes; found at IoU 0.5 without noise "
           f"{_fmt(s.get('clean_found'))}, by the smoothed median boxes "
           f"{_fmt(s.get('smoothed_found'))}"]
    for c in s.get("certified") or []:
        lo, hi = c["ci95"] or (None, None)
        out.append(f"certified found at L2 {c['radius']:g}: {_fmt(c['value'])} "
                   f"({c['certified']}/{c['boxes']}, 95 % CI {_fmt(lo)}-{_fmt(hi)})")
    return out


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if len(values) else None


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"
