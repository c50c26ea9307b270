"""Pixel-space input: the one conversion every model wrapper applies to what users hand it."""

from __future__ import annotations

import numpy as np
import torch

from medrobust.errors import ConfigError


def pixel_tensor(images: np.ndarray | torch.Tensor, channels: int,
                 device: torch.device | str) -> torch.Tensor:
    """Pixel-space images to a new float [0,1] (N,C,H,W) tensor on ``device``.

    NumPy arrays are (N,H,W,C) or (H,W,C) like the datasets; tensors are (N,C,H,W) or (C,H,W).
    uint8 is scaled from 0..255; floats must already lie in [0,1]. The result never aliases the
    input, so callers may modify it without touching the user's images.
    """
    if isinstance(images, np.ndarray):
        arr = images[None] if images.ndim == 3 else images
        if arr.ndim != 4:
            raise ConfigError(f"expected (N,H,W,C) or (H,W,C) images, got shape {images.shape}")
        t = torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2)
    elif isinstance(images, torch.Tensor):
        t = images[None] if images.ndim == 3 else images
        if t.ndim != 4:
            raise ConfigError(f"expected (N,C,H,W) tensors, got shape {tuple(images.shape)}")
    else:
        raise ConfigError(f"images must be a NumPy array or torch tensor, not {type(images)}")
    if t.shape[1] != channels:
        raise ConfigError(f"model expects {channels} channel(s), images have {t.shape[1]}")
    if t.dtype == torch.uint8:
        return t.to(device, torch.float32) / 255.0
    if not t.is_floating_point():
        raise ConfigError(f"images must be uint8 or float in [0,1], got {t.dtype}")
    t = t.to(device, torch.float32, copy=True)
    if t.numel() and (float(t.min()) < -1e-6 or float(t.max()) > 1 + 1e-6):
        raise ConfigError("float images must lie in [0,1] (pixel space); got values outside")
    return t
