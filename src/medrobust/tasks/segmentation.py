"""Semantic segmentation: Dice + cross-entropy training, Dice and IoU scores."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from medrobust.models.segmenter import Segmenter
from medrobust.tasks.base import Task
from medrobust.training.segmentation import SegTrainConfig, evaluate_segmenter, train_segmenter

OPTIONS: dict[str, Any] = {"model": "unet", "model_kwargs": {}, "epochs": 20, "batch_size": 16,
                           "lr": 3e-3, "weight_decay": 1e-4, "augment": "flips", "seed": 0}


def train(train_ds: Any, val_ds: Any, options: dict[str, Any], device: str
          ) -> tuple[Segmenter, dict[str, Any]]:
    result = train_segmenter(train_ds, val_ds, SegTrainConfig(**options), device)
    return result.segmenter, {"best_epoch": result.best_epoch, "val": result.val_metrics,
                              "train_seconds": result.seconds, "history": result.history}


def loss_terms(model: Segmenter, outputs: torch.Tensor, masks: torch.Tensor
               ) -> dict[str, torch.Tensor]:
    """Per-sample soft Dice loss (foreground classes), pixel-mean cross-entropy and their sum
    (``total``, the training objective)."""
    ce = F.cross_entropy(outputs, masks, reduction="none").flatten(1).mean(1)
    prob = outputs.softmax(1)[:, 1:]
    onehot = F.one_hot(masks, outputs.shape[1]).permute(0, 3, 1, 2)[:, 1:].float()
    inter = (prob * onehot).flatten(1).sum(1)
    dice = 1 - (2 * inter + 1e-5) / (prob.flatten(1).sum(1) + onehot.flatten(1).sum(1) + 1e-5)
    return {"dice": dice, "ce": ce, "total": dice + ce}


TASK = Task(name="segmentation", wrapper=Segmenter, datasets=("segfolder",), train=train,
            evaluate=evaluate_segmenter, headline="dice", loss_terms=loss_terms,
            default_model="unet", options=OPTIONS)
