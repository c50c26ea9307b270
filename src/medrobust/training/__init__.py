"""Training and evaluation of classifiers."""

from medrobust.training.evaluate import evaluate_classifier
from medrobust.training.metrics import classification_metrics
from medrobust.training.trainer import TrainConfig, TrainResult, save_trained, train_classifier

__all__ = [
    "TrainConfig",
    "TrainResult",
    "classification_metrics",
    "evaluate_classifier",
    "save_trained",
    "train_classifier",
]
