"""MONAI's 2D U-Net in the zoo as ``unet``, sized to train on CPU in minutes.

Registered on import (``models/segmenter.py`` imports this module), so ``build_model("unet")``
works wherever a segmentation checkpoint can be loaded.
"""

from __future__ import annotations

from collections.abc import Sequence

from monai.networks.nets import UNet
from torch import nn

from medrobust.models.registry import register_model


def unet(in_channels: int = 1, num_classes: int = 2,
         channels: Sequence[int] = (16, 32, 64, 128), strides: Sequence[int] = (2, 2, 2),
         num_res_units: int = 1, norm: str = "batch", dropout: float = 0.0) -> nn.Module:
    """A 2D U-Net with ``num_classes`` output logits per pixel.

    Defaults: four levels of 16-128 channels and one residual unit per level with batch norm,
    which reach Dice ~0.87 on DSB2018 at 128x128 in minutes on 2 CPU cores (benchmarks/). Input
    sides must be multiples of prod(strides); ``Segmenter`` pads to that.
    """
    return UNet(spatial_dims=2, in_channels=in_channels, out_channels=num_classes,
                channels=tuple(channels), strides=tuple(strides), num_res_units=num_res_units,
                norm=norm, dropout=dropout)


def downsampling(model_kwargs: dict) -> int:
    """The factor input sides must be a multiple of: prod(strides)."""
    factor = 1
    for s in model_kwargs.get("strides", (2, 2, 2)):
        factor *= int(s)
    return factor


register_model("unet", unet)
