"""Pixel-space image handling shared across rooms: float conversion with one set of checks (so
every defence and image metric fails the same clear way on bad input) and display conversion.

Defences and metrics accept what the datasets hold (uint8 0..255) or float [0,1], one image
(H,W,C) or a batch (N,H,W,C), and hand back the same dtype, shape and range.
"""

from __future__ import annotations

import numpy as np

from medrobust.errors import ConfigError


def to_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """(H, W), (H, W, 1) or (H, W, 3) image -> uint8 (H, W, 3), for display."""
    img = np.asarray(image)
    if img.dtype != np.uint8:
        img = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    if img.ndim == 2:
        img = img[:, :, None]
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    return img[:, :, :3]


def as_float_batch(images: np.ndarray, name: str = "images") -> tuple[np.ndarray, bool]:
    """``images`` as a new float32 (N,H,W,C) array in [0,1], and whether a batch axis was added.

    The input is never modified (a copy is always made).
    """
    if not isinstance(images, np.ndarray):
        raise ConfigError(f"{name} must be a NumPy array (N,H,W,C) or (H,W,C), not {type(images).__name__}")
    if images.ndim not in (3, 4):
        raise ConfigError(f"{name} must be (N,H,W,C) or (H,W,C), got shape {images.shape}")
    single = images.ndim == 3
    arr = images[None] if single else images
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / np.float32(255.0), single
    if not np.issubdtype(arr.dtype, np.floating):
        raise ConfigError(f"{name} must be uint8 0..255 or float [0,1], got {arr.dtype}")
    if arr.size and (not np.isfinite(arr).all() or arr.min() < -1e-6 or arr.max() > 1 + 1e-6):
        raise ConfigError(f"float {name} must lie in [0,1] (pixel space); got values outside")
    return np.clip(arr.astype(np.float32), 0.0, 1.0), single


def from_float_batch(x: np.ndarray, like: np.ndarray, single: bool) -> np.ndarray:
    """Float [0,1] (N,H,W,C) back to the dtype and shape of ``like`` (uint8 is rounded)."""
    x = np.clip(x, 0.0, 1.0)
    uint8 = like.dtype == np.uint8
    out = np.rint(x * 255.0).astype(np.uint8) if uint8 else x.astype(like.dtype, copy=False)
    return out[0] if single else out
