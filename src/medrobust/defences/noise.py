"""Impulse noise for training denoisers: pixel-level impulses and textbook channel-wise salt-and-pepper.

A one-pixel attack replaces every channel of one location, so the training noise that matches it
is a *pixel-level* impulse (``pixel_impulse``): whole pixels set to a random colour, to black or
white (salt/pepper extremes), or to a corner of the RGB cube. ``channel_salt_pepper`` is the
textbook variant (scikit-image's ``random_noise(mode="s&p")``), which flips channels independently
and so, on colour images, rarely produces the fully replaced pixels an attack makes.
"""

from __future__ import annotations

import numpy as np
from skimage.util import random_noise

from medrobust.errors import ConfigError
from medrobust.utils.images import as_float_batch, from_float_batch
from medrobust.utils.seeding import numpy_rng
from medrobust.utils.validation import check_choice, check_range

#: Colours of a pixel-level impulse. random: uniform 0..255 per channel; saltpepper: all channels
#: 0 or all 255 (black/white); extreme: each channel 0 or 255 (a corner of the colour cube).
IMPULSE_COLOURS = ("random", "saltpepper", "extreme")


def impulse_count(rng: np.random.Generator, density: float, locations: int) -> int:
    """How many locations to hit: density * locations, rounded stochastically (unbiased).

    Plain rounding would turn a 0.1% density on a 28x28 image into zero impulses every time;
    stochastic rounding keeps the mean exact and each image within one pixel of the request.
    """
    want = density * locations
    base = int(np.floor(want))
    return min(locations, base + int(rng.random() < want - base))


def pixel_impulse(images: np.ndarray, density: float, colours: str = "random", seed: int = 0,
                  return_mask: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Replace a share ``density`` of pixel locations (all channels at once) in each image.

    ``images``: uint8 or float [0,1], (N,H,W,C) or (H,W,C); the result has the same dtype and
    shape, and the input is not modified. With ``return_mask`` also the (N,H,W) / (H,W) bool mask
    of replaced locations (a replaced pixel may by chance keep its old colour). Each image draws
    from its own stream (seed, position in the batch).
    """
    density = float(check_range("density", density, 0.0, 1.0))
    check_choice("colours", colours, IMPULSE_COLOURS)
    x, single = as_float_batch(images)
    n, h, w, c = x.shape
    out = x.copy()
    mask = np.zeros((n, h, w), dtype=bool)
    for i in range(n):
        rng = numpy_rng(seed, i)
        k = impulse_count(rng, density, h * w)
        flat = rng.choice(h * w, size=k, replace=False)
        ys, xs = np.divmod(flat, w)  # y = row, x = column
        if colours == "random":
            values = rng.integers(0, 256, size=(k, c)) / 255.0
        elif colours == "saltpepper":
            values = np.repeat(rng.integers(0, 2, size=(k, 1)), c, axis=1).astype(np.float64)
        else:
            values = rng.integers(0, 2, size=(k, c)).astype(np.float64)
        out[i, ys, xs, :] = values
        mask[i, ys, xs] = True
    result = from_float_batch(out, images, single)
    if return_mask:
        return result, (mask[0] if single else mask)
    return result


def channel_salt_pepper(images: np.ndarray, density: float, seed: int = 0) -> np.ndarray:
    """Textbook salt-and-pepper: each channel value independently set to 0 or 1 with prob ``density``.

    scikit-image's ``random_noise`` does the work; the result keeps the input's dtype and shape.
    """
    density = float(check_range("density", density, 0.0, 1.0))
    x, single = as_float_batch(images)
    if density == 0.0:
        return from_float_batch(x, images, single)
    out = np.stack([random_noise(x[i], mode="s&p", amount=density, rng=numpy_rng(seed, i))
                    for i in range(x.shape[0])])
    return from_float_batch(out.astype(np.float32), images, single)


def mixed_impulse(images: np.ndarray, densities: tuple[float, float], seed: int = 0,
                  channel_share: float = 0.0
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Training noise: per image a density log-uniform in ``densities`` and a random impulse kind.

    Returns float32 [0,1] (N,H,W,C) noisy images and the (N,H,W) mask of changed locations (any
    channel differs). ``channel_share`` of the images get channel-wise salt-and-pepper instead of
    pixel-level impulses. Sweeping densities (e.g. 0.1% to 5%) teaches the denoiser both the lone
    impulse of an attack and crowded noise.
    """
    lo, hi = (float(d) for d in densities)
    if not 0.0 < lo <= hi <= 1.0:
        raise ConfigError(f"densities must satisfy 0 < low <= high <= 1, got {densities}")
    check_range("channel_share", channel_share, 0.0, 1.0)
    x, _ = as_float_batch(images)
    rng = numpy_rng(seed)
    out = np.empty_like(x)
    for i in range(x.shape[0]):
        density = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
        sub = int(rng.integers(0, 2**31))
        if rng.random() < channel_share:
            out[i] = channel_salt_pepper(x[i], density, seed=sub)
        else:
            kind = IMPULSE_COLOURS[int(rng.integers(0, len(IMPULSE_COLOURS)))]
            out[i] = pixel_impulse(x[i], density, colours=kind, seed=sub)
    changed = np.abs(out - x).max(axis=-1) > 0.5 / 255.0
    return out, changed
