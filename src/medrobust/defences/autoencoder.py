"""A residual convolutional denoising autoencoder for impulse noise (MONAI convolution blocks).

Why residual, with a mask: a one-pixel attack changes one location and leaves the rest exact, so
the useful output is "the input, except at the few pixels that look like impulses". The decoder
predicts a per-pixel impulse probability m and a replacement colour r, and the output is
x + m (r - x): where m is near 0 the clean image passes through almost untouched, which keeps
the cost in clean accuracy near zero, while detected impulses are overwritten. A plain
autoencoder that re-synthesises the whole image blurs every clean image instead.

Besides the image, the encoder sees x minus the median of each pixel's 8 neighbours (``cue``),
the classic impulse detector's statistic, so it learns where impulses are from little data.

Layout: encoder (two full-resolution convolutions, a stride-2 convolution, a dilated bottleneck
at half resolution), decoder (transposed convolution, concatenation with the full-resolution
features, convolution) and a 1x1 head. Fully convolutional, so any channel count and any size
(28x28, 64x64 and larger; odd sizes are padded by edge replication and cropped back).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from torch import nn

from medrobust.errors import ConfigError
from medrobust.utils.validation import check_range

INITIAL_MASK_LOGIT = -4.0


def _conv(cin: int, cout: int, *, strides: int = 1, dilation: int = 1, kernel: int = 3,
          transposed: bool = False, conv_only: bool = False) -> Convolution:
    return Convolution(2, cin, cout, strides=strides, kernel_size=kernel, dilation=dilation,
                       act="RELU", norm=None, is_transposed=transposed, conv_only=conv_only,
                       padding=0 if transposed else dilation * (kernel - 1) // 2,
                       output_padding=0 if transposed else None)


def neighbour_median(x: torch.Tensor) -> torch.Tensor:
    """Per channel, the median of each pixel's 8 neighbours (edges replicated), (N,C,H,W).

    Written in torch, not SciPy, because it sits inside the differentiable network (gradient
    attacks must see through it). Excluding the centre makes x - median large exactly at an
    impulse, whatever its colour: a cue that lets the network learn detection in a few epochs.
    """
    n, c, h, w = x.shape
    patches = F.unfold(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel_size=3)
    patches = patches.view(n, c, 9, h * w)
    ring = torch.cat([patches[:, :, :4], patches[:, :, 5:]], dim=2)
    return ring.median(dim=2).values.view(n, c, h, w)


class ImpulseAutoencoder(nn.Module):
    """float [0,1] (N,C,H,W) -> denoised float [0,1] (N,C,H,W), differentiable end to end."""

    def __init__(self, channels: int = 1, width: int = 16, cue: bool = True) -> None:
        super().__init__()
        self.channels = int(check_range("channels", channels, 1))
        self.width = int(check_range("width", width, 2))
        self.cue = bool(cue)
        w = self.width
        self.enc1 = _conv(self.channels * (2 if self.cue else 1), w)
        self.enc2 = _conv(w, w)
        self.down = _conv(w, 2 * w, strides=2)
        self.mid = nn.Sequential(_conv(2 * w, 2 * w, dilation=2), _conv(2 * w, 2 * w))
        self.up = _conv(2 * w, w, strides=2, kernel=2, transposed=True)
        self.dec = _conv(2 * w, w)
        self.head = _conv(w, 1 + self.channels, kernel=1, conv_only=True)
        # Start as (nearly) the identity: an untrained mask of 0.5 would halve every pixel
        # towards a random colour, and training would first have to undo that.
        with torch.no_grad():
            self.head.conv.bias[0] = INITIAL_MASK_LOGIT

    def config(self) -> dict[str, Any]:
        """Constructor arguments, stored with the weights."""
        return {"channels": self.channels, "width": self.width, "cue": self.cue}

    def heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(impulse logits (N,1,H,W), replacement colours in [0,1] (N,C,H,W))."""
        if x.ndim != 4 or x.shape[1] != self.channels:
            raise ConfigError(f"autoencoder expects (N,{self.channels},H,W) input, "
                              f"got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        pad_h, pad_w = h % 2, w % 2
        z = x * 2.0 - 1.0
        if self.cue:
            z = torch.cat([z, 2.0 * (x - neighbour_median(x))], dim=1)
        if pad_h or pad_w:
            z = F.pad(z, (0, pad_w, 0, pad_h), mode="replicate")
        skip = self.enc2(self.enc1(z))
        deep = self.up(self.mid(self.down(skip)))
        out = self.head(self.dec(torch.cat([skip, deep], dim=1)))[..., :h, :w]
        return out[:, :1], torch.sigmoid(out[:, 1:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits, replacement = self.heads(x)
        m = torch.sigmoid(logits)
        return x + m * (replacement - x)
