"""Training and evaluation of classifiers."""

from medrobust.training.evaluate import evaluate_classifier
from medrobust.training.trainer import TrainConfig, TrainResult, save_trained, train_classifier

__all__ = [
    "TrainConfig",
    "TrainResult",
    "evaluate_classifier",
    "save_trained",
    "train_classifier",
]
