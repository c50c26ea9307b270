"""Pixel-perturbation scoring engines.

One-pixel attacks and confidence maps ask the same question millions of times: "what are the class
probabilities of image i with these k pixels set to these colours?". An engine answers it for a
whole batch of candidates. ``DenseEngine`` does plain full forward passes (the reference);
faster exact engines (receptive-field cones) plug in behind the same interface.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from medrobust.models.classifier import Classifier


class PixelEngine(ABC):
    """Scores candidates (image index, k pixel positions, k colours) against fixed base images."""

    name: str = "engine"

    def __init__(self, classifier: Classifier, images: torch.Tensor) -> None:
        """``images``: float [0,1] (B,C,H,W) base images on the classifier's device."""
        self.classifier = classifier
        self.images = images

    @property
    def rows_per_call(self) -> int:
        """Candidates scored per model call: callers that batch candidates size batches to it."""
        return 256

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


def _float32_switches() -> list[tuple[object, str, object]]:
    """(object, attribute, full-float32 value) of PyTorch's TF32 switches: the fp32_precision
    settings where this PyTorch has them, else the older allow_tf32 flags."""
    conv = getattr(torch.backends.cudnn, "conv", None)
    matmul = torch.backends.cuda.matmul
    if conv is not None and hasattr(conv, "fp32_precision") and hasattr(matmul, "fp32_precision"):
        return [(conv, "fp32_precision", "ieee"), (matmul, "fp32_precision", "ieee")]
    return [(torch.backends.cudnn, "allow_tf32", False), (matmul, "allow_tf32", False)]


@contextmanager
def full_float32(device: torch.device) -> Iterator[None]:
    """Score in true float32 on a GPU. cuDNN convolutions default to TF32 on Ampere and newer
    GPUs, which rounds operands to 10-bit mantissas (errors near 1e-3): the engines promise
    scores equal to a float32 forward pass (1e-5), so they switch TF32 off while they score and
    restore the user's settings afterwards. Nothing changes on a CPU."""
    if device.type != "cuda":
        yield
        return
    switches = _float32_switches()
    saved = [getattr(obj, name) for obj, name, _ in switches]
    for obj, name, value in switches:
        setattr(obj, name, value)
    try:
        yield
    finally:
        for (obj, name, _), value in zip(switches, saved, strict=True):
            setattr(obj, name, value)
