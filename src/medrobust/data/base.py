"""The one dataset type every loader returns."""

from __future__ import annotations

import re
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medrobust.data.medical import (
    AXIS_DIM,
    DEFAULT_WINDOW,
    SOURCES,
    WINDOW_ORDER,
    Header,
    Volume,
    apply_window,
    check_axis,
    check_finite,
    check_window,
    file_stem,
    medical_format,
    read_header,
    read_volume,
)
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
    ``names`` identify each image where the loader knows them (a folder: the file name, with
    ``#z=12`` for a slice of a volume); empty otherwise.
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    name: str
    split: str
    spec: dict[str, Any] = field(default_factory=dict)
    names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.check_images(self.name)
        n = self.images.shape[0]
        if self.labels.shape != (n,):
            raise DataError(f"{self.name}: {n} images but labels of shape {self.labels.shape}")
        if self.names and len(self.names) != n:
            raise DataError(f"{self.name}: {n} images but {len(self.names)} names")

    def subset(self, indices: np.ndarray | list[int]) -> ImageDataset:
        """A new dataset holding only ``indices`` (the spec records them)."""
        idx = np.asarray(indices, dtype=np.int64)
        spec = dict(self.spec, indices=idx.tolist())
        names = tuple(self.names[i] for i in idx.tolist()) if self.names else ()
        return ImageDataset(self.images[idx], self.labels[idx], self.class_names, self.name,
                            self.split, spec, names)

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


@dataclass(frozen=True)
class ImageRef:
    """One image of a file: the whole file, or slice ``index`` along ``axis`` of a 3D volume
    (DICOM multi-frame, NIfTI). Its ``name``/``stem`` record both: ``scan.nii.gz#z=12``."""

    path: Path
    axis: str | None = None
    index: int | None = None

    @property
    def tag(self) -> str:
        """``#z=12`` for a slice, empty for a whole file."""
        return "" if self.index is None else f"#{self.axis}={self.index}"

    @property
    def name(self) -> str:
        return self.path.name + self.tag

    @property
    def stem(self) -> str:
        """The file name without its type (``.nii.gz`` counts as one), plus the slice tag."""
        return file_stem(self.path) + self.tag

    def __str__(self) -> str:
        return str(self.path) + self.tag


class ImageReader:
    """How one dataset load reads its files: the intensity ``window`` (centre, width; None:
    each file's own, else the default) and the ``axis`` volumes are sliced along, checked once;
    which window each file got (``spec()`` records it); and the last decoded volumes, so a
    volume cut into slices is decoded once, not once per slice.
    """

    #: volumes kept decoded: an image volume and its mask volume (segfolder reads them in turn)
    KEEP = 2

    def __init__(self, window: Any = None, axis: str = "z") -> None:
        self.window = check_window(window)
        self.axis = check_axis(axis)
        self._headers: dict[Path, Header] = {}
        self._volumes: OrderedDict[tuple[Path, bool], Volume] = OrderedDict()
        self._used: dict[str, set[Path]] = {}

    def header(self, path: Path, what: str = "image") -> Header:
        """The header of a DICOM or NIfTI file (read once per load)."""
        if path not in self._headers:
            self._headers[path] = read_header(path, what)
        return self._headers[path]

    def images(self, path: Path, what: str = "image") -> list[ImageRef]:
        """The images a file holds: itself, or one per slice of a 3D volume along ``axis``."""
        if medical_format(path) is None:
            return [ImageRef(path)]
        header = self.header(path, what)
        if header.flat_axis() is not None:
            _check_plane(path, what, header, header.flat_axis())  # type: ignore[arg-type]
            return [ImageRef(path)]
        _check_plane(path, what, header, self.axis)
        return [ImageRef(path, self.axis, k) for k in range(header.shape[AXIS_DIM[self.axis]])]

    def is_colour(self, path: Path) -> bool:
        """Whether a file is colour, from its header alone."""
        if medical_format(path) is not None:
            return self.header(path).colour
        with open_image(path) as img:
            return img.mode not in GREY_MODES

    def spacing(self, ref: ImageRef) -> tuple[float, float, str] | None:
        """(row mm, column mm, header field) of an image, from its file's header (DICOM
        PixelSpacing, else ImagerPixelSpacing; NIfTI zooms); None when the header has none."""
        if medical_format(ref.path) is None:
            return None
        header = self.header(ref.path)
        axis = ref.axis or header.flat_axis() or self.axis
        row, col = header.plane_spacing(axis)
        if row is None or col is None:
            return None
        return row, col, header.spacing_source or "header"

    def medical_image(self, ref: ImageRef, what: str, labels: bool) -> PILImage.Image:
        """A DICOM/NIfTI image or slice as PIL: windowed "L" or "RGB", or (``labels``) the
        stored values in the narrowest of "L", "I" or "F"."""
        from PIL import Image

        header = self.header(ref.path, what)
        axis = ref.axis or header.flat_axis()
        if axis is None:
            n = header.shape[AXIS_DIM[self.axis]]
            raise DataError(f"{what} {ref.path} is a 3D volume ({n} slices along {self.axis}): "
                            "one 2D image is needed here (the folder datasets slice volumes)")
        _check_plane(ref.path, what, header, axis)
        volume = self._volume(ref.path, what, labels)
        plane = np.ascontiguousarray(volume.values.take(ref.index or 0, axis=AXIS_DIM[axis]))
        if labels:
            return _labels_image(plane, ref, what)
        return Image.fromarray(plane)

    def _volume(self, path: Path, what: str, labels: bool) -> Volume:
        key = (path, labels)
        if key in self._volumes:
            self._volumes.move_to_end(key)
            return self._volumes[key]
        volume = read_volume(path, self.window, labels, what)
        if not labels:
            self._used.setdefault(volume.source, set()).add(path)
        self._volumes[key] = volume
        while len(self._volumes) > self.KEEP:
            self._volumes.popitem(last=False)
        return volume

    def to_8bit(self, img: PILImage.Image, path: Path, what: str) -> PILImage.Image:
        """A 16-bit/float greyscale PNG/TIFF as "L": the user's window, else its min-max."""
        from PIL import Image

        if self.window is None:
            self._used.setdefault("min-max", set()).add(path)
            return wide_to_8bit(img, path, what)
        a = np.asarray(img, dtype=np.float64)
        check_finite(a, path, what, "numbers")
        self._used.setdefault("user", set()).add(path)
        return Image.fromarray(apply_window(a, *self.window))

    def spec(self) -> dict[str, Any]:
        """The options and the windows used, for a dataset's ``spec``: ``window`` and ``axis``
        load the same data again; ``windowing`` says how each file's intensities were mapped
        (``files``: how many files each source served)."""
        return {"window": None if self.window is None else list(self.window), "axis": self.axis,
                "windowing": {"order": WINDOW_ORDER, "default": DEFAULT_WINDOW,
                              "files": {s: len(self._used[s]) for s in SOURCES if s in self._used}}}


def _check_plane(path: Path, what: str, header: Header, axis: str) -> None:
    """Slices over Pillow's decompression-bomb limit are refused as PNGs are."""
    from PIL import Image

    rows, cols = header.plane(axis)
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and rows * cols > limit:
        raise DataError(f"{what} {path} is {cols}x{rows} pixels, over Pillow's decompression-bomb "
                        f"limit ({limit} pixels): downscale it or cut it into tiles first")


def _labels_image(a: np.ndarray, ref: ImageRef, what: str) -> PILImage.Image:
    """Mask values as PIL: "L" when they fit 0..255 (so ``read_mask`` applies its 8-bit rules,
    e.g. small class indices), "I" for wider integers, "F" for fractions or non-finite values
    (which ``read_mask`` refuses or thresholds as it does for float TIFFs)."""
    from PIL import Image

    if a.dtype.kind == "f":
        if not (np.all(np.isfinite(a)) and np.array_equal(a, np.round(a))):
            return Image.fromarray(a.astype(np.float32))
        a = a.astype(np.int64)
    lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
    if lo >= 0 and hi <= 255:
        return Image.fromarray(a.astype(np.uint8))
    if lo >= -(2**31) and hi < 2**31:
        return Image.fromarray(a.astype(np.int32))
    raise DataError(f"{what} {ref} has values {lo}..{hi}, outside the 32-bit range of masks")


@contextmanager
def open_image(source: Path | ImageRef, what: str = "image", *, reader: ImageReader | None = None,
               labels: bool = False) -> Iterator[PILImage.Image]:
    """Every image file of this package is opened here, so each loader refuses the same way.

    PNG, JPEG, TIFF, BMP go through ``PIL.Image.open``: a file Pillow cannot identify is one
    DataError naming it. So is a file over Pillow's decompression-bomb limit, already at the
    warning level (``PIL.Image.MAX_IMAGE_PIXELS``, about 89 M pixels): decoding it would take
    gigabytes before any resize, and the warning alone would print a second line. With a
    ``reader``, 16-bit/float greyscale images come back as "L" through its window (else their
    min-max) unless ``labels``.

    DICOM and NIfTI (``medical``) are decoded and windowed to "L" or "RGB", or with ``labels``
    give their stored values; a ``source`` that is an ``ImageRef`` picks one slice of a volume.
    Their problems (cut short, no pixel data, 4D, NaN, a codec not installed) are one DataError
    line each. Errors while decoding inside the ``with`` body are the caller's to name.
    """
    # Imported here so ``import medrobust.data`` does not pay for Pillow until a file is read.
    from PIL import Image, UnidentifiedImageError

    ref = source if isinstance(source, ImageRef) else ImageRef(Path(source))
    path = ref.path
    if medical_format(path) is not None:
        img = (reader or ImageReader()).medical_image(ref, what, labels)
    else:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                img = Image.open(path)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise DataError(_bomb_message(path, what, exc)) from None
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
            raise DataError(f"cannot read {what} {path}: {exc}") from None
        if reader is not None and not labels and img.mode in WIDE_MODES:
            with img:
                img = reader.to_8bit(img, path, what)
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
