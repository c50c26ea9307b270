"""``Classifier``: the classification face of ``PixelModel``.

Attacks, analyses and defences see pixel-space images (uint8 0..255 or float [0,1]) and scores;
the model's normalisation lives in the base, never in an attack. Layout convention: NumPy arrays
are (N,H,W,C) or (H,W,C) like the datasets; torch tensors are (N,C,H,W).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from medrobust.errors import ConfigError
from medrobust.models.base import PixelModel
from medrobust.utils.validation import check_range

#: Pixels (rows x height x width) per forward call on a CPU. Larger calls spill the caches and
#: run slower: a 64x64 SmallCNN scores 2.0x and mitosisnet 2.3x more images per second in calls
#: of 64 rows than of 512 (README, "Performance notes"); 28x28 images are flat from 128 rows up.
CPU_PIXELS_PER_CALL = 2 ** 18


def default_batch_size(height: int, width: int, device: str | torch.device = "cpu") -> int:
    """Rows per forward call when none is given: 512 on a GPU, on a CPU the power of two
    (16..512) that keeps about ``CPU_PIXELS_PER_CALL`` pixels per call."""
    if torch.device(device).type != "cpu":
        return 512
    rows = max(1, CPU_PIXELS_PER_CALL // max(1, height * width))
    return int(min(512, max(16, 2 ** int(math.log2(rows)))))


class Classifier(PixelModel):
    """Wraps a network with normalisation, head semantics and batched no-grad inference.

    ``head="softmax"``: K logits, ``probabilities`` are the softmax.
    ``head="sigmoid"``: one logit, ``scores`` is P(positive) and ``probabilities`` is
    [1 - p, p], so code written for K classes works unchanged on binary detectors.
    """

    task = "classification"

    def __init__(self, model: nn.Module, *, mean: Sequence[float], std: Sequence[float],
                 class_names: Sequence[str], head: str = "softmax", batch_size: int | None = None,
                 device: str | torch.device = "cpu") -> None:
        if head not in ("softmax", "sigmoid"):
            raise ConfigError(f"head must be softmax or sigmoid, got {head!r}")
        if head == "sigmoid" and len(class_names) != 2:
            raise ConfigError("a sigmoid head needs exactly two class names (negative, positive)")
        super().__init__(model, mean=mean, std=std, device=device)
        self.head = head
        self.class_names = tuple(class_names)
        # None: rows per forward call follow the image size (``default_batch_size``).
        self.batch_size = None if batch_size is None else int(check_range("batch_size",
                                                                          batch_size, 1))

    # --- properties -------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def checkpoint_meta(self) -> dict[str, Any]:
        return {**super().checkpoint_meta(), "head": self.head,
                "class_names": list(self.class_names)}

    # --- differentiable path ----------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for float [0,1] (N,C,H,W) input; differentiable (gradient attacks use this)."""
        return self.model(self.normalise(x))

    def logits_to_probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """(N,K) class probabilities from raw outputs, for either head."""
        if self.head == "sigmoid":
            p = torch.sigmoid(logits.reshape(-1))
            return torch.stack([1 - p, p], dim=1)
        return torch.softmax(logits, dim=1)

    # --- batched inference ------------------------------------------------------------------
    def rows_per_call(self, x: torch.Tensor) -> int:
        """Rows per forward call for inputs shaped like ``x``: ``batch_size`` if set, else
        ``default_batch_size`` for its height and width on this device."""
        if self.batch_size is not None:
            return self.batch_size
        return default_batch_size(int(x.shape[-2]), int(x.shape[-1]), self.device)

    @torch.inference_mode()
    def probabilities_tensor(self, x: torch.Tensor, fixed_batch: bool = False) -> torch.Tensor:
        """Probabilities for an already prepared float [0,1] (N,C,H,W) tensor, in batches.

        ``fixed_batch`` pads every forward call to exactly ``rows_per_call`` rows. Convolution
        kernels pick algorithms by shape, so the same image can score differently in the last
        bits inside batches of different sizes; a fixed shape makes each image's scores
        independent of what else is in the batch (attacks rely on this for batch consistency).
        """
        out = []
        rows = self.rows_per_call(x)
        for i in range(0, x.shape[0], rows):
            chunk = x[i:i + rows]
            n = chunk.shape[0]
            if fixed_batch and n < rows:
                pad = chunk[-1:].expand(rows - n, *chunk.shape[1:])
                chunk = torch.cat([chunk, pad])
            out.append(self.logits_to_probabilities(self(chunk))[:n])
        return torch.cat(out) if out else torch.empty(0, self.num_classes, device=self.device)

    def probabilities(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        """(N,K) class probabilities as float64 NumPy."""
        return self.probabilities_tensor(self.to_tensor(images)).double().cpu().numpy()

    def scores(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        """Softmax heads: (N,K) probabilities. Sigmoid heads: (N,) P(positive)."""
        p = self.probabilities(images)
        return p[:, 1] if self.head == "sigmoid" else p

    def predict(self, images: np.ndarray | torch.Tensor, threshold: float = 0.5) -> np.ndarray:
        """Predicted class indices (sigmoid heads: positive when P >= threshold)."""
        p = self.probabilities(images)
        if self.head == "sigmoid":
            return (p[:, 1] >= threshold).astype(np.int64)
        return p.argmax(axis=1).astype(np.int64)
