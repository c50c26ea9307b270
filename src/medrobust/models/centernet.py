"""A small anchor-free CenterNet-style detector in pure PyTorch (no torchvision).

Why CenterNet: its three loss terms (class-heatmap focal loss, box-size L1, centre-offset L1)
play the roles of YOLO's cls/obj/box terms, which adaptive-margin training thresholds one by
one; it has no anchors or NMS to tune, and its output is one dense tensor that gradient attacks
treat like a segmentation map.

Output: one tensor (B, C + 4, H/4, W/4), stride 4:
  channels [0, C)        class-heatmap logits (sigmoid gives the centre probability; bias -2.19,
                         i.e. p = 0.1 at the start, as in CenterNet/RetinaNet)
  channels [C, C + 2)    box width, height in output pixels (input pixels / 4), linear. Raw
                         sizes (not log) keep CenterNet's loss weighting (size L1 x 0.1) and
                         make the L1 proportional to the box-edge error an IoU sees.
  channels [C + 2, C + 4) centre offset (dx, dy) in output pixels, the sub-cell position of
                         the centre (0..1 in training targets).
The network expects normalised input; normalisation lives in the task's pixel-space wrapper.

Backbone: a ResNet-ish encoder (strides 4, 8, 16, 32; two 3x3 convs per residual block, BN,
ReLU) and an FPN-style top-down decoder that adds upsampled coarse features to 1x1-projected
skips back to stride 4. The stride-32 stage gives a receptive field above 300 px, enough for
BCCD's white cells (~100 px at 320x320). Width 16: 1.0 M parameters, 0.71 GMAC per
320x320 image (train it in channels_last memory format: ~1.5x faster on CPU).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from medrobust.models.registry import register_model

HEATMAP_BIAS = -math.log((1 - 0.1) / 0.1)  # -2.197: initial centre probability 0.1


def _conv_bn(cin: int, cout: int, stride: int = 1, kernel: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ResBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity skip (the basic ResNet block)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)), inplace=True)
        return F.relu(x + self.bn2(self.conv2(y)), inplace=True)


class CenterNet(nn.Module):
    """Encoder (stride 4..32) + top-down decoder to stride 4 + heatmap and regression heads."""

    stride = 4

    def __init__(self, in_channels: int, num_classes: int, width: int = 16,
                 blocks: tuple[int, int, int, int] = (1, 1, 1, 1), head_channels: int | None = None,
                 size_bias: float = 8.0) -> None:
        super().__init__()
        if in_channels < 1 or num_classes < 1 or width < 1:
            raise ValueError("in_channels, num_classes and width must be >= 1")
        self.in_channels, self.num_classes, self.width = in_channels, num_classes, width
        w = width
        chans = (2 * w, 4 * w, 8 * w, 8 * w)
        self.stem = nn.Sequential(_conv_bn(in_channels, w, 2), _conv_bn(w, chans[0], 2))
        stages = []
        for i, (c, n) in enumerate(zip(chans, blocks, strict=True)):
            layers: list[nn.Module] = [] if i == 0 else [_conv_bn(chans[i - 1], c, 2)]
            layers += [ResBlock(c) for _ in range(n)]
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)
        d = chans[0]
        self.lateral = nn.ModuleList(nn.Conv2d(c, d, 1) for c in chans)
        self.smooth = nn.ModuleList(_conv_bn(d, d) for _ in chans[:-1])
        hc = head_channels or d
        self.heatmap = nn.Sequential(_conv_bn(d, hc), nn.Conv2d(hc, num_classes, 1))
        self.regress = nn.Sequential(_conv_bn(d, hc), nn.Conv2d(hc, 4, 1))
        nn.init.constant_(self.heatmap[-1].bias, HEATMAP_BIAS)
        nn.init.normal_(self.regress[-1].weight, std=1e-3)
        with torch.no_grad():
            self.regress[-1].bias.copy_(torch.tensor([size_bias, size_bias, 0.5, 0.5]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = []
        y = self.stem(x)
        for stage in self.stages:
            y = stage(y)
            feats.append(y)
        top = self.lateral[-1](feats[-1])
        for i in range(len(feats) - 2, -1, -1):
            skip = self.lateral[i](feats[i])
            top = F.interpolate(top, size=skip.shape[-2:], mode="nearest") + skip
            top = self.smooth[i](top)
        return torch.cat([self.heatmap(top), self.regress(top)], dim=1)


def centernet(in_channels: int, num_classes: int, width: int = 16, **kw) -> CenterNet:
    """The zoo factory: a CenterNet with output (B, num_classes + 4, H/4, W/4); see module doc."""
    return CenterNet(in_channels, num_classes, width=width, **kw)


def split_outputs(outputs: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor,
                                                                     torch.Tensor]:
    """(heatmap logits (B,C,h,w), size (B,2,h,w), offset (B,2,h,w)) views of the stacked output."""
    if outputs.ndim != 4 or outputs.shape[1] != num_classes + 4:
        raise ValueError(f"detector output must be (B, {num_classes}+4, h, w), got "
                         f"{tuple(outputs.shape)}")
    c = num_classes
    return outputs[:, :c], outputs[:, c:c + 2], outputs[:, c + 2:c + 4]


register_model("centernet", centernet)
