"""Evaluate a Classifier on a dataset split."""

from __future__ import annotations

from typing import Any

from medrobust.data.base import ImageDataset
from medrobust.metrics.classification import classification_metrics
from medrobust.models.classifier import Classifier


def evaluate_classifier(classifier: Classifier, dataset: ImageDataset) -> dict[str, Any]:
    """Accuracy, AUC, per-class recall and confusion matrix of ``classifier`` on ``dataset``."""
    if dataset.num_classes != classifier.num_classes:
        from medrobust.errors import ConfigError

        raise ConfigError(
            f"model has {classifier.num_classes} classes but {dataset.name} has {dataset.num_classes}"
        )
    probs = classifier.probabilities(dataset.images)
    metrics = classification_metrics(probs, dataset.labels, dataset.class_names)
    metrics["dataset"] = dataset.describe()
    return metrics
