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

    def points(batch: torch.Tensor) -> torch.Tensor:
        return model.predict_tensor(batch, batch_size=s.batch_size).reshape(batch.shape[0], -1)

    smooth = MedianSmoother(points, s.sigma, batch_size=s.batch_size, seed=s.seed,
                            device=model.device)

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
        keep = ~np.asarray(dataset.difficult[i], dtype=bool)
        truth = np.asarray(dataset.boxes[i], dtype=np.float64).reshape(-1, 4)[keep]
        labels = np.asarray(dataset.labels[i], dtype=np.int64)[keep]
        x = model.to_tensor(dataset.images[i:i + 1])

        def matched(batch: torch.Tensor) -> np.ndarray:
            return np.stack([match_to_reference(b, lab, sc, truth, labels, SCORE_THRESHOLD,
                                                MATCH_IOU).reshape(-1)
                             for b, sc, lab in model.predict_tensor(batch)])

        row: dict[str, Any] = {"boxes": len(truth), "n": s.n}
        if len(truth) == 0:  # nothing to find: nothing to certify
            return {**row, "clean_found": 0, "smoothed_found": 0,
                    "by_radius": [{"radius": float(r), "certified": 0, "mean_iou_bound": None}
                                  for r in s.radii]}
        smooth = MedianSmoother(matched, s.sigma, batch_size=s.batch_size, seed=s.seed,
                                device=model.device)
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
            "alpha": settings.alpha, "metric": "boxes certified found (IoU 0.5)",
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
