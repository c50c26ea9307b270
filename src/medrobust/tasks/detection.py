"""Object detection (a CenterNet-style detector): three loss terms, COCO mAP."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from medrobust.attacks.detection_losses import DETECTION_LOSSES
from medrobust.certify import regression as certificates
from medrobust.data.voc import DetectionDataset
from medrobust.errors import DataError
from medrobust.metrics.detection import (
    BREAKDOWN_KEYS,
    CONFIDENT_SCORE,
    MeanAveragePrecision,
    damage_breakdown,
    image_map,
)
from medrobust.models.centernet import centernet
from medrobust.models.detector import Detector
from medrobust.tasks.base import (
    Certification,
    CurveMetric,
    Task,
    TaskReport,
    data_place,
    fmt_value,
    one_minus,
    width_only,
)
from medrobust.tasks.robust import (
    split,
    trained_about,
    trainer_kwargs,
    with_robust,
)
from medrobust.training.detection import train_detector
from medrobust.training.detection_loss import DetectionLoss
from medrobust.utils.validation import check_range

OPTIONS: dict[str, Any] = with_robust({"epochs": 60, "batch_size": 16, "lr": 2e-3,
                                       "weight_decay": 1e-4, "minutes": None, "width": 16,
                                       "augment": True, "seed": 0})


def train(train_ds: DetectionDataset, val_ds: DetectionDataset, options: dict[str, Any],
          device: str) -> tuple[Detector, dict[str, Any]]:
    o, robust = split(options)
    kwargs = trainer_kwargs(robust, "detection")
    net, history = train_detector(train_ds, val_ds, epochs=o["epochs"],
                                  batch_size=o["batch_size"], lr=o["lr"], seed=o["seed"],
                                  width=o["width"], device=device, augment=o["augment"],
                                  minutes=o["minutes"], weight_decay=o["weight_decay"],
                                  **kwargs)
    detector = Detector(net, mean=history["mean"], std=history["std"],
                        class_names=train_ds.class_names, device=device)
    about = trained_about(kwargs, robust, history["epochs"], train_ds)
    return detector, {"epochs_run": len(history["epochs"]), "best_epoch": history.get("best_epoch"),
                      "val": {"map": history.get("best_val_map")},
                      "train_seconds": history["seconds"], "model_kwargs": {"width": o["width"]},
                      "history": history["epochs"],
                      "robust": about}


def validate_options(o: dict[str, Any]) -> None:
    for name in ("epochs", "batch_size", "width"):
        check_range(name, o[name], 1)


def network(train_ds: DetectionDataset, val_ds: DetectionDataset, o: dict[str, Any]
            ) -> torch.nn.Module:
    """The network ``train_detector`` builds for these options."""
    return centernet(train_ds.channels, train_ds.num_classes, width=o["width"])


def check_data(model: Detector, ds: DetectionDataset) -> None:
    """Labels are indices into the class names: data with other classes (or another order)
    would be scored against the wrong classes."""
    if tuple(ds.class_names) != tuple(model.class_names):
        raise DataError(f"the model detects {model.num_classes} classes "
                        f"({', '.join(model.class_names)}) but {data_place(ds)} has "
                        f"{ds.num_classes} ({', '.join(ds.class_names)}): use data with its "
                        f"classes (--classes {','.join(model.class_names)} where the dataset "
                        "can pick them)")


def evaluate(detector: Detector, dataset: DetectionDataset) -> dict[str, Any]:
    """COCO mAP@0.5:0.95, mAP@0.5 and per-class AP (pycocotools; difficult boxes ignored)."""
    dets = detector.predict(dataset.images)
    metric = MeanAveragePrecision(dataset.class_names, max_detections=detector.max_detections)
    metric.update([d[0] for d in dets], [d[1] for d in dets], [d[2] for d in dets],
                  dataset.boxes, dataset.labels, dataset.difficult)
    return metric.aggregate()


def loss_terms(model: Detector, outputs: torch.Tensor, targets: Any) -> dict[str, torch.Tensor]:
    """Per-sample heatmap, size and offset terms and their weighted total, against one
    (boxes, labels[, difficult]) per image (or the pair of per-image lists the loss takes).
    Difficult objects stay in the loss, as in training: only the metric ignores them."""
    if isinstance(targets, list):  # one (boxes, labels[, difficult]) per image, as attacks slice
        targets = ([t[0] for t in targets], [t[1] for t in targets])
    return dict(DetectionLoss(model.num_classes)(outputs, targets))


def _image_map(dets: tuple[np.ndarray, np.ndarray, np.ndarray], ds: DetectionDataset,
               i: int) -> float:
    return image_map(dets[0], dets[1], dets[2], ds.boxes[i], ds.labels[i], ds.difficult[i])


def _truth(target: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(boxes, labels, difficult) of one image's target; a pair has no difficult objects."""
    tb = np.asarray(torch.as_tensor(target[0]).cpu(), dtype=np.float64).reshape(-1, 4)
    tl = np.asarray(torch.as_tensor(target[1]).cpu(), dtype=np.int64).reshape(-1)
    td = (np.zeros(len(tl), dtype=bool) if len(target) < 3 else
          np.asarray(torch.as_tensor(target[2]).cpu(), dtype=bool).reshape(-1))
    return tb, tl, td


def image_damage(model: Detector, x: torch.Tensor, targets: Any) -> torch.Tensor:
    """1 - COCO mAP@0.5:0.95 of each image against its true (boxes, labels, difficult): the
    per-image mAP ``attack_rows`` stores, difficult objects ignored as there."""
    dets = model.predict_tensor(x.to(model.device))
    out = []
    for (boxes, scores, labels), target in zip(dets, targets, strict=True):
        tb, tl, td = _truth(target)
        out.append(1.0 - image_map(boxes, scores, labels, tb, tl, td))
    return torch.tensor(out, dtype=torch.float64)


def _plain(dets: tuple[np.ndarray, np.ndarray, np.ndarray]) -> list[list[float]]:
    """Detections as rows (x0, y0, x1, y1, score, label), rounded for the store."""
    boxes, scores, labels = dets
    return [[*np.round(b, 2).tolist(), round(float(s), 4), int(lab)]
            for b, s, lab in zip(boxes, scores, labels, strict=True)]


def attack_rows(model: Detector, ds: DetectionDataset, idx: np.ndarray, clean: torch.Tensor,
                adv: torch.Tensor) -> list[dict[str, Any]]:
    """Per image: COCO mAP@0.5:0.95 of that image before and after, confident detections
    (score >= ``CONFIDENT_SCORE``) before and after, and every detection kept (the summary's
    dataset mAP and damage breakdown)."""
    before, after = model.predict_tensor(clean), model.predict_tensor(adv)
    rows = []
    for j, i in enumerate(int(v) for v in idx):
        rows.append({"metric": "map", "unit": "",
                     "clean_metric": _image_map(before[j], ds, i),
                     "adv_metric": _image_map(after[j], ds, i),
                     "clean_extra": float((before[j][1] >= CONFIDENT_SCORE).sum()),
                     "adv_extra": float((after[j][1] >= CONFIDENT_SCORE).sum()),
                     "clean_pred": _plain(before[j]), "adv_pred": _plain(after[j])})
    return rows


def _dets(pred: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stored detection rows (x0, y0, x1, y1, score, label) -> (boxes, scores, labels)."""
    p = np.asarray(pred if pred is not None else [], dtype=np.float64).reshape(-1, 6)
    return p[:, :4], p[:, 4], p[:, 5].astype(np.int64)


def attack_summary(rows: list[dict[str, Any]], ds: DetectionDataset) -> dict[str, Any]:
    """Dataset-level COCO mAP and mAP@0.5 over the attacked images, before and after, and the
    damage apart (``metrics.detection.damage_breakdown`` at IoU 0.5 and the confident score):
    totals of ``objects``, ``found_clean``/``found_adv``, ``objects_lost``, ``class_flips``,
    ``ghosts`` and false positives, and per-image means of the last three
    (``<key>_per_image``)."""
    if not rows:
        return {"images": 0}
    idx = [int(r["dataset_index"]) for r in rows]
    out: dict[str, Any] = {"images": len(rows)}
    dets = {side: [_dets(r[f"{side}_pred"]) for r in rows] for side in ("clean", "adv")}
    for side in ("clean", "adv"):
        metric = MeanAveragePrecision(ds.class_names)
        metric.update([d[0] for d in dets[side]], [d[1] for d in dets[side]],
                      [d[2] for d in dets[side]], [ds.boxes[i] for i in idx],
                      [ds.labels[i] for i in idx], [ds.difficult[i] for i in idx])
        agg = metric.aggregate()
        out[f"{side}_map"], out[f"{side}_map50"] = agg["map"], agg["map50"]
        out[f"{side}_detections"] = float(np.mean([r[f"{side}_extra"] for r in rows]))
    counts = [damage_breakdown(c, a, ds.boxes[i], ds.labels[i], ds.difficult[i],
                               iou_threshold=0.5, score_threshold=CONFIDENT_SCORE)
              for c, a, i in zip(dets["clean"], dets["adv"], idx, strict=True)]
    for key in BREAKDOWN_KEYS:
        out[key] = int(sum(c[key] for c in counts))
    for key in ("objects_lost", "class_flips", "ghosts"):
        out[f"{key}_per_image"] = out[key] / len(rows)
    return out


def attack_targets(ds: DetectionDataset, idx: np.ndarray
                   ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The true boxes, labels and difficult flags per image: an untargeted attack raises the
    detector's loss on all of them, while the per-image damage, like the mAP, ignores the
    difficult ones."""
    return [(torch.from_numpy(ds.boxes[i]), torch.from_numpy(ds.labels[i]),
             torch.from_numpy(np.asarray(ds.difficult[i], dtype=bool))) for i in idx]


def describe(m: dict[str, Any]) -> str:
    per_class = ", ".join(f"{k} {fmt_value(v)}" for k, v in m["per_class"].items())
    return f"mAP@0.5:0.95 {fmt_value(m['map'])}  mAP@0.5 {fmt_value(m['map50'])}  ({per_class})"


def describe_attack(s: dict[str, Any]) -> str:
    text = (f"mAP@0.5:0.95 {fmt_value(s.get('clean_map'))} -> {fmt_value(s.get('adv_map'))}  "
            f"mAP@0.5 {fmt_value(s.get('clean_map50'))} -> {fmt_value(s.get('adv_map50'))}")
    if s.get("found_clean") is None:  # a summary from before the breakdown
        return text
    return (f"{text}  of {s['found_clean']} objects found: {s['objects_lost']} lost, "
            f"{s['class_flips']} class flips; {s['ghosts']} ghosts")


TASK = Task(name="detection", wrapper=Detector, datasets=("bccd-detection", "voc"), train=train,
            evaluate=evaluate, headline="map", loss_terms=loss_terms, default_model="centernet",
            options=OPTIONS, attack_rows=attack_rows, attack_summary=attack_summary,
            attack_targets=attack_targets, describe=describe, describe_attack=describe_attack,
            check_data=check_data, network=network,
            command_options=width_only("detection"), validate_options=validate_options,
            image_damage=image_damage, metric_of_damage=one_minus, ensemble_losses=DETECTION_LOSSES,
            certification=Certification(
                "median smoothing of each true box's matched detection (Chiang et al., "
                "NeurIPS 2020)", certificates.DETECTION_TABLE,
                certificates.detection_certifier, certificates.detection_summary,
                certificates.detection_describe, checkable=True,
                check=certificates.detection_check),
            report=TaskReport(
                3, "Detection: mAP", "mAP@0.5:0.95",
                (CurveMetric("map", "mAP@0.5:0.95", (("clean_map", "adv_map"),)),
                 CurveMetric("map50", "mAP@0.5", (("clean_map50", "adv_map50"),))),
                panel="boxes", summary_needs_data=True))
