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
