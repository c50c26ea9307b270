"""Budgets on two scales: L2 on the [0,1] pixel scale (what medrobust attacks and trains with)
and the per-pixel RMS in 1/255 units a reader can compare across image sizes.

An L2 budget only means something relative to the input size: a 0.5 L2 change spread over a
3x224x224 image is 0.0006 per pixel, over 1x28x28 it is 0.018. The RMS view,
eps / sqrt(C*H*W) * 255, says how many grey levels each pixel moves on average.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def rms_255(eps: float, shape: Sequence[int]) -> float:
    """Per-pixel RMS of an L2 budget ``eps`` for images of ``shape`` (C,H,W), in 1/255 units."""
    d = math.prod(int(s) for s in shape)
    if d <= 0:
        raise ValueError(f"image shape {tuple(shape)} has no pixels")
    return float(eps) / math.sqrt(d) * 255.0


def l2_from_rms_255(rms: float, shape: Sequence[int]) -> float:
    """The L2 budget on the [0,1] scale whose per-pixel RMS is ``rms`` grey levels."""
    return float(rms) / 255.0 * math.sqrt(math.prod(int(s) for s in shape))


def both_scales(eps: float | None, shape: Sequence[int]) -> dict[str, float | None]:
    """``{"l2": eps, "rms_255": ...}`` for reports (None stays None)."""
    return {"l2": eps, "rms_255": None if eps is None else rms_255(eps, shape)}
