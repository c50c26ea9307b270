"""The dataset type for segmentation: images with one class-index mask each.

A separate type from ``ImageDataset`` because a mask per image is not a label per image; code
written for classification that is handed one of these fails with one clear line (``labels``)
instead of a shape error deep inside training.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medrobust.data.base import PixelArrays
from medrobust.errors import DataError


@dataclass(frozen=True)
class SegmentationDataset(PixelArrays):
    """A split of an image + mask dataset held in memory.

    ``images`` are uint8 (N,H,W,C) in pixel space (C = 1 for greyscale); ``masks`` int64 (N,H,W)
    class indices (0 = background); ``names`` identify each item (file stem, ``stem@y,x`` for
    tiles). ``spec`` reloads the same data (name and options), like ``ImageDataset.spec``.
    """

    images: np.ndarray
    masks: np.ndarray
    names: tuple[str, ...]
    class_names: tuple[str, ...]
    name: str
    split: str
    spec: dict[str, Any] = field(default_factory=dict)

    task = "segmentation"

    def __post_init__(self) -> None:
        self.check_images(self.name)
        if self.masks.shape != self.images.shape[:3]:
            raise DataError(f"{self.name}: masks {self.masks.shape} do not match images "
                            f"{self.images.shape[:3]}")
        if self.masks.dtype != np.int64:
            object.__setattr__(self, "masks", self.masks.astype(np.int64))
        if len(self.names) != self.images.shape[0]:
            raise DataError(f"{self.name}: {self.images.shape[0]} images but "
                            f"{len(self.names)} names")
        if self.masks.size and (self.masks.min() < 0 or self.masks.max() >= len(self.class_names)):
            raise DataError(f"{self.name}: mask values must lie in 0..{len(self.class_names) - 1}")

    @property
    def labels(self) -> np.ndarray:
        raise DataError(f"{self.name} is a segmentation dataset (masks, not labels): use "
                        "--task segmentation")

    def subset(self, indices: np.ndarray | list[int]) -> SegmentationDataset:
        """A new dataset holding only ``indices`` (the spec records them)."""
        idx = np.asarray(indices, dtype=np.int64)
        return SegmentationDataset(self.images[idx], self.masks[idx],
                                   tuple(self.names[i] for i in idx.tolist()), self.class_names,
                                   self.name, self.split, dict(self.spec, indices=idx.tolist()))

    def foreground_fraction(self) -> float:
        return float((self.masks > 0).mean()) if self.masks.size else 0.0

    def describe(self) -> dict[str, Any]:
        """A JSON-able summary for stores, reports and ``--json``."""
        return {"name": self.name, "split": self.split, "task": self.task, "n": len(self),
                "height": self.size[0], "width": self.size[1], "channels": self.channels,
                "classes": list(self.class_names),
                "foreground_fraction": self.foreground_fraction(), "spec": self.spec}
