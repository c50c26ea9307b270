"""The multi-task U-Net for landmarks (Yao et al., MICCAI 2020) on a MONAI ``BasicUNet`` backbone.

One network, 3K output channels at input resolution: K heatmap logits, K x-offsets, K y-offsets
(``models/landmark_codec.py`` encodes targets and decodes by offset voting). The authors use a
VGG19-pretrained U-Net on a GPU; here ``BasicUNet`` (four poolings, two conv-norm-LeakyReLU blocks per
level) is sized for 2 CPU cores. ``BasicUNet`` pads in its up path when a side is not a multiple of
16, so any input size works (200 = 16 x 12.5 included), unlike ``monai.networks.nets.UNet`` whose
strided convolutions need exact multiples.

``LandmarkModel`` is the landmark face of ``PixelModel``: pixel-space images in (float [0,1],
(N,C,H,W)), the normalisation inside, so attacks and budgets live in pixel space.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.networks.nets import BasicUNet
from torch import nn

from medrobust.models.base import PixelModel
from medrobust.models.landmark_codec import decode
from medrobust.models.registry import register_model

#: Default widths (levels 0-4 and the last up level). Chosen from measured CPU time at 200x160,
#: batch 8 (benchmarks/landmark_quality.py, report of issue 12 part 2).
DEFAULT_FEATURES = (8, 16, 32, 64, 128, 8)


def landmark_unet(in_channels: int, num_landmarks: int, features: Sequence[int] = DEFAULT_FEATURES,
                  norm: str = "batch", dropout: float = 0.0, upsample: str = "deconv",
                  heatmap_prior: float | None = 0.01, **kwargs) -> nn.Module:
    """A 2D ``BasicUNet`` with ``3 * num_landmarks`` output channels (heat, x-offset, y-offset).

    ``features`` has six widths as in MONAI; ``width`` (an int) is a shortcut that scales the
    default widths (``width=4`` gives (4, 8, 16, 32, 64, 4)). Batch norm by default: per-sample in
    eval mode, so an image predicted alone or in a batch gives the same result.
    ``heatmap_prior``: the heatmap logits' initial bias is logit(prior) (RetinaNet's prior trick;
    0.01 ~ a radius-10 disk in 200x160): with a zero bias every pixel starts at p = 0.5 and the
    first CPU epochs only learn to switch the background off (measured: BCE 0.70 -> 0.62 in 6
    epochs, MRE ~80 mm); None keeps MONAI's initialisation.
    """
    width = kwargs.pop("width", None)
    if kwargs:
        raise TypeError(f"landmark_unet got unexpected options: {', '.join(sorted(kwargs))}")
    if width is not None:
        base = DEFAULT_FEATURES[0]
        features = tuple(max(1, round(f * int(width) / base)) for f in DEFAULT_FEATURES)
    if len(tuple(features)) != 6:
        raise ValueError(f"features must have 6 widths, got {features!r}")
    if num_landmarks < 1 or in_channels < 1:
        raise ValueError("in_channels and num_landmarks must be >= 1")
    net = BasicUNet(spatial_dims=2, in_channels=in_channels, out_channels=3 * num_landmarks,
                    features=tuple(int(f) for f in features), norm=norm, dropout=dropout,
                    upsample=upsample)
    if heatmap_prior is not None:  # heatmap logits start at the disk's share of the image
        with torch.no_grad():
            net.final_conv.bias[:num_landmarks].fill_(math.log(heatmap_prior / (1 - heatmap_prior)))
    return net


class LandmarkModel(PixelModel):
    """Pixel-space landmark detector: [0,1] images in, 3K output maps out; ``predict`` decodes.

    ``radius`` is the heatmap disk radius in input pixels, needed to decode offsets; ``names``
    label the landmarks (saved as the checkpoint's ``class_names``).
    """

    task = "landmarks"

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float],
                 num_landmarks: int, radius: float, device: torch.device | str = "cpu",
                 names: Sequence[str] | None = None, heatmap_loss: str = "bce",
                 heatmap_weight: float = 2.0) -> None:
        super().__init__(model, mean=mean, std=std, device=device)
        self.num_landmarks = int(num_landmarks)
        self.radius = float(radius)
        #: the heatmap loss it was trained with: attacks raise the same loss
        self.heatmap_loss, self.heatmap_weight = str(heatmap_loss), float(heatmap_weight)
        #: one name per landmark (the landmark folder's column order): L1..LK by default
        self.names = tuple(names) if names is not None else tuple(
            f"L{i + 1}" for i in range(self.num_landmarks))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N,C,H,W) float in [0,1] -> (N,3K,H,W) maps (heat logits, x offsets, y offsets)."""
        return self.model(self.normalise(x))

    def checkpoint_meta(self) -> dict[str, Any]:
        return {**super().checkpoint_meta(), "num_landmarks": self.num_landmarks,
                "radius": self.radius, "class_names": list(self.names),
                "heatmap_loss": self.heatmap_loss, "heatmap_weight": self.heatmap_weight}

    def predict_tensor(self, x: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
        """(N,K,2) landmarks (x, y in input pixels) for [0,1] images, in eval mode."""
        out = self.batched(lambda c: decode(self(c), self.radius).cpu(), x, batch_size)
        return torch.cat(out) if out else torch.zeros(0, self.num_landmarks, 2)

    def predict(self, images: np.ndarray | torch.Tensor, batch_size: int = 16) -> np.ndarray:
        """float32 (N,K,2) landmarks for uint8 (N,H,W,C) images (or [0,1] tensors)."""
        return self.predict_tensor(self.to_tensor(images), batch_size).numpy().astype(np.float32)


def zoo_landmark_unet(in_channels: int, num_classes: int, **kwargs: Any) -> nn.Module:
    """The zoo's face of ``landmark_unet``: ``num_classes`` is the number of landmarks K."""
    return landmark_unet(in_channels, num_classes, **kwargs)


register_model("landmark_unet", zoo_landmark_unet)
