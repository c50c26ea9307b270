"""The ``Denoiser`` every defence implements: pixel-space images in, same dtype and shape out.

A defence has two faces. ``denoise`` works on NumPy images as the datasets hold them (uint8 or
float [0,1], one image or a batch) for evaluation and figures; ``module`` is a torch module on
float [0,1] (N,C,H,W) tensors that can sit in front of a classifier (``DefendedClassifier``), so
one-pixel and gradient attacks can attack the defended model itself. Filters that cannot be
differentiated get BPDA (identity gradient) there.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np
from torch import nn

from medrobust.defences.bpda import BPDA
from medrobust.errors import ConfigError
from medrobust.utils.images import as_float_batch, from_float_batch


class Denoiser(ABC):
    """A denoising defence; subclasses implement ``_denoise`` on float32 (N,H,W,C) in [0,1]."""

    name: str = "denoiser"
    #: True when ``module`` has real gradients (an autoencoder); False means BPDA is used.
    differentiable: bool = False
    #: Channel count the defence requires, or None for any.
    channels: int | None = None

    def denoise(self, images: np.ndarray) -> np.ndarray:
        """Denoised copy of uint8 / float [0,1] (N,H,W,C) or (H,W,C) ``images``, same dtype/shape."""
        x, single = as_float_batch(images)
        if self.channels is not None and x.shape[-1] != self.channels:
            raise ConfigError(f"denoiser {self.name} expects {self.channels} channel(s), "
                              f"images have {x.shape[-1]}")
        if x.shape[0] == 0:
            return from_float_batch(x, images, single)
        return from_float_batch(self._denoise(x), images, single)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self.denoise(images)

    @abstractmethod
    def _denoise(self, x: np.ndarray) -> np.ndarray:
        """float32 (N,H,W,C) in [0,1] (a private copy) -> float (N,H,W,C) in [0,1]."""

    def module(self) -> nn.Module:
        """The defence as a torch module on float [0,1] (N,C,H,W); BPDA unless differentiable."""
        return BPDA(lambda x: np.clip(self._denoise(x), 0.0, 1.0).astype(np.float32),
                    name=self.name)

    def spec(self) -> dict[str, Any]:
        """What rebuilds this defence (``make_denoiser(spec["name"] or spec["dir"])``)."""
        return {"name": self.name}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec()})"
