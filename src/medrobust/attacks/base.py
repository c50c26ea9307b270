"""The small base every attack shares: a model, validated parameters, a seed, ``atk(x, y)``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np
import torch
from torch import nn

from medrobust.attacks.result import AttackResult
from medrobust.errors import ConfigError
from medrobust.models.pixels import pixel_tensor


def model_device(model: nn.Module) -> torch.device:
    """Where the model's parameters (or buffers) live; CPU for a parameter-free module."""
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


def as_image_batch(x: Any, device: torch.device) -> torch.Tensor:
    """A new float32 [0,1] (N,C,H,W) tensor on ``device`` from pixel-space images: a torch
    tensor (N,C,H,W) or a NumPy array (N,H,W,C) like the datasets, uint8 or float [0,1]."""
    if isinstance(x, np.ndarray):
        if x.ndim != 4:
            raise ConfigError(f"NumPy images must be (N,H,W,C), got shape {x.shape}")
        return pixel_tensor(x, int(x.shape[-1]), device)
    if not isinstance(x, torch.Tensor):
        raise ConfigError(f"images must be a torch tensor (N,C,H,W) or a NumPy array (N,H,W,C), "
                          f"not {type(x).__name__}")
    if x.ndim != 4:
        raise ConfigError(f"images must be (N,C,H,W), got shape {tuple(x.shape)}")
    return pixel_tensor(x.detach(), int(x.shape[1]), device)


def output_device(images: Any, fallback: torch.device) -> torch.device:
    """Results go back to the device of the images given (NumPy: ``fallback``)."""
    return images.device if isinstance(images, torch.Tensor) else fallback


class Attack(ABC):
    """An attack on a model in pixel space (a ``Classifier``, or any network mapping float [0,1]
    (N,C,H,W) images to outputs, such as a segmentation net).

    Call it like torchattacks: ``PGD(model, eps=8/255)(images, labels)`` returns an
    ``AttackResult``. Subclasses validate their parameters in ``__init__`` (so a bad value fails
    before any work), expose them through ``params()`` for provenance, and never mutate the
    images they are given.
    """

    name: str = "attack"

    def __init__(self, model: nn.Module, seed: int = 0) -> None:
        self.model = model
        self.seed = int(seed)

    @abstractmethod
    def params(self) -> dict[str, Any]:
        """The attack's settings, JSON-able, as recorded in the store."""

    def get_params(self) -> dict[str, Any]:
        """scikit-learn's name for ``params()``."""
        return self.params()

    @abstractmethod
    def run(self, images: Any, labels: Any, **kwargs: Any) -> AttackResult:
        """Attack a batch (pixel-space images; labels, masks, landmarks or targets)."""

    def __call__(self, images: Any, labels: Any, **kwargs: Any) -> AttackResult:
        return self.run(images, labels, **kwargs)

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({inner})"
