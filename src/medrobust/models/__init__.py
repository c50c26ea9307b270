"""Models: the zoo, the ``Classifier`` wrapper and safetensors checkpoints."""

from medrobust.models.checkpoint import load_classifier, load_weights, read_meta, save_checkpoint
from medrobust.models.classifier import Classifier
from medrobust.models.registry import available_models, build_model, register_model

__all__ = [
    "Classifier",
    "available_models",
    "build_model",
    "load_classifier",
    "load_weights",
    "read_meta",
    "register_model",
    "save_checkpoint",
]
