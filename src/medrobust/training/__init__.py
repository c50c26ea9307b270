"""Training: the shared epoch loop (``loop.fit``: seeded batches, validation-based selection,
per-epoch resume), the classification, segmentation, landmark and detection trainers on it or
beside it, their losses, and the robust objectives (``training.robust``). The package exports
the classifier's entry points; each task reaches its trainer through ``medrobust.tasks``."""

from medrobust.training.evaluate import evaluate_classifier
from medrobust.training.trainer import TrainConfig, TrainResult, save_trained, train_classifier

__all__ = [
    "TrainConfig",
    "TrainResult",
    "evaluate_classifier",
    "save_trained",
    "train_classifier",
]
