"""The one dataset type every loader returns."""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medrobust.errors import DataError

if TYPE_CHECKING:
    from PIL import Image as PILImage


class DataWarning(UserWarning):
    """Data loaded with something left out that the user should know about (e.g. unusable boxes);
    the CLI prints it as one ``warning:`` line."""


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
#: PIL modes wider than 8 bits (16-bit, 32-bit integer and float greyscale)
WIDE_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N", "F"})


@contextmanager
def open_image(path: Path, what: str = "image") -> Iterator[PILImage.Image]:
    """``PIL.Image.open`` for every loader of this package, so each refuses the same way.

    A file Pillow cannot identify is one DataError naming it. So is a file over Pillow's
    decompression-bomb limit, already at the warning level (``PIL.Image.MAX_IMAGE_PIXELS``, about
    89 M pixels): decoding it would take gigabytes before any resize, and the warning alone would
    print a second line. Errors while decoding inside the ``with`` body are the caller's to name.
    """
    # Imported here so ``import medrobust.data`` does not pay for Pillow until a file is read.
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DataError(_bomb_message(path, what, exc)) from None
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
        raise DataError(f"cannot read {what} {path}: {exc}") from None
    with img:
        yield img


def _bomb_message(path: Path, what: str, exc: Exception) -> str:
    from PIL import Image

    size = _declared_size(path)
    if size is not None:
        dims = f"{size[0]}x{size[1]} pixels"
    else:  # Pillow's own message holds the pixel count: "Image size (N pixels) exceeds ..."
        found = re.search(r"\((\d+) pixels\)", str(exc))
        dims = f"{found.group(1)} pixels" if found else "too large"
    return (f"{what} {path} is {dims}, over Pillow's decompression-bomb limit "
            f"({Image.MAX_IMAGE_PIXELS} pixels): downscale it or cut it into tiles first")


def _declared_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from a file's header. ``Image.open`` refuses a bomb before it tells its
    size, so the format plugins are asked directly, in Pillow's order; None if none reads it."""
    from PIL import Image

    Image.init()
    try:
        with open(path, "rb") as fh:
            prefix = fh.read(16)
            for fmt in Image.ID:
                factory, accept = Image.OPEN[fmt]
                result = not accept or accept(prefix)
                if isinstance(result, str) or not result:  # a str is Pillow's "maybe" note
                    continue
                try:
                    fh.seek(0)
                    return tuple(factory(fh, str(path)).size)  # type: ignore[return-value]
                except Exception:  # this plugin cannot read it; Pillow would try the next
                    continue
    except OSError:
        return None
    return None


def wide_to_8bit(img: PILImage.Image, path: Path, what: str = "image") -> PILImage.Image:
    """A 16-bit, 32-bit or float greyscale image scaled by its own range (min..max) to 8-bit "L".

    A NaN or infinite pixel would make the whole range (and so the whole image) NaN, which casts
    to zeros with only a NumPy warning: such a file is refused, naming how many pixels are bad.
    """
    from PIL import Image

    a = np.asarray(img, dtype=np.float64)
    check_finite(a, path, what, "numbers")
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    a = np.zeros_like(a) if hi <= lo else (a - lo) / (hi - lo) * 255.0
    return Image.fromarray(np.round(a).astype(np.uint8))


def check_finite(a: np.ndarray, path: Path, what: str, fix: str) -> None:
    """Refuse a float image or mask with NaN or infinite pixels, naming how many (scaling or
    casting would silently turn the whole image into zeros)."""
    bad = int(np.count_nonzero(~np.isfinite(a)))
    if bad:
        raise DataError(f"{what} {path} has {bad} non-finite pixel value(s) (NaN or infinity) "
                        f"of {a.size}: replace them with {fix} before loading it")


def is_colour(path: Path) -> bool:
    """Whether an image file is colour, from its header alone (folder loaders pick the channel
    count of a whole folder this way before decoding anything)."""
    with open_image(path) as img:
        return img.mode not in GREY_MODES
