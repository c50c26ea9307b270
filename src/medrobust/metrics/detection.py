"""COCO-style detection mAP (mAP@0.5:0.95, mAP@0.5, per-class AP) with pycocotools.

pycocotools is the reference implementation (numpy only; torchmetrics' mAP needs torchvision).
COCO objects are built in memory from the accumulated per-image boxes, and its prints are
silenced. Boxes are xyxy in any consistent pixel frame (x = column). Note: the adaptive-margin
paper's YOLOv5 code computes its own 101-point AP at conf 0.001 / NMS 0.6; COCO's numbers are
the standard ones and close to it, not identical.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from medrobust.metrics.base import CumulativeMetric

ArrayLike = np.ndarray | torch.Tensor | Sequence[Any]


def _np(a: ArrayLike, dtype: type, cols: int | None = None) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    arr = np.asarray(a, dtype=dtype)
    return arr.reshape(-1, cols) if cols else arr.reshape(-1)


class MeanAveragePrecision(CumulativeMetric):
    """COCO mAP over every image added since ``reset``.

    ``update(pred_boxes, pred_scores, pred_labels, true_boxes, true_labels, true_difficult=None)``
    takes one batch as per-image lists; ``aggregate()`` returns ``{"map", "map50", "per_class",
    "n"}``. ``per_class`` maps each class name to its AP@0.5:0.95, None for classes with no
    ground truth. VOC-difficult truths are COCO crowd regions: detections on them neither count
    nor hurt. At most ``max_detections`` per image are scored (COCO: 100).
    """

    def __init__(self, class_names: Sequence[str], max_detections: int = 100) -> None:
        self.class_names = tuple(class_names)
        self.max_detections = int(max_detections)
        self._images: list[tuple[np.ndarray, ...]] = []
        super().__init__()

    def reset(self) -> None:
        super().reset()
        self._images = []

    def update(self, pred_boxes: Sequence[ArrayLike], pred_scores: Sequence[ArrayLike],
               pred_labels: Sequence[ArrayLike], true_boxes: Sequence[ArrayLike],
               true_labels: Sequence[ArrayLike],
               true_difficult: Sequence[ArrayLike] | None = None) -> None:
        n = len(true_boxes)
        lists = (pred_boxes, pred_scores, pred_labels, true_labels)
        if any(len(x) != n for x in lists) or (true_difficult is not None and len(true_difficult) != n):
            raise ValueError("pred and true lists must hold one entry per image")
        for i in range(n):
            pb, ps, pl = (_np(pred_boxes[i], np.float64, 4), _np(pred_scores[i], np.float64),
                          _np(pred_labels[i], np.int64))
            tb, tl = _np(true_boxes[i], np.float64, 4), _np(true_labels[i], np.int64)
            td = (np.zeros(len(tl), bool) if true_difficult is None
                  else _np(true_difficult[i], bool))
            if not (len(pb) == len(ps) == len(pl)) or not (len(tb) == len(tl) == len(td)):
                raise ValueError(f"image {i}: boxes, scores and labels differ in length")
            self._images.append((pb, ps, pl, tb, tl, td))

    def _coco(self) -> tuple[Any, Any]:
        from pycocotools.coco import COCO

        images = [{"id": i + 1} for i in range(len(self._images))]
        categories = [{"id": c + 1, "name": n} for c, n in enumerate(self.class_names)]
        gts: list[dict[str, Any]] = []
        dts: list[dict[str, Any]] = []
        for i, (pb, ps, pl, tb, tl, td) in enumerate(self._images):
            for box, lab, diff in zip(tb, tl, td, strict=True):
                w, h = box[2] - box[0], box[3] - box[1]
                gts.append({"id": len(gts) + 1, "image_id": i + 1, "category_id": int(lab) + 1,
                            "bbox": [box[0], box[1], w, h], "area": w * h,
                            "iscrowd": int(diff)})
            for box, score, lab in zip(pb, ps, pl, strict=True):
                w, h = box[2] - box[0], box[3] - box[1]
                dts.append({"id": len(dts) + 1, "image_id": i + 1, "category_id": int(lab) + 1,
                            "bbox": [box[0], box[1], w, h], "area": w * h, "score": float(score),
                            "iscrowd": 0})
        gt, dt = COCO(), COCO()
        gt.dataset = {"images": images, "categories": categories, "annotations": gts}
        dt.dataset = {"images": images, "categories": categories, "annotations": dts}
        gt.createIndex()
        dt.createIndex()
        return gt, dt

    def aggregate(self) -> dict[str, Any]:
        from pycocotools.cocoeval import COCOeval

        n = len(self._images)
        empty = {"map": 0.0, "map50": 0.0, "per_class": dict.fromkeys(self.class_names), "n": n}
        if n == 0 or not any(len(im[3]) for im in self._images):
            return empty
        with contextlib.redirect_stdout(io.StringIO()):
            gt, dt = self._coco()
            ev = COCOeval(gt, dt, iouType="bbox")
            ev.params.maxDets = [1, 10, self.max_detections]
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        precision = ev.eval["precision"]  # (T iou, R recall, K class, A area, M maxDets)
        per_class: dict[str, float | None] = {}
        for k, name in enumerate(self.class_names):
            p = precision[:, :, k, 0, -1]
            p = p[p > -1]
            per_class[name] = float(p.mean()) if p.size else None
        stats = [max(float(s), 0.0) for s in ev.stats[:2]]
        return {"map": stats[0], "map50": stats[1], "per_class": per_class, "n": n}


#: COCO's IoU thresholds and recall points
IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_POINTS = np.linspace(0.0, 1.0, 101)


def image_map(pred_boxes: ArrayLike, pred_scores: ArrayLike, pred_labels: ArrayLike,
              true_boxes: ArrayLike, true_labels: ArrayLike,
              true_difficult: ArrayLike | None = None, max_detections: int = 100) -> float:
    """COCO mAP@0.5:0.95 of ONE image: the number ``MeanAveragePrecision`` gives for it alone
    (pycocotools' matching, crowd rules and 101-point interpolation, area range "all").

    Why not pycocotools here: the worst-case ensemble's Square member scores every query image
    by its mAP, thousands of times per image, and building COCO objects costs most of that;
    this is the same computation in NumPy (tests hold it equal to pycocotools). Difficult
    truths are crowd regions: a detection on one (IoU = intersection / detection area) is
    neither a hit nor a miss. Classes without a non-difficult truth do not count; 0 when no
    class counts."""
    pb, ps, pl = _np(pred_boxes, np.float64, 4), _np(pred_scores, np.float64), \
        _np(pred_labels, np.int64)
    tb, tl = _np(true_boxes, np.float64, 4), _np(true_labels, np.int64)
    td = np.zeros(len(tl), bool) if true_difficult is None else _np(true_difficult, bool)
    # COCO ignores a truth that is a crowd or whose area falls outside the range (a box with
    # negative area), and an unmatched detection whose area does
    ignore = td | (_area(tb) < 0)
    aps = []
    for c in np.unique(tl[~ignore]):
        g, crowd, ig = tb[tl == c], td[tl == c], ignore[tl == c]
        order = np.argsort(ig, kind="mergesort")  # COCO: truths not ignored first
        g, crowd, ig = g[order], crowd[order], ig[order]
        d_idx = np.argsort(-ps[pl == c], kind="mergesort")[:max_detections]
        d = pb[pl == c][d_idx]
        aps.append(_class_ap(d, g, crowd, ig))
    return float(np.mean(aps)) if aps else 0.0


def _area(b: np.ndarray) -> np.ndarray:
    return (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])


def _coco_iou(d: np.ndarray, g: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """(D, G) IoU as pycocotools computes it: over the detection's area for crowd truths."""
    lt = np.maximum(d[:, None, :2], g[None, :, :2])
    rb = np.minimum(d[:, None, 2:], g[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    area_d = (d[:, 2] - d[:, 0]) * (d[:, 3] - d[:, 1])
    area_g = (g[:, 2] - g[:, 0]) * (g[:, 3] - g[:, 1])
    union = np.where(crowd[None, :], area_d[:, None], area_d[:, None] + area_g[None, :] - inter)
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _class_ap(d: np.ndarray, g: np.ndarray, crowd: np.ndarray, ig: np.ndarray) -> float:
    """COCO AP of one class on one image, averaged over the ten IoU thresholds (``crowd``:
    crowd truths, matched by intersection over detection area and any number of times;
    ``ig``: truths that do not count, crowds included)."""
    npig = int((~ig).sum())
    if len(d) == 0:
        return 0.0
    ious = _coco_iou(d, g, crowd)
    out_of_range = _area(d) < 0
    total = 0.0
    for t in IOU_THRESHOLDS:
        matched = np.zeros(len(g), bool)
        tp = np.zeros(len(d), bool)
        ignored = np.zeros(len(d), bool)
        for i in range(len(d)):  # COCOeval.evaluateImg's greedy matching, in score order
            best, m = min(t, 1 - 1e-10), -1
            for j in range(len(g)):
                if matched[j] and not crowd[j]:
                    continue
                if m > -1 and not ig[m] and ig[j]:
                    break
                if ious[i, j] < best:
                    continue
                best, m = ious[i, j], j
            if m == -1:
                ignored[i] = out_of_range[i]
                continue
            ignored[i] = ig[m]
            tp[i] = not ig[m]
            matched[m] = True
        keep = ~ignored
        tps, fps = np.cumsum(tp[keep]), np.cumsum(~tp[keep])
        if len(tps) == 0:
            continue
        recall = tps / npig
        precision = tps / (tps + fps + np.spacing(1))
        precision = np.maximum.accumulate(precision[::-1])[::-1]  # COCO's envelope
        at = np.searchsorted(recall, RECALL_POINTS, side="left")
        total += float(np.where(at < len(precision),
                                precision[np.minimum(at, len(precision) - 1)], 0.0).mean())
    return total / len(IOU_THRESHOLDS)


#: the score from which a detection counts as made (what an attack summary counts and shows)
CONFIDENT_SCORE = 0.3

#: the counts ``damage_breakdown`` returns, in order
BREAKDOWN_KEYS = ("objects", "found_clean", "found_adv", "objects_lost", "class_flips", "ghosts",
                  "clean_false_positives", "adv_false_positives")


def box_iou(a: ArrayLike, b: ArrayLike) -> np.ndarray:
    """IoU of every xyxy box in ``a`` (n, 4) with every one in ``b`` (m, 4): (n, m)."""
    a, b = _np(a, np.float64, 4), _np(b, np.float64, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0, None).prod(axis=1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0, None).prod(axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def damage_breakdown(clean: tuple[ArrayLike, ArrayLike, ArrayLike],
                     adv: tuple[ArrayLike, ArrayLike, ArrayLike], true_boxes: ArrayLike,
                     true_labels: ArrayLike, true_difficult: ArrayLike | None = None,
                     iou_threshold: float = 0.5,
                     score_threshold: float = CONFIDENT_SCORE) -> dict[str, int]:
    """How an attack hurt one image's detections, localisation and classification apart.

    Why: mAP alone mixes objects that vanish, objects that change class and detections that
    appear from nothing; each points to a different failure. ``clean`` and ``adv`` are
    (boxes (n, 4) xyxy, scores (n,), labels (n,)); only detections scoring at least
    ``score_threshold`` count, and "covers" means IoU >= ``iou_threshold``. Difficult truths
    are not objects (COCO crowd regions, as in the mAP), but a detection covering one is no
    ghost either. Counts (each a plain int):

    - ``objects``: true, non-difficult objects; ``found_clean`` / ``found_adv``: those covered
      by a detection of any class before / after the attack;
    - ``objects_lost``: found clean and covered by no detection of any class after;
    - ``class_flips``: covered clean by a detection of its own class, after covered only by
      detections of other classes (so a flip is never also a loss);
    - ``clean_false_positives`` / ``adv_false_positives``: detections covering no true box
      (difficult included) of any class;
    - ``ghosts``: the attacked image's false positives that cover none of the clean image's
      false positives (detections the attack created, not ones already there).

    Coverage is "some detection", not a one-to-one assignment: a duplicate on a found object
    is neither a find nor a ghost.
    """
    tb, tl = _np(true_boxes, np.float64, 4), _np(true_labels, np.int64)
    td = np.zeros(len(tl), bool) if true_difficult is None else _np(true_difficult, bool)
    if not (len(tb) == len(tl) == len(td)):
        raise ValueError("true boxes, labels and difficult flags differ in length")

    def confident(dets: tuple[ArrayLike, ArrayLike, ArrayLike]
                  ) -> tuple[np.ndarray, np.ndarray]:
        boxes, scores, labels = (_np(dets[0], np.float64, 4), _np(dets[1], np.float64),
                                 _np(dets[2], np.int64))
        if not (len(boxes) == len(scores) == len(labels)):
            raise ValueError("detection boxes, scores and labels differ in length")
        keep = scores >= score_threshold
        return boxes[keep], labels[keep]

    (cb, cl), (ab, al) = confident(clean), confident(adv)
    real = ~td

    def cover(boxes: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per true box: covered by any class, by its own class; per detection: a false
        positive."""
        hit = box_iou(tb, boxes) >= iou_threshold  # (truths, detections)
        same = labels[None, :] == tl[:, None]
        return hit.any(axis=1), (hit & same).any(axis=1), ~hit.any(axis=0)

    any_c, own_c, fp_c = cover(cb, cl)
    any_a, own_a, fp_a = cover(ab, al)
    lost = real & any_c & ~any_a
    flips = real & own_c & any_a & ~own_a
    new = ~(box_iou(ab[fp_a], cb[fp_c]) >= iou_threshold).any(axis=1)
    return {"objects": int(real.sum()), "found_clean": int((real & any_c).sum()),
            "found_adv": int((real & any_a).sum()), "objects_lost": int(lost.sum()),
            "class_flips": int(flips.sum()), "ghosts": int(new.sum()),
            "clean_false_positives": int(fp_c.sum()), "adv_false_positives": int(fp_a.sum())}
