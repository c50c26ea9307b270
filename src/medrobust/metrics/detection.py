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
