"""Semantic segmentation: Dice + cross-entropy training, Dice and IoU scores."""

from __future__ import annotations

from typing import Any

import torch

from medrobust.models.segmenter import Segmenter
from medrobust.tasks.base import Task
from medrobust.tasks.robust import robust_summary, split, trainer_kwargs, with_robust
from medrobust.training.segmentation import (
    SegTrainConfig,
    evaluate_segmenter,
    segmentation_terms,
    train_segmenter,
)

OPTIONS: dict[str, Any] = with_robust({"model": "unet", "model_kwargs": {}, "epochs": 20,
                                       "batch_size": 16, "lr": 3e-3, "weight_decay": 1e-4,
                                       "augment": "flips", "seed": 0})


def train(train_ds: Any, val_ds: Any, options: dict[str, Any], device: str
          ) -> tuple[Segmenter, dict[str, Any]]:
    own, robust = split(options)
    kwargs = trainer_kwargs(robust, "segmentation")
    result = train_segmenter(train_ds, val_ds, SegTrainConfig(**own), device, **kwargs)
    return result.segmenter, {"best_epoch": result.best_epoch, "val": result.val_metrics,
                              "train_seconds": result.seconds, "history": result.history,
                              "robust": robust_summary(kwargs["robust"], result.history,
                                                       robust["out_dir"])}


def loss_terms(model: Segmenter, outputs: torch.Tensor, masks: torch.Tensor
               ) -> dict[str, torch.Tensor]:
    """Per-sample soft Dice loss (foreground classes), pixel-mean cross-entropy and their sum
    (``total``, the training objective); the same terms robust training uses."""
    return segmentation_terms(outputs, masks)


TASK = Task(name="segmentation", wrapper=Segmenter, datasets=("segfolder",), train=train,
            evaluate=evaluate_segmenter, headline="dice", loss_terms=loss_terms,
            default_model="unet", options=OPTIONS)
