"""Pixel-perturbation scoring engines.

One-pixel attacks and confidence maps ask the same question millions of times: "what are the class
probabilities of image i with these k pixels set to these colours?". An engine answers it for a
whole batch of candidates. ``DenseEngine`` does plain full forward passes (the reference);
faster exact engines (receptive-field cones) plug in behind the same interface.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from medrobust.models.classifier import Classifier


class PixelEngine(ABC):
    """Scores candidates (image index, k pixel positions, k colours) against fixed base images."""

    name: str = "engine"

    def __init__(self, classifier: Classifier, images: torch.Tensor) -> None:
        """``images``: float [0,1] (B,C,H,W) base images on the classifier's device."""
        self.classifier = classifier
        self.images = images

    @abstractmethod
    def probabilities(self, image_index: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor,
                      colours: torch.Tensor) -> torch.Tensor:
        """(M,K) probabilities.

        image_index (M,) long; xs, ys (M,k) long pixel columns/rows; colours (M,k,C) float in
        [0,1]. Every candidate is scored independently of the others in the call.
        """


def apply_pixels(base: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor,
                 colours: torch.Tensor) -> torch.Tensor:
    """Write k pixels into a copy of each (M,C,H,W) base image; later pixels win on collisions."""
    out = base.clone()
    m, c = out.shape[:2]
    rows = torch.arange(m, device=out.device)[:, None]
    chans = torch.arange(c, device=out.device)[None, :]
    for j in range(xs.shape[1]):
        out[rows, chans, ys[:, j:j + 1], xs[:, j:j + 1]] = colours[:, j, :]
    return out
