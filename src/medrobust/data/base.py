"""The one dataset type every loader returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medrobust.errors import DataError


class PixelArrays:
    """Shape facts shared by every in-memory dataset type: ``images`` uint8 (N, H, W, C) plus
    ``class_names``."""

    images: np.ndarray
    class_names: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def channels(self) -> int:
        return int(self.images.shape[3])

    @property
    def size(self) -> tuple[int, int]:
        """(height, width)."""
        return int(self.images.shape[1]), int(self.images.shape[2])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def check_images(self, name: str) -> None:
        """One clear line when ``images`` are not uint8 (N, H, W, C)."""
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise DataError(f"{name}: images must be uint8 (N,H,W,C), got {self.images.dtype} "
                            f"{self.images.shape}")


@dataclass(frozen=True)
class ImageDataset(PixelArrays):
    """A split of a labelled image dataset held in memory.

    ``images`` are uint8 (N, H, W, C) in pixel space (C = 1 for greyscale), ``labels`` int64 (N,).
    ``spec`` holds what is needed to load the same data again (name and options), so stores and
    reports can record provenance and rebuild images from indices instead of copying pixels.
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    name: str
    split: str
    spec: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.check_images(self.name)
        if self.labels.shape != (self.images.shape[0],):
            n = self.images.shape[0]
            raise DataError(f"{self.name}: {n} images but labels of shape {self.labels.shape}")

    def subset(self, indices: np.ndarray | list[int]) -> ImageDataset:
        """A new dataset holding only ``indices`` (the spec records them)."""
        idx = np.asarray(indices, dtype=np.int64)
        spec = dict(self.spec, indices=idx.tolist())
        return ImageDataset(self.images[idx], self.labels[idx], self.class_names, self.name,
                            self.split, spec)

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=self.num_classes)
        return {n: int(c) for n, c in zip(self.class_names, counts, strict=True)}

    def describe(self) -> dict[str, Any]:
        """A JSON-able summary for stores, reports and ``--json``."""
        return {
            "name": self.name,
            "split": self.split,
            "n": len(self),
            "height": self.size[0],
            "width": self.size[1],
            "channels": self.channels,
            "classes": list(self.class_names),
            "class_counts": self.class_counts(),
            "spec": self.spec,
        }


#: PIL modes with one channel: a folder whose images all have one of these loads as greyscale
GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})


def is_colour(path: Path) -> bool:
    """Whether an image file is colour, from its header alone (folder loaders pick the channel
    count of a whole folder this way before decoding anything)."""
    # Imported here so ``import medrobust.data`` does not pay for Pillow until a file is read.
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return img.mode not in GREY_MODES
    except (OSError, UnidentifiedImageError) as exc:
        raise DataError(f"cannot read image {path}: {exc}") from None
