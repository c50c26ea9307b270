"""MitosisNet: a small residual CNN modelled on the deep-histopath / IBM MAX mitosis detector.

64x64 RGB in, one logit out (sigmoid = P(mitosis)); the first layer is a 3x3 stride-2 convolution.
``padding="keras"`` pads like TensorFlow ('same': bottom/right only on stride 2, even inputs) and
``padding="symmetric"`` like PyTorch. The two differ only in which coordinates feed two
first-layer outputs, which is what the one-pixel periodicity analysis is about.
"""

from __future__ import annotations

import torch
from torch import nn

from medrobust.models.layers import SamePad2d, conv3x3

PADDINGS = ("keras", "symmetric")


class ResidualBlock(nn.Module):
    """Post-activation basic block; a 1x1 strided projection when shape changes."""

    def __init__(self, cin: int, cout: int, stride: int, padding: str) -> None:
        super().__init__()
        self.conv1 = conv3x3(cin, cout, stride, padding)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = conv3x3(cout, cout, 1, padding)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(y + self.shortcut(x))


class MitosisNet(nn.Module):
    """Stem (3x3 stride 2) then three residual stages, global pooling and one logit."""

    def __init__(self, in_channels: int = 3, num_classes: int = 1, width: int = 16,
                 padding: str = "keras") -> None:
        super().__init__()
        if padding not in PADDINGS:
            raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
        if num_classes not in (1, 2):
            raise ValueError("mitosisnet is a binary detector: num_classes must be 1 or 2")
        w = width
        self.padding = padding
        stem: list[nn.Module] = [SamePad2d(3, 2)] if padding == "keras" else []
        stem.append(nn.Conv2d(in_channels, w, 3, 2, 0 if padding == "keras" else 1, bias=False))
        self.stem = nn.Sequential(*stem, nn.BatchNorm2d(w), nn.ReLU())
        self.stage1 = ResidualBlock(w, w, 1, padding)
        self.stage2 = ResidualBlock(w, 2 * w, 2, padding)
        self.stage3 = ResidualBlock(2 * w, 4 * w, 2, padding)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(4 * w, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage3(self.stage2(self.stage1(self.stem(x))))
        return self.head(self.pool(x))
