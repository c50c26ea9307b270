"""Target masks for targeted segmentation attacks.

The paper's realistic target is another image's ground-truth mask (``other``): a plausible
finding in the wrong place. Edits of the image's own mask model subtler clinical harm: hide every
finding (``erase``), hide one (``erase-one``, the largest connected object), move it (``shift``)
or enlarge it (``dilate``); ``file`` uses a mask drawn by hand. Masks are (H,W) int64 class
indices; x is the column and y the row.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage
from skimage.morphology import dilation, disk

from medrobust.data.segfolder import _resize, read_mask
from medrobust.errors import ConfigError, DataError
from medrobust.utils.seeding import numpy_rng

TARGET_MODES = ("other", "erase", "erase-one", "shift", "dilate", "file")


def erase_all(mask: np.ndarray) -> np.ndarray:
    """Everything background."""
    return np.zeros_like(mask)


def erase_largest_object(mask: np.ndarray) -> np.ndarray:
    """The mask without its largest 8-connected foreground object (unchanged if it has none)."""
    labels, count = ndimage.label(mask > 0, structure=np.ones((3, 3), dtype=bool))
    out = np.array(mask, copy=True)
    if count == 0:
        return out
    sizes = np.bincount(labels.ravel())[1:]
    out[labels == int(np.argmax(sizes)) + 1] = 0
    return out


def shift_mask(mask: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """The mask moved ``dx`` columns right and ``dy`` rows down; uncovered pixels background."""
    h, w = mask.shape
    out = np.zeros_like(mask)
    if abs(dx) >= w or abs(dy) >= h:
        return out
    src = mask[max(0, -dy):h - max(0, dy), max(0, -dx):w - max(0, dx)]
    out[max(0, dy):max(0, dy) + src.shape[0], max(0, dx):max(0, dx) + src.shape[1]] = src
    return out


def dilate_mask(mask: np.ndarray, radius: int) -> np.ndarray:
    """Grey dilation with a disk (binary masks grow; touching classes take the larger index)."""
    if radius <= 0:
        return np.array(mask, copy=True)
    return dilation(mask, disk(int(radius))).astype(mask.dtype)


def mask_from_file(path: str | Path, size: tuple[int, int], mask_mode: str = "auto"
                   ) -> np.ndarray:
    """A mask image resized (nearest) to ``size`` = (height, width)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"target mask file {p} does not exist")
    return _resize(read_mask(p, mask_mode), size, nearest=True)


def pick_other(n: int, index: int, seed: int) -> int:
    """Another item of 0..n-1 than ``index``, from a stream keyed by the index (resume-safe)."""
    if n < 2:
        raise DataError("target mode 'other' needs at least two images in the split")
    j = int(numpy_rng(seed, index).integers(n - 1))
    return j + 1 if j >= index else j


@dataclass(frozen=True)
class TargetSpec:
    """How to build each image's target mask (recorded with the run)."""

    mode: str = "other"
    seed: int = 0
    dx: int = 16
    dy: int = 0
    radius: int = 3
    file: str | None = None
    mask_mode: str = "auto"

    def __post_init__(self) -> None:
        if self.mode not in TARGET_MODES:
            raise ConfigError(f"target mode must be one of {', '.join(TARGET_MODES)}; "
                              f"got {self.mode!r}")
        if self.mode == "file" and not self.file:
            raise ConfigError("target mode 'file' needs a mask file (--target-file)")
        if self.mode == "file" and not Path(self.file).is_file():
            raise DataError(f"target mask file {self.file} does not exist")
        if self.radius < 0:
            raise ConfigError("dilation radius must be >= 0")

    def build(self, masks: np.ndarray, index: int) -> tuple[np.ndarray, int | None]:
        """(target mask, index of the image whose mask it is, for ``other``) for item ``index``
        of the split whose ground-truth masks are ``masks`` (N,H,W)."""
        own = masks[index]
        if self.mode == "other":
            j = pick_other(len(masks), index, self.seed)
            return np.array(masks[j], copy=True), j
        if self.mode == "erase":
            return erase_all(own), None
        if self.mode == "erase-one":
            return erase_largest_object(own), None
        if self.mode == "shift":
            return shift_mask(own, self.dx, self.dy), None
        if self.mode == "dilate":
            return dilate_mask(own, self.radius), None
        return mask_from_file(str(self.file), own.shape, self.mask_mode), None

    def describe(self) -> dict[str, object]:
        out: dict[str, object] = {"mode": self.mode}
        if self.mode == "other":
            out["seed"] = self.seed
        elif self.mode == "shift":
            out.update(dx=self.dx, dy=self.dy)
        elif self.mode == "dilate":
            out["radius"] = self.radius
        elif self.mode == "file":
            out.update(file=str(Path(str(self.file)).resolve()), mask_mode=self.mask_mode)
        return out
