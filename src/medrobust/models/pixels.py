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
        _check_numpy_layout(images.shape, channels)
        arr = images[None] if images.ndim == 3 else images
        t = torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2)
    elif isinstance(images, torch.Tensor):
        t = images[None] if images.ndim == 3 else images
        if t.ndim != 4:
            raise ConfigError(f"expected (N,C,H,W) tensors, got shape {tuple(images.shape)}")
        if t.shape[1] != channels:
            raise ConfigError(f"the model takes {channels}-channel images but this tensor has "
                              f"{t.shape[1]} channels (torch tensors are read as (N,C,H,W); "
                              f"shape {tuple(images.shape)})")
    else:
        raise ConfigError(f"images must be a NumPy array or torch tensor, not {type(images)}")
    if t.dtype == torch.uint8:
        return t.to(device, torch.float32) / 255.0
    if not t.is_floating_point():
        raise ConfigError(f"images must be uint8 or float in [0,1], got {t.dtype}")
    t = t.to(device, torch.float32, copy=True)
    if t.numel() and (float(t.min()) < -1e-6 or float(t.max()) > 1 + 1e-6):
        raise ConfigError("float images must lie in [0,1] (pixel space); got values outside")
    return t


def _check_numpy_layout(shape: tuple[int, ...], channels: int) -> None:
    """One line that names the convention when a NumPy array is not (N,H,W,C) / (H,W,C).

    The channel axis is last, so its size is 1 or 3. A last axis of another size means the
    array is laid out otherwise: channels first (N,C,H,W) / (C,H,W) from torch habits, or a
    greyscale stack (N,H,W) without a channel axis; guessing would score the wrong pixels.
    """
    if len(shape) not in (3, 4):
        raise ConfigError(f"NumPy arrays are read as (N,H,W,C) or (H,W,C); got shape {shape}")
    last = shape[-1]
    if last in (1, 3):
        if last != channels:
            raise ConfigError(f"the model takes {channels}-channel images but these have {last} "
                              f"channels (NumPy arrays are read as (N,H,W,C); shape {shape})")
        return
    if shape[-3] in (1, 3):
        hint = ("channels first (N,C,H,W)?" if len(shape) == 4 else
                "a single image (C,H,W) or a greyscale stack (N,H,W)?")
        fix = "images.transpose(0, 2, 3, 1)" if len(shape) == 4 else \
            "images.transpose(1, 2, 0) for one image, images[..., None] for a stack"
    elif len(shape) == 3:
        hint, fix = "a greyscale stack (N,H,W) without a channel axis?", "images[..., None]"
    else:
        hint, fix = "the last axis must be the 1 or 3 colour channels", "reorder the axes"
    raise ConfigError(f"NumPy arrays are read as (N,H,W,C) or (H,W,C), so shape {shape} has "
                      f"{last} channels: {hint} Use {fix}")
