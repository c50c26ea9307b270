"""Layers the zoo shares.

``SamePad2d`` reproduces TensorFlow/Keras ``padding="same"``: for a stride-2 3x3 convolution on an
even-sized input it pads one pixel at the bottom/right only, so even coordinates feed two outputs
per axis and odd ones feed one. METHODS.md section 2 traces the paper's even-coordinate
checkerboard to exactly this, so the zoo must be able to build it on purpose.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """(before, after) padding of TF 'same' for one axis: the extra pixel goes after."""
    effective = (kernel - 1) * dilation + 1
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2


class SamePad2d(nn.Module):
    """Zero padding that makes the next convolution behave like Keras ``padding='same'``."""

    def __init__(self, kernel: int, stride: int, dilation: int = 1) -> None:
        super().__init__()
        self.kernel, self.stride, self.dilation = kernel, stride, dilation

    def pads(self, height: int, width: int) -> tuple[int, int, int, int]:
        """(left, right, top, bottom) for an input of this size."""
        top, bottom = same_padding(height, self.kernel, self.stride, self.dilation)
        left, right = same_padding(width, self.kernel, self.stride, self.dilation)
        return left, right, top, bottom

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, self.pads(int(x.shape[-2]), int(x.shape[-1])))

    def extra_repr(self) -> str:
        return f"kernel={self.kernel}, stride={self.stride}, dilation={self.dilation}"


def conv3x3(cin: int, cout: int, stride: int, padding: str) -> nn.Sequential:
    """A bias-free 3x3 convolution with Keras-style or PyTorch-style symmetric padding."""
    if padding == "keras":
        return nn.Sequential(SamePad2d(3, stride), nn.Conv2d(cin, cout, 3, stride, 0, bias=False))
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False))
