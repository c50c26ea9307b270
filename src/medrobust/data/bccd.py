"""BCCD blood-cell smears: one classification crop per annotated VOC box.

Cell crops (RBC / WBC / Platelets) make a small RGB microscopy classification task close to the
histology patches of the one-pixel-attack papers; the raw box list is exposed too for detection
and landmark work (e.g. the WBC centre of each image).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from medrobust.data.base import ImageDataset, open_image
from medrobust.data.catalog import SPLITS, register_dataset
from medrobust.data.voc import DroppedBoxes, box_problem, check_split_overlap, read_split_file
from medrobust.errors import DataError
from medrobust.utils.progress import progress
from medrobust.utils.validation import check_range

BCCD_CLASSES = ("RBC", "WBC", "Platelets")
CROPS = ("box", "fixed")


class BccdBox(NamedTuple):
    """One annotated cell in VOC pixel coordinates."""

    image_id: str
    name: str
    xmin: float
    ymin: float
    xmax: float
    ymax: float


def bccd_root(data_dir: str | Path) -> Path:
    """The BCCD folder: ``data_dir`` itself if it has ``Annotations/``, else ``data_dir/bccd``."""
    data_dir = Path(data_dir).expanduser()
    for root in (data_dir, data_dir / "bccd"):
        if (root / "Annotations").is_dir() and (root / "JPEGImages").is_dir():
            return root
    raise DataError(
        f"BCCD not found in {data_dir}: expected Annotations/, JPEGImages/ and ImageSets/Main/ "
        f"there or in {data_dir / 'bccd'}"
    )


def read_split_ids(root: Path, split: str) -> list[str]:
    """Sorted, de-duplicated image ids of the official split file; an image listed in train and
    in val or test is refused (it would be trained on and then scored as unseen)."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
    main = root / "ImageSets" / "Main"
    path = main / f"{split}.txt"
    if not path.is_file():
        raise DataError(f"BCCD split file {path} is missing or unreadable")
    ids_of = {s: read_split_file(main / f"{s}.txt") for s in SPLITS if (main / f"{s}.txt").is_file()}
    check_split_overlap(main, ids_of)
    return ids_of[split]


def parse_annotation(path: Path, image_id: str, dropped: DroppedBoxes | None = None,
                     keep: Sequence[str] | None = None) -> list[BccdBox]:
    """Boxes of one VOC XML in file order; boxes with xmin > xmax (or ymin > ymax) or no area
    (BCCD has two) are dropped, and counted in ``dropped`` when given (only those of the class
    names in ``keep``, when given)."""
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as exc:
        raise DataError(f"cannot parse BCCD annotation {path}: {exc}") from exc
    boxes = []
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip()
        bnd = obj.find("bndbox")
        if not name or bnd is None:
            continue
        try:
            coords = [float((bnd.findtext(k) or "").strip())
                      for k in ("xmin", "ymin", "xmax", "ymax")]
        except ValueError as exc:
            raise DataError(f"bad box coordinates in {path}: {exc}") from exc
        box = BccdBox(image_id, name, *coords)
        problem = box_problem(*coords, float("inf"), float("inf"))  # the image size comes later
        if problem is None:
            boxes.append(box)
        elif dropped is not None and (keep is None or name in keep):
            dropped.add(problem, path)
    return boxes


def bccd_boxes(data_dir: str | Path, split: str, dropped: DroppedBoxes | None = None,
               keep: Sequence[str] | None = None) -> dict[str, list[BccdBox]]:
    """Per-image boxes of a split, by sorted image id (``dropped``, ``keep``: as for
    ``parse_annotation``).

    Ids listed in the split file but lacking an annotation or a JPEG are left out.
    """
    root = bccd_root(data_dir)
    out: dict[str, list[BccdBox]] = {}
    for image_id in read_split_ids(root, split):
        xml = root / "Annotations" / f"{image_id}.xml"
        if xml.is_file() and _jpeg_path(root, image_id) is not None:
            out[image_id] = parse_annotation(xml, image_id, dropped, keep)
    return out


def _jpeg_path(root: Path, image_id: str) -> Path | None:
    for ext in (".jpg", ".jpeg", ".JPG", ".JPEG", ".png"):
        path = root / "JPEGImages" / f"{image_id}{ext}"
        if path.is_file():
            return path
    return None


def _shift_inside(start: float, side: float, limit: float) -> float:
    """Move a window [start, start+side) inside [0, limit) when it fits; else centre it."""
    if side > limit:
        return (limit - side) / 2.0
    return min(max(start, 0.0), limit - side)


def crop_window(box: BccdBox, width: int, height: int, crop: str, size: int,
                margin: float) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) of the crop around ``box`` in image pixels.

    ``box``: a square of side max(w, h) * (1 + margin) on the box centre; ``fixed``: ``size``
    native pixels. Either is shifted to lie inside the image when it fits.
    """
    cx, cy = (box.xmin + box.xmax) / 2.0, (box.ymin + box.ymax) / 2.0
    side = max(box.xmax - box.xmin, box.ymax - box.ymin) * (1.0 + margin) if crop == "box" else float(size)
    left = _shift_inside(cx - side / 2.0, side, width)
    top = _shift_inside(cy - side / 2.0, side, height)
    if crop == "fixed":  # whole pixels, so fixed crops are not resampled
        left, top = float(round(left)), float(round(top))
    return left, top, left + side, top + side


def _crop(image: Image.Image, window: tuple[float, float, float, float], crop: str,
          size: int) -> np.ndarray:
    left, top, right, bottom = window
    eps = 1e-6
    inside = (left >= -eps and top >= -eps and right <= image.width + eps
              and bottom <= image.height + eps)
    if crop == "box" and inside:
        # Sub-pixel box; PIL's bilinear resize widens its kernel when shrinking (antialias).
        box = (max(left, 0.0), max(top, 0.0), min(right, image.width), min(bottom, image.height))
        patch = image.resize((size, size), Image.Resampling.BILINEAR, box=box)
    else:
        # Integer crop; PIL pads whatever falls outside the image with black.
        patch = image.crop(tuple(round(v) for v in window))
        if patch.size != (size, size):
            patch = patch.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(patch, dtype=np.uint8)


@register_dataset("bccd")
def load_bccd(split: str, data_dir: str | Path, size: int = 64, crop: str = "box",
              margin: float = 0.15, classes: Sequence[str] = BCCD_CLASSES) -> ImageDataset:
    """Cell crops of the official BCCD split, labelled by index into ``classes``.

    ``crop="box"`` resamples a square of side max(w, h) * (1 + margin) around each box to
    ``size``; ``crop="fixed"`` cuts ``size`` x ``size`` native pixels centred on the box. Order is
    sorted image id, then boxes in file order. Boxes of other classes are skipped; unusable
    boxes (xmin > xmax, no area, wholly outside the image) are dropped, counted in
    ``spec["dropped_boxes"]`` and told in one ``DataWarning``.
    """
    if crop not in CROPS:
        raise DataError(f"BCCD crop must be one of {', '.join(CROPS)}, got {crop!r}")
    size = int(check_range("size", size, 1))
    margin = float(check_range("margin", margin, 0.0))
    classes = tuple(classes)
    if not classes or len(set(classes)) != len(classes):
        raise DataError(f"BCCD classes must be distinct names, got {classes!r}")
    index = {name: i for i, name in enumerate(classes)}
    root = bccd_root(data_dir)
    dropped = DroppedBoxes()
    per_image = bccd_boxes(root, split, dropped, classes)

    crops: list[np.ndarray] = []
    labels: list[int] = []
    for image_id, boxes in progress(per_image.items(), desc=f"bccd {split}", unit="img"):
        wanted = [b for b in boxes if b.name in index]
        if not wanted:
            continue
        path = _jpeg_path(root, image_id)
        assert path is not None  # bccd_boxes keeps only ids with an image
        try:
            with open_image(path, "BCCD image") as img:
                image = img.convert("RGB")
        except (OSError, ValueError) as exc:  # decoding a damaged file
            raise DataError(f"cannot read BCCD image {path}: {exc}") from None
        inside = []
        for box in wanted:
            if box_problem(box.xmin, box.ymin, box.xmax, box.ymax, image.width, image.height):
                dropped.add("outside", root / "Annotations" / f"{image_id}.xml")
            else:
                inside.append(box)
        for box in inside:
            window = crop_window(box, image.width, image.height, crop, size, margin)
            crops.append(_crop(image, window, crop, size))
            labels.append(index[box.name])
    if not crops:
        raise DataError(f"no BCCD boxes of classes {', '.join(classes)} in the {split} split "
                        f"under {root}")
    spec = {"dataset": "bccd", "size": size, "crop": crop, "margin": margin,
            "classes": list(classes), "data_dir": str(Path(data_dir).expanduser())}
    if dropped.total:  # only then, so the spec of clean data stays as before
        spec["dropped_boxes"] = dropped.as_spec()
    dropped.warn(f"{root} ({split} split)")
    return ImageDataset(np.stack(crops), np.asarray(labels, dtype=np.int64), classes, "bccd",
                        split, spec)
