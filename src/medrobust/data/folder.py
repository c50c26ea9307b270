"""A user's own images: one subfolder per class, optionally already split into train/val/test.

This lets people attack their own models on their own data without writing a loader. Without
split folders, a seeded stratified split keeps every class in every split and gives the same
split for the same seed. PNG, JPEG, DICOM and NIfTI are read (``base.open_image``); a 3D volume
gives one image per slice, and the split is made over files, so the slices of one scan never
land in two splits.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from medrobust.data.base import ImageDataset, ImageReader, ImageRef, open_image
from medrobust.data.catalog import SPLITS, register_dataset
from medrobust.data.medical import MEDICAL_SUFFIXES, suffix_of
from medrobust.errors import DataError
from medrobust.utils.progress import progress
from medrobust.utils.seeding import numpy_rng
from medrobust.utils.validation import check_choice, check_range, check_split_fractions

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", *MEDICAL_SUFFIXES)


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and suffix_of(p) in IMAGE_SUFFIXES
                  and not p.name.startswith("."))


def _class_dirs(folder: Path) -> dict[str, list[Path]]:
    """Class name -> sorted image files, for non-hidden subfolders holding images."""
    out = {}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = _images_in(sub)
        if files:
            out[sub.name] = files
    return out


def _split_layout(root: Path) -> dict[str, dict[str, list[Path]]] | None:
    """Per-split class folders when ``root`` has a ``train/`` folder, else None."""
    if not (root / "train").is_dir():
        return None
    return {s: _class_dirs(root / s) for s in SPLITS if (root / s).is_dir()}


def stratified_split(n_per_class: list[int], val_fraction: float, test_fraction: float,
                     seed: int) -> list[dict[str, np.ndarray]]:
    """For each class, disjoint index arrays {"train", "val", "test"} that cover 0..n-1.

    Each class is shuffled with its own seeded sub-stream, so adding a class does not change
    the split of the others.
    """
    out = []
    for c, n in enumerate(n_per_class):
        order = numpy_rng(seed, c).permutation(n)
        n_test = round(float(n * test_fraction))
        n_val = round(float(n * val_fraction))
        if n_test + n_val >= n:  # tiny classes keep at least one training image
            n_test, n_val = min(n_test, max(n - 1, 0)), max(min(n_val, n - 1 - n_test), 0)
        out.append({"test": np.sort(order[:n_test]),
                    "val": np.sort(order[n_test:n_test + n_val]),
                    "train": np.sort(order[n_test + n_val:])})
    return out


def _read(ref: ImageRef, size: int, mode: str, reader: ImageReader) -> np.ndarray:
    try:
        with open_image(ref, reader=reader) as img:
            img = img.convert(mode)
            if img.size != (size, size):
                img = img.resize((size, size), Image.Resampling.BILINEAR)
            return np.asarray(img, dtype=np.uint8)
    except (OSError, ValueError) as exc:  # decoding a damaged file
        raise DataError(f"cannot read image {ref}: {exc}") from None


@register_dataset("folder")
def load_folder(split: str, data_dir: str | Path, size: int = 64, channels: int | None = None,
                val_fraction: float = 0.15, test_fraction: float = 0.15,
                seed: int = 0, window: tuple[float, float] | str | None = None,
                axis: str = "z") -> ImageDataset:
    """Images under ``data_dir/<class>/`` (PNG/JPEG/DICOM/NIfTI, any size) resized to ``size``
    x ``size``.

    Class names are the sorted subfolder names. If ``data_dir`` has ``train/`` (and ``val/``
    and/or ``test/``) those folders are the splits; otherwise a seeded stratified split over the
    files with the given fractions is made. ``channels=None`` gives 3 if any image of the dataset
    (all splits) has a colour mode, else 1; 1 or 3 forces it. 16-bit/float greyscale, DICOM and
    NIfTI go through ``window`` (centre, width; None: the file's own, else the default, see
    ``medical``); 3D volumes are sliced along ``axis``. ``names`` are the file names
    (``scan.nii.gz#z=12`` for a slice).
    """
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
    size = int(check_range("size", size, 1))
    if channels is not None:
        channels = int(check_choice("channels", channels, (1, 3)))
    check_split_fractions(val_fraction, test_fraction)
    reader = ImageReader(window, axis)
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist")

    layout = _split_layout(root)
    if layout is not None:
        classes = sorted({name for per_split in layout.values() for name in per_split})
        if not classes:
            raise DataError(f"no images under {root}/{{train,val,test}}/<class>/")
        if split not in layout:
            raise DataError(f"{root} has split folders but no {split}/ folder")
        all_files = [p for per_split in layout.values() for fs in per_split.values() for p in fs]
        items = [(p, classes.index(name)) for name, fs in layout[split].items() for p in fs]
    else:
        per_class = _class_dirs(root)
        classes = sorted(per_class)
        if not classes:
            raise DataError(f"no class subfolders with PNG/JPEG images, DICOM or NIfTI files in {root}")
        all_files = [p for fs in per_class.values() for p in fs]
        parts = stratified_split([len(per_class[c]) for c in classes], val_fraction,
                                 test_fraction, seed)
        items = [(per_class[name][i], c) for c, name in enumerate(classes)
                 for i in parts[c][split]]

    if len(classes) < 2:
        # One class would "train" to a perfect, meaningless accuracy.
        raise DataError(f"{root} has one class folder ({classes[0]}): a classifier needs at "
                        "least 2 classes, one subfolder of images each")
    if channels is None:
        channels = 3 if any(reader.is_colour(p) for p in all_files) else 1
    mode = "RGB" if channels == 3 else "L"
    # Files were split above; only now are volumes cut into slices (one image each).
    refs = [(ref, c) for path, c in items for ref in reader.images(path)]
    images = np.zeros((len(refs), size, size, channels), dtype=np.uint8)
    for k, (ref, _) in enumerate(progress(refs, desc=f"{root.name} {split}", unit="img")):
        images[k] = _read(ref, size, mode, reader).reshape(size, size, channels)
    labels = np.asarray([c for _, c in refs], dtype=np.int64)
    spec = {"dataset": "folder", "data_dir": str(root), "size": size, "channels": channels,
            "layout": "split folders" if layout is not None else "seeded split",
            "val_fraction": val_fraction, "test_fraction": test_fraction, "seed": seed,
            **reader.spec()}
    return ImageDataset(images, labels, tuple(classes), root.name or "folder", split, spec,
                        tuple(ref.name for ref, _ in refs))
