"""A user's own segmentation data: ``images/`` and ``masks/`` with matching file names.

The layout of ../shared/data/dsb2018_nuclei and of most public sets (Kvasir-SEG, ISIC, GlaS...):
``root/images/<name>.<ext>`` and ``root/masks/<name>.<ext>`` (a mask may also be called
``<name>_mask.<ext>``, ``_segmentation``, ...: ``MASK_TAILS``), or the same under
``root/{train,val,test}/``. Images of any size, greyscale
or colour, are resized (PIL bilinear; masks nearest so classes never blend) or cut into tiles of
a fixed size. Without split folders a seeded split over the file names is made, so the same seed
gives the same split and tiles of one image never land in two splits.

DICOM and NIfTI images and masks are read too (``base.open_image``): a 3D image volume and its
mask volume are sliced along the same axis and paired slice by slice (``scan#z=12``); the split
is over files, so the slices of one scan stay in one split.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from medrobust.data.base import WIDE_MODES, ImageReader, ImageRef, check_finite, open_image
from medrobust.data.catalog import SPLITS, register_dataset
from medrobust.data.medical import MEDICAL_SUFFIXES, file_stem, suffix_of
from medrobust.data.segmentation import SegmentationDataset
from medrobust.errors import DataError
from medrobust.utils.progress import progress
from medrobust.utils.seeding import numpy_rng
from medrobust.utils.validation import check_choice, check_range, check_split_fractions

SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", *MEDICAL_SUFFIXES)
LOSSY = (".jpg", ".jpeg")
MODES = ("resize", "tile")
MASK_MODES = ("auto", "binary", "index")
MAX_INDEX_CLASSES = 32
#: A mask matches its image by name: the same stem, or the stem plus one of these endings.
MASK_TAILS = ("", "_mask", "-mask", "_seg", "_segmentation", "_label", "_gt")


def _files(folder: Path) -> dict[str, Path]:
    """Stem -> file for the image files of a folder (hidden files skipped)."""
    if not folder.is_dir():
        return {}
    return {file_stem(p): p for p in sorted(folder.iterdir())
            if p.is_file() and suffix_of(p) in SUFFIXES and not p.name.startswith(".")}


def _pairs(root: Path) -> list[tuple[str, Path, Path]]:
    """(name, image, mask) for every image of ``root/images`` with a mask in ``root/masks``."""
    images, masks = _files(root / "images"), _files(root / "masks")
    if not images:
        raise DataError(f"no images in {root / 'images'} (PNG, JPEG, TIFF, BMP, DICOM or NIfTI)")
    out, missing = [], []
    for stem, path in images.items():
        mask = next((masks[stem + tail] for tail in MASK_TAILS if stem + tail in masks), None)
        if mask is None:
            missing.append(path.name)
        else:
            out.append((stem, path, mask))
    if missing:
        raise DataError(f"{len(missing)} image(s) in {root / 'images'} have no mask of the same "
                        f"name in {root / 'masks'} (first: {missing[0]})")
    return out


def seeded_split(n: int, val_fraction: float, test_fraction: float, seed: int
                 ) -> dict[str, np.ndarray]:
    """Disjoint sorted index arrays covering 0..n-1; train keeps at least one item."""
    order = numpy_rng(seed).permutation(n)
    n_test = round(n * test_fraction)
    n_val = round(n * val_fraction)
    if n >= 3:  # tiny folders still get one validation and one test item when asked for
        n_test = max(n_test, 1 if test_fraction > 0 else 0)
        n_val = max(n_val, 1 if val_fraction > 0 else 0)
    if n_test + n_val >= n:
        n_test, n_val = min(n_test, max(n - 1, 0)), max(min(n_val, n - 1 - n_test), 0)
    return {"test": np.sort(order[:n_test]), "val": np.sort(order[n_test:n_test + n_val]),
            "train": np.sort(order[n_test + n_val:])}


def read_image(path: Path | ImageRef, channels: int, reader: ImageReader | None = None
               ) -> np.ndarray:
    """uint8 (H,W,C) at native size; 16-bit/float greyscale, DICOM and NIfTI go through the
    reader's window (its default: the file's own range, see ``medical``)."""
    try:
        with open_image(path, reader=reader or ImageReader()) as img:
            arr = np.asarray(img.convert("RGB" if channels == 3 else "L"), dtype=np.uint8)
    except (OSError, ValueError) as exc:  # decoding a damaged file
        raise DataError(f"cannot read image {path}: {exc}") from None
    return arr.reshape(arr.shape[0], arr.shape[1], channels)


def read_mask(path: str | Path | ImageRef, mask_mode: str = "auto",
              reader: ImageReader | None = None) -> np.ndarray:
    """int64 (H,W) class indices at native size.

    ``binary``: foreground is any value > 0 (> 127 for JPEG, whose compression smears 0/255).
    ``index``: the values are class indices. ``auto``: 16/32-bit files (instance labels) are
    binary > 0; 8-bit values 0/1 are kept; other 8-bit PNGs with values below 32 are class
    indices; anything else (0/255 masks, JPEG masks) is binary > 127. DICOM/NIfTI masks give
    their stored values, as 8-bit when they fit 0..255 (so label maps keep their indices).
    """
    path = path if isinstance(path, ImageRef) else ImageRef(Path(path))
    lossy = suffix_of(path.path) in LOSSY
    try:
        with open_image(path, "mask", reader=reader, labels=True) as img:
            wide = img.mode in WIDE_MODES
            a = np.asarray(img if img.mode in ("P", "L") or wide else img.convert("L"))
    except (OSError, ValueError) as exc:  # decoding a damaged file
        raise DataError(f"cannot read mask {path}: {exc}") from None
    if a.ndim != 2:
        raise DataError(f"mask {path} is not a single-channel image (shape {a.shape})")
    if a.dtype.kind == "f":  # a float mask: NaN is neither foreground nor background
        check_finite(a, path, "mask", "class values")
    a = a.astype(np.int64)
    top = int(a.max()) if a.size else 0
    if mask_mode == "index":
        return a
    if mask_mode == "binary" or wide:
        return (a > (127 if lossy else 0)).astype(np.int64)
    if top <= 1:
        return a
    if not lossy and top < MAX_INDEX_CLASSES:
        return a
    return (a > 127).astype(np.int64)


def _resize(arr: np.ndarray, size: tuple[int, int], nearest: bool) -> np.ndarray:
    """(H,W[,C]) resized to (height, width) = ``size`` with PIL."""
    h, w = size
    if arr.shape[:2] == (h, w):
        return arr
    resample = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
    if arr.ndim == 3:
        img = Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr)
        out = np.asarray(img.resize((w, h), resample))
        return out.reshape(h, w, arr.shape[2])
    img = Image.fromarray(arr.astype(np.int32), mode="I")
    return np.asarray(img.resize((w, h), resample)).astype(np.int64)


def _tile_origins(length: int, tile: int) -> list[int]:
    """Tile starts covering 0..length with the last tile flush with the edge."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile + 1, tile))
    if starts[-1] + tile < length:
        starts.append(length - tile)
    return starts


def _tiles(image: np.ndarray, mask: np.ndarray, tile: int
           ) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(suffix, image tile, mask tile); images smaller than a tile are enlarged first."""
    h, w = mask.shape
    if min(h, w) < tile:
        scale = tile / min(h, w)
        new = (max(tile, round(h * scale)), max(tile, round(w * scale)))
        image, mask = _resize(image, new, False), _resize(mask, new, True)
        h, w = new
    return [(f"@{y},{x}", image[y:y + tile, x:x + tile], mask[y:y + tile, x:x + tile])
            for y in _tile_origins(h, tile) for x in _tile_origins(w, tile)]


def _slice_pairs(items: list[tuple[str, Path, Path]], reader: ImageReader
                 ) -> list[tuple[ImageRef, ImageRef]]:
    """(image, mask) per image of the split: a 3D image and its 3D mask slice by slice."""
    out = []
    for _, ipath, mpath in items:
        irefs, mrefs = reader.images(ipath), reader.images(mpath, "mask")
        if len(irefs) != len(mrefs):
            raise DataError(f"{ipath.name} has {len(irefs)} slice(s) along {reader.axis} but its "
                            f"mask {mpath.name} has {len(mrefs)}")
        out.extend(zip(irefs, mrefs, strict=True))
    return out


def class_names_for(num_classes: int) -> tuple[str, ...]:
    if num_classes <= 2:
        return ("background", "foreground")
    return ("background", *(f"class {c}" for c in range(1, num_classes)))


@register_dataset("segfolder")
def load_segfolder(split: str, data_dir: str | Path, size: int = 128, mode: str = "resize",
                   channels: int | None = None, mask_mode: str = "auto",
                   num_classes: int | None = None, val_fraction: float = 0.15,
                   test_fraction: float = 0.15, seed: int = 0,
                   window: tuple[float, float] | str | None = None, axis: str = "z"
                   ) -> SegmentationDataset:
    """Images and masks under ``data_dir`` at ``size`` x ``size`` (resized, or tiles).

    ``channels=None`` gives 3 if any image of the dataset has a colour mode, else 1.
    ``num_classes=None`` is 2 for binary masks, else the largest index of the split + 1.
    ``window`` (centre, width) maps 16-bit/float, DICOM and NIfTI images to 0..255 (None: the
    file's own, else the default); 3D volumes are sliced along ``axis`` (``name#z=12``).
    """
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
    size = int(check_range("size", size, 8))
    check_choice("mode", mode, MODES)
    check_choice("mask_mode", mask_mode, MASK_MODES)
    if channels is not None:
        channels = int(check_choice("channels", channels, (1, 3)))
    check_split_fractions(val_fraction, test_fraction)
    reader = ImageReader(window, axis)
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise DataError(f"segmentation folder {root} does not exist")

    if (root / "train" / "images").is_dir():
        if not (root / split / "images").is_dir():
            raise DataError(f"{root} has split folders but no {split}/images/ folder")
        everything = [p for s in SPLITS if (root / s / "images").is_dir()
                      for _, p, _ in _pairs(root / s)]
        items = _pairs(root / split)
    else:
        pairs = _pairs(root)
        everything = [p for _, p, _ in pairs]
        items = [pairs[i] for i in seeded_split(len(pairs), val_fraction, test_fraction,
                                                seed)[split]]
    if channels is None:
        channels = 3 if any(reader.is_colour(p) for p in everything) else 1

    names, images, masks = [], [], []
    for iref, mref in progress(_slice_pairs(items, reader), desc=f"{root.name} {split}",
                               unit="img"):
        image, mask = read_image(iref, channels, reader), read_mask(mref, mask_mode, reader)
        if image.shape[:2] != mask.shape:
            raise DataError(f"{iref.name} is {image.shape[1]}x{image.shape[0]} but its mask "
                            f"{mref.name} is {mask.shape[1]}x{mask.shape[0]}")
        stem = iref.stem
        if mode == "resize":
            names.append(stem)
            images.append(_resize(image, (size, size), False))
            masks.append(_resize(mask, (size, size), True))
        else:
            for suffix, ti, tm in _tiles(image, mask, size):
                names.append(stem + suffix)
                images.append(ti)
                masks.append(tm)
    img_arr = np.stack(images) if images else np.zeros((0, size, size, channels), np.uint8)
    mask_arr = np.stack(masks).astype(np.int64) if masks else np.zeros((0, size, size), np.int64)
    top = int(mask_arr.max()) if mask_arr.size else 1
    k = max(2, top + 1) if num_classes is None else int(check_range("num_classes", num_classes, 2))
    if top >= k:
        raise DataError(f"{root.name} {split}: mask value {top} but num_classes is {k}")
    spec = {"dataset": "segfolder", "data_dir": str(root.resolve()), "size": size, "mode": mode,
            "channels": channels, "mask_mode": mask_mode, "num_classes": num_classes,
            "val_fraction": val_fraction, "test_fraction": test_fraction,
            "seed": seed, **reader.spec()}
    return SegmentationDataset(img_arr, mask_arr, tuple(names), class_names_for(k),
                               root.name or "segfolder", split, spec)
