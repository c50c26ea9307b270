"""Models: the zoo, one pixel-space wrapper per task on ``PixelModel``, safetensors checkpoints."""

from medrobust.models.base import PixelModel
from medrobust.models.checkpoint import (
    load_classifier,
    load_weights,
    read_meta,
    save_checkpoint,
    save_model,
)
from medrobust.models.classifier import Classifier
from medrobust.models.loading import load_model
from medrobust.models.registry import available_models, build_model, register_model

__all__ = [
    "Classifier",
    "PixelModel",
    "available_models",
    "build_model",
    "load_classifier",
    "load_model",
    "load_weights",
    "read_meta",
    "register_model",
    "save_checkpoint",
    "save_model",
]

