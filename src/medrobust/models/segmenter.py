"""``Segmenter``: the segmentation counterpart of ``Classifier``, plus its checkpoints.

Attacks see pixel-space images (uint8 0..255 or float [0,1]) and per-pixel logits; the model's
normalisation and the padding of odd sizes to what the network can take live here, never in an
attack. ``forward`` is differentiable (gradient attacks use it); ``predict`` is batched no-grad
inference. Checkpoints use the same safetensors + meta.json files as classifiers, with
``"task": "segmentation"`` in the metadata.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medrobust.errors import CheckpointError, ConfigError
from medrobust.models import unet as _unet  # noqa: F401  (registers "unet" in the zoo)
from medrobust.models.base import PixelModel
from medrobust.models.checkpoint import (
    META,
    build_checkpoint_model,
    check_model_meta,
    read_meta,
    save_model,
)
from medrobust.models.registry import Factory

TASK = "segmentation"


class Segmenter(PixelModel):
    """Wraps a per-pixel network with normalisation, padding and batched inference.

    ``multiple``: input sides are padded (replicate) up to a multiple of it and the logits are
    cropped back, so any image size works with a U-Net whose strides need e.g. multiples of 8.
    """

    task = TASK

    def __init__(self, model: nn.Module, *, mean: Sequence[float], std: Sequence[float],
                 class_names: Sequence[str], multiple: int = 1, batch_size: int = 32,
                 device: str | torch.device = "cpu") -> None:
        if len(class_names) < 2:
            raise ConfigError("a segmenter needs at least two classes (background and one more)")
        super().__init__(model, mean=mean, std=std, device=device)
        self.class_names = tuple(class_names)
        self.multiple = max(1, int(multiple))
        self.batch_size = int(batch_size)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def checkpoint_meta(self) -> dict[str, Any]:
        return {**super().checkpoint_meta(), "class_names": list(self.class_names),
                "multiple": self.multiple}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N,K,H,W) logits for float [0,1] (N,C,H,W) input; differentiable."""
        h, w = x.shape[-2:]
        ph, pw = (-h) % self.multiple, (-w) % self.multiple
        z = self.normalise(x)
        if ph or pw:
            z = F.pad(z, (0, pw, 0, ph), mode="replicate")
        return self.model(z)[..., :h, :w]

    @torch.inference_mode()
    def logits_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a prepared float [0,1] tensor, in batches of ``batch_size``."""
        out = [self(x[i:i + self.batch_size]) for i in range(0, x.shape[0], self.batch_size)]
        if not out:
            return torch.empty(0, self.num_classes, *x.shape[-2:], device=self.device)
        return torch.cat(out)

    def predict_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """(N,H,W) int64 class masks for a prepared float [0,1] tensor."""
        return self.logits_tensor(x).argmax(dim=1)

    def predict(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        """(N,H,W) int64 class-index masks as NumPy."""
        return self.predict_tensor(self.to_tensor(images)).cpu().numpy()

    def probabilities(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        """(N,K,H,W) softmax probabilities as float32 NumPy."""
        return torch.softmax(self.logits_tensor(self.to_tensor(images)), dim=1).cpu().numpy()


def save_segmenter(segmenter: Segmenter, out_dir: str | Path, meta: dict[str, Any]) -> Path:
    """Write weights and metadata (``save_model`` for segmenters)."""
    return save_model(segmenter, out_dir, meta)


def is_segmentation_checkpoint(ckpt_dir: str | Path) -> bool:
    return read_meta(ckpt_dir).get("task") == TASK


def load_segmenter(ckpt_dir: str | Path, device: str | torch.device = "cpu",
                   batch_size: int = 32, *, model_factory: str | Factory | None = None,
                   trust_model_code: bool = False) -> Segmenter:
    """Rebuild the Segmenter saved in ``ckpt_dir``; like ``load_classifier``, a user model named
    in the file is built only with ``model_factory`` or ``trust_model_code``."""
    meta = read_meta(ckpt_dir)
    if meta.get("task") != TASK:
        raise CheckpointError(f"{ckpt_dir} holds a {meta.get('task', 'classification')} model, "
                              "not a segmentation model")
    check_model_meta(meta, ckpt_dir)
    multiple = meta.get("multiple", 1)
    if not isinstance(multiple, int) or isinstance(multiple, bool) or multiple < 1:
        raise CheckpointError(f"{Path(ckpt_dir) / META}: 'multiple' must be a positive integer, "
                              f"got {multiple!r}")
    model = build_checkpoint_model(meta, ckpt_dir, len(meta["class_names"]), model_factory,
                                   trust_model_code)
    return Segmenter(model, mean=meta["mean"], std=meta["std"], class_names=meta["class_names"],
                     multiple=multiple, batch_size=batch_size, device=device)
