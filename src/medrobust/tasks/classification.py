"""Image classification: cross-entropy (or BCE for one-logit detectors), accuracy and AUC."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from medrobust.models.classifier import Classifier
from medrobust.tasks.base import Task
from medrobust.tasks.robust import robust_summary, split, trainer_kwargs, with_robust
from medrobust.training.evaluate import evaluate_classifier
from medrobust.training.trainer import TrainConfig, train_classifier

OPTIONS: dict[str, Any] = with_robust({"model": "smallcnn", "model_kwargs": {}, "epochs": 15,
                                       "batch_size": 128, "lr": 3e-3, "weight_decay": 5e-4,
                                       "augment": "auto", "seed": 0})


def train(train_ds: Any, val_ds: Any, options: dict[str, Any], device: str
          ) -> tuple[Classifier, dict[str, Any]]:
    own, robust = split(options)
    kwargs = trainer_kwargs(robust, "classification")
    result = train_classifier(train_ds, val_ds, TrainConfig(**own), device, **kwargs)
    return result.classifier, {"best_epoch": result.best_epoch, "val": result.val_metrics,
                               "train_seconds": result.seconds, "history": result.history,
                               "robust": robust_summary(kwargs["robust"], result.history,
                                                        robust["out_dir"])}


def loss_terms(model: Classifier, outputs: torch.Tensor, labels: torch.Tensor
               ) -> dict[str, torch.Tensor]:
    """Per-sample cross-entropy (one-logit sigmoid heads: binary cross-entropy); ``total`` is
    the training objective."""
    if model.head == "sigmoid":
        ce = F.binary_cross_entropy_with_logits(outputs.reshape(-1), labels.float(),
                                                reduction="none")
    else:
        ce = F.cross_entropy(outputs, labels, reduction="none")
    return {"ce": ce, "total": ce}


TASK = Task(name="classification", wrapper=Classifier,
            datasets=("synthetic", "medmnist", "bccd", "folder"), train=train,
            evaluate=evaluate_classifier, headline="accuracy", loss_terms=loss_terms,
            default_model="smallcnn", options=OPTIONS)
