"""Object detection (a CenterNet-style detector): three loss terms, COCO mAP."""

from __future__ import annotations

from typing import Any

import torch

from medrobust.data.voc import DetectionDataset
from medrobust.metrics.detection import MeanAveragePrecision
from medrobust.models.detector import Detector
from medrobust.tasks.base import Task
from medrobust.training.detection import train_detector
from medrobust.training.detection_loss import DetectionLoss
from medrobust.utils.validation import check_range

OPTIONS: dict[str, Any] = {"epochs": 60, "batch_size": 16, "lr": 2e-3, "weight_decay": 1e-4,
                           "minutes": None, "width": 16, "augment": True, "seed": 0}


def train(train_ds: DetectionDataset, val_ds: DetectionDataset, options: dict[str, Any],
          device: str) -> tuple[Detector, dict[str, Any]]:
    o = options
    for name in ("epochs", "batch_size", "width"):
        check_range(name, o[name], 1)
    net, history = train_detector(train_ds, val_ds, epochs=o["epochs"],
                                  batch_size=o["batch_size"], lr=o["lr"], seed=o["seed"],
                                  width=o["width"], device=device, augment=o["augment"],
                                  minutes=o["minutes"], weight_decay=o["weight_decay"])
    detector = Detector(net, mean=history["mean"], std=history["std"],
                        class_names=train_ds.class_names, device=device)
    return detector, {"epochs_run": len(history["epochs"]), "best_epoch": history.get("best_epoch"),
                      "val": {"map": history.get("best_val_map")},
                      "train_seconds": history["seconds"], "model_kwargs": {"width": o["width"]},
                      "history": history["epochs"]}


def evaluate(detector: Detector, dataset: DetectionDataset) -> dict[str, Any]:
    """COCO mAP@0.5:0.95, mAP@0.5 and per-class AP (pycocotools; difficult boxes ignored)."""
    dets = detector.predict(dataset.images)
    metric = MeanAveragePrecision(dataset.class_names, max_detections=detector.max_detections)
    metric.update([d[0] for d in dets], [d[1] for d in dets], [d[2] for d in dets],
                  dataset.boxes, dataset.labels, dataset.difficult)
    return metric.aggregate()


def loss_terms(model: Detector, outputs: torch.Tensor, targets: Any) -> dict[str, torch.Tensor]:
    """Per-sample heatmap, size and offset terms and their weighted total, against one
    (boxes, labels) pair per image (or the pair of per-image lists the loss takes)."""
    if isinstance(targets, list):  # one (boxes, labels) per image, as attacks slice them
        targets = ([b for b, _ in targets], [lab for _, lab in targets])
    return dict(DetectionLoss(model.num_classes)(outputs, targets))


TASK = Task(name="detection", wrapper=Detector, datasets=("bccd-detection", "voc"), train=train,
            evaluate=evaluate, headline="map", loss_terms=loss_terms, default_model="centernet",
            options=OPTIONS)
