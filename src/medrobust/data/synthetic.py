"""Synthetic H&E-like patches, "normal" vs "mitosis", generated offline from a seed.

Tests, demos and CI need an RGB histology-like task that needs no download. Colours follow the
Beer-Lambert stain model (optical density = eosin + haematoxylin concentrations times their
stain vectors), so per-image stain strength can vary the way real slides do. The class cue is
local, as in mitosis detection: positives have a dark, condensed figure near the centre, while
the whole-image colour is dominated by stain variation and nuclei count, not by the label.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medrobust.data.base import ImageDataset
from medrobust.data.catalog import SPLITS, register_dataset
from medrobust.errors import DataError
from medrobust.utils.seeding import numpy_rng
from medrobust.utils.validation import check_range

CLASS_NAMES = ("normal", "mitosis")
DEFAULT_N = {"train": 2000, "val": 400, "test": 400}
# Optical density per unit stain (R, G, B): Ruifrok & Johnston's haematoxylin; an eosin with
# more blue absorption than theirs, which looks pink rather than magenta.
HAEMATOXYLIN = np.array([0.65, 0.70, 0.29], dtype=np.float32)
EOSIN = np.array([0.09, 0.85, 0.40], dtype=np.float32)
MAX_NUCLEI = 7  # ordinary nuclei per patch, besides the central one
CHUNK_PIXELS = 1 << 21


def _ellipses(size: int, cx: np.ndarray, cy: np.ndarray, a: np.ndarray, b: np.ndarray,
              theta: np.ndarray, edge: float = 0.35) -> np.ndarray:
    """Soft ellipse masks in [0, 1]: params of shape (n, m) -> float32 masks (n, m, S, S).

    The quadratic form is built from separable x and y terms and the edge is a linear ramp in
    r^2 of width ``edge``, so the big arrays see only a few in-place passes (no sqrt or exp).
    """
    f32 = np.float32
    cos, sin = np.cos(theta).astype(f32), np.sin(theta).astype(f32)
    ia2, ib2 = (1.0 / (a * a)).astype(f32), (1.0 / (b * b)).astype(f32)
    qa = cos * cos * ia2 + sin * sin * ib2  # coefficient of dx^2
    qc = sin * sin * ia2 + cos * cos * ib2  # coefficient of dy^2
    qb = 2.0 * cos * sin * (ia2 - ib2)  # coefficient of dx*dy
    grid = np.arange(size, dtype=f32)
    dx = grid - cx[..., None].astype(f32)  # (n, m, S) along x
    dy = grid - cy[..., None].astype(f32)  # (n, m, S) along y
    r2 = (qa[..., None] * dx * dx)[..., None, :] + (qc[..., None] * dy * dy)[..., :, None]
    r2 += (qb[..., None] * dx)[..., None, :] * dy[..., :, None]
    # mask = clip((1 - r2) / edge + 0.5, 0, 1), computed in place
    r2 *= f32(-1.0 / edge)
    r2 += f32(1.0 / edge + 0.5)
    return np.clip(r2, 0.0, 1.0, out=r2)


def _texture(rng: np.random.Generator, n: int, size: int, waves: int = 3) -> np.ndarray:
    """Smooth stroma texture in [-1, 1]: a mean of random plane waves, (n, S, S) float32.

    sin(ax + by + p) = sin(ax + p) cos(by) + cos(ax + p) sin(by) keeps the work separable.
    """
    f32 = np.float32
    freq = rng.uniform(1.0, 4.0, (n, waves)) * 2.0 * np.pi / size
    ang = rng.uniform(0.0, 2.0 * np.pi, (n, waves))
    phase = rng.uniform(0.0, 2.0 * np.pi, (n, waves))
    grid = np.arange(size)
    ax = (freq * np.cos(ang))[..., None] * grid + phase[..., None]  # (n, w, S) along x
    by = (freq * np.sin(ang))[..., None] * grid  # (n, w, S) along y
    sx, cx = np.sin(ax).astype(f32), np.cos(ax).astype(f32)
    sy, cy = np.sin(by).astype(f32), np.cos(by).astype(f32)
    total = np.einsum("nwx,nwy->nyx", sx, cy) + np.einsum("nwx,nwy->nyx", cx, sy)
    return total / f32(waves)


def generate_patches(rng: np.random.Generator, labels: np.ndarray, size: int) -> np.ndarray:
    """uint8 (n, size, size, 3) patches for 0/1 ``labels``, all randomness from ``rng``."""
    n, s = len(labels), float(size)
    pos = labels.astype(bool)
    f32 = np.float32
    c = (s - 1.0) / 2.0

    def noise(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape, dtype=f32)

    def near_centre(count: int) -> tuple[np.ndarray, np.ndarray]:
        r, t = rng.uniform(0.0, s / 6.0, count), rng.uniform(0.0, 2.0 * np.pi, count)
        return (c + r * np.cos(t)).astype(f32), (c + r * np.sin(t)).astype(f32)

    # Per-image stain strengths and a faint haematoxylin counterstain: the main sources of
    # whole-image colour variation, independent of the label.
    k_h = rng.uniform(0.65, 1.35, n).astype(f32)
    k_e = rng.uniform(0.5, 1.5, n).astype(f32)
    counter = (rng.uniform(0.0, 0.15, n) * k_h).astype(f32)

    # Eosin stroma: smooth texture plus fine noise.
    eosin = 0.45 + 0.15 * _texture(rng, n, size) + 0.04 * noise(n, size, size)
    eosin *= k_e[:, None, None]

    # Ordinary nuclei at random places; slot 0 is a larger nucleus near the centre that
    # negatives usually have and positives never have (the mitotic figure sits there instead).
    m = MAX_NUCLEI + 1
    nx = rng.uniform(0.0, s - 1.0, (n, m)).astype(f32)
    ny = rng.uniform(0.0, s - 1.0, (n, m)).astype(f32)
    nx[:, 0], ny[:, 0] = near_centre(n)
    a = rng.uniform(s / 14.0, s / 8.0, (n, m)).astype(f32)
    a[:, 0] = rng.uniform(s / 9.0, s / 6.5, n)
    b = a * rng.uniform(0.6, 1.0, (n, m)).astype(f32)
    theta = rng.uniform(0.0, np.pi, (n, m)).astype(f32)
    active = np.arange(m) <= rng.integers(1, m, n)[:, None]
    active[:, 0] = ~pos & (rng.random(n) < 0.9)
    conc = rng.uniform(0.45, 0.9, (n, m)).astype(f32) * k_h[:, None] * active
    masks = _ellipses(size, nx, ny, a, b, theta)
    masks *= conc[..., None, None]
    chromatin = np.clip(1.0 + 0.12 * noise(n, size, size), 0.5, 1.5)
    haem = masks.max(axis=1) * chromatin + counter[:, None, None]

    # Mitotic figure: a thin, condensed, near-black chromosome plate near the centre.
    ip = np.flatnonzero(pos)
    mx, my = near_centre(len(ip))
    ma = rng.uniform(s / 11.0, s / 7.0, len(ip)).astype(f32)
    mb = rng.uniform(s / 24.0, s / 16.0, len(ip)).astype(f32)
    mt = rng.uniform(0.0, np.pi, len(ip)).astype(f32)
    mconc = rng.uniform(2.2, 3.0, len(ip)).astype(f32) * np.sqrt(k_h[ip])
    plate = _ellipses(size, mx[:, None], my[:, None], ma[:, None], mb[:, None], mt[:, None],
                      edge=0.25)[:, 0]
    haem[ip] = np.maximum(haem[ip], plate * mconc[:, None, None])

    od = eosin[..., None] * EOSIN + haem[..., None] * HAEMATOXYLIN
    rgb = 255.0 * np.exp(-od) + 3.0 * noise(*od.shape)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


@register_dataset("synthetic")
def load_synthetic(split: str, data_dir: str | Path | None = None, n: int | None = None,
                   size: int = 32, seed: int = 0) -> ImageDataset:
    """A balanced split of synthetic H&E patches ("normal" 0, "mitosis" 1).

    Every split draws from its own sub-stream of ``seed``, so splits differ and the same
    (seed, split, n, size) always gives identical arrays. ``data_dir`` is ignored.
    """
    del data_dir  # generated, nothing to read
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
    # The spec keeps n only when the caller chose it, so reloading another split from a
    # checkpoint's (train) spec gets that split's own default size.
    chosen_n = n
    n = DEFAULT_N[split] if n is None else int(check_range("n", n, 1))
    size = int(check_range("size", size, 16))
    rng = numpy_rng(seed, SPLITS.index(split))
    labels = np.zeros(n, dtype=np.int64)
    labels[: n // 2] = 1
    labels = rng.permutation(labels)
    # Fixed-size chunks bound memory (masks are chunk x nuclei x size x size floats).
    chunk = max(1, CHUNK_PIXELS // (size * size))
    images = np.concatenate([generate_patches(rng, labels[i:i + chunk], size)
                             for i in range(0, n, chunk)])
    spec = {"dataset": "synthetic", "size": size, "seed": seed}
    if chosen_n is not None:
        spec["n"] = n
    return ImageDataset(images, labels, CLASS_NAMES, "synthetic", split, spec)
