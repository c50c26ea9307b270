"""Object detection on Pascal-VOC folders: whole images resized, boxes scaled exactly.

Layout: ``JPEGImages/<id>.jpg`` (or .jpeg/.png), ``Annotations/<id>.xml`` and optionally
``ImageSets/Main/{train,val,test}.txt`` (all three or none: without them a seeded split is drawn;
an image listed in train and in val or test is refused, as it would leak into training). BCCD
(RBC / WBC / Platelets, 640x480) is the reference case and loads at the paper's 320x320.

Aspect: images are resized plainly to ``size`` (no letterbox), so a 640x480 image is squeezed
per axis; every box is scaled by the same per-axis factors (x by W_new / W, y by H_new / H) and
stays exact. ``scales`` keeps the factors so predictions map back to original pixels.
"""

from __future__ import annotations

import warnings
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from medrobust.data.base import DataWarning, PixelArrays, open_image
from medrobust.data.catalog import register_dataset
from medrobust.errors import DataError
from medrobust.utils.progress import progress
from medrobust.utils.seeding import numpy_rng

BCCD_DETECTION_CLASSES = ("RBC", "WBC", "Platelets")
SPLITS = ("train", "val", "test")
IMAGE_EXTS = (".jpg", ".jpeg", ".JPG", ".JPEG", ".png", ".PNG")
UNKNOWN = ("error", "skip")


@dataclass(frozen=True)
class DetectionDataset(PixelArrays):
    """A detection split in memory.

    ``images`` uint8 (N, H, W, C); ``boxes[i]`` float32 (n_i, 4) xyxy in resized pixels
    (x = column); ``labels[i]`` int64 (n_i,) indices into ``class_names``; ``difficult[i]`` bool
    (n_i,) (VOC's flag, kept so metrics can ignore them); ``orig_sizes`` (N, 2) original
    (height, width); ``scales`` (N, 2) per-axis factors (sx, sy) from original to resized pixels.
    ``spec`` reloads the same data.
    """

    images: np.ndarray
    boxes: list[np.ndarray]
    labels: list[np.ndarray]
    class_names: tuple[str, ...]
    name: str
    split: str
    image_ids: tuple[str, ...]
    orig_sizes: np.ndarray
    scales: np.ndarray
    difficult: list[np.ndarray] = field(default_factory=list)
    dropped_boxes: int = 0
    spec: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.check_images(self.name)
        n = self.images.shape[0]
        for what, value in (("boxes", self.boxes), ("labels", self.labels),
                            ("image_ids", self.image_ids)):
            if len(value) != n:
                raise DataError(f"{self.name}: {n} images but {len(value)} {what}")
        if not self.difficult:
            object.__setattr__(self, "difficult", [np.zeros(len(b), bool) for b in self.labels])
        for i, (b, lab) in enumerate(zip(self.boxes, self.labels, strict=True)):
            if b.ndim != 2 or b.shape[1] != 4 or lab.shape != (b.shape[0],):
                raise DataError(f"{self.name}: image {i} has boxes {b.shape} and labels {lab.shape}")

    @property
    def num_objects(self) -> int:
        return int(sum(len(lab) for lab in self.labels))

    def subset(self, indices: np.ndarray | list[int]) -> DetectionDataset:
        """A new dataset holding only ``indices`` (the spec records them)."""
        idx = np.asarray(indices, dtype=np.int64)
        pick = [int(i) for i in idx]
        return DetectionDataset(
            self.images[idx], [self.boxes[i] for i in pick], [self.labels[i] for i in pick],
            self.class_names, self.name, self.split, tuple(self.image_ids[i] for i in pick),
            self.orig_sizes[idx], self.scales[idx], [self.difficult[i] for i in pick],
            self.dropped_boxes, dict(self.spec, indices=idx.tolist()))

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(np.concatenate([np.zeros(0, np.int64), *self.labels]),
                             minlength=self.num_classes)
        return {n: int(c) for n, c in zip(self.class_names, counts, strict=True)}

    def describe(self) -> dict[str, Any]:
        """A JSON-able summary for stores, reports and ``--json``."""
        return {"name": self.name, "split": self.split, "n": len(self),
                "size": list(self.size), "channels": self.channels,
                "classes": list(self.class_names), "objects": self.num_objects,
                "class_counts": self.class_counts(), "dropped_boxes": self.dropped_boxes,
                "spec": self.spec}


@dataclass(frozen=True)
class VocObject:
    """One annotated object in original VOC pixel coordinates."""

    name: str
    xmin: float
    ymin: float
    xmax: float
    ymax: float
    difficult: bool


#: Why a box is dropped (key in specs -> words in the warning). Boxes that only overhang the
#: image are clipped and kept; these have nothing left to learn from or score against.
BOX_PROBLEMS: dict[str, str] = {"inverted": "xmin > xmax or ymin > ymax", "zero_area": "zero area",
                                "outside": "outside the image"}


def box_problem(xmin: float, ymin: float, xmax: float, ymax: float, width: float,
                height: float) -> str | None:
    """The ``BOX_PROBLEMS`` key of a box in a ``width`` x ``height`` image, None if usable."""
    if xmin > xmax or ymin > ymax:
        return "inverted"
    if xmin == xmax or ymin == ymax:
        return "zero_area"
    if xmax <= 0 or ymax <= 0 or xmin >= width or ymin >= height:
        return "outside"
    return None


@dataclass
class DroppedBoxes:
    """Boxes a loader dropped, by problem and file, so they are counted, recorded in the dataset
    spec (stores and checkpoints keep it) and told in one warning instead of vanishing."""

    kinds: Counter[str] = field(default_factory=Counter)
    files: set[str] = field(default_factory=set)
    emptied: int = 0  # images that had boxes and lost all of them (they load as negatives)

    @property
    def total(self) -> int:
        return sum(self.kinds.values())

    def add(self, kind: str, file: Path) -> None:
        self.kinds[kind] += 1
        self.files.add(str(file))

    def as_spec(self) -> dict[str, int]:
        """The counts as recorded under ``spec["dropped_boxes"]``."""
        out = {"total": self.total, **{k: self.kinds[k] for k in BOX_PROBLEMS if self.kinds[k]},
               "files": len(self.files)}
        if self.emptied:
            out["images_left_without_boxes"] = self.emptied
        return out

    def warn(self, where: str) -> None:
        """One warning line (nothing when no box was dropped)."""
        if not self.total:
            return
        n, f = self.total, len(self.files)
        kinds = ", ".join(f"{BOX_PROBLEMS[k]}: {self.kinds[k]}" for k in BOX_PROBLEMS if self.kinds[k])
        emptied = (f"; {self.emptied} image(s) lost all their boxes and load as negatives"
                   if self.emptied else "")
        warnings.warn(f"dropped {n} box{'es' if n != 1 else ''} ({kinds}) in {f} file{'s' if f != 1 else ''} "
                      f"of {where}{emptied}", DataWarning, stacklevel=3)


def parse_voc_xml(path: Path) -> tuple[list[VocObject], tuple[int, int] | None]:
    """Objects of one VOC XML in file order and its declared (height, width), if any."""
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as exc:
        raise DataError(f"cannot parse VOC annotation {path}: {exc}") from exc
    size = None
    node = root.find("size")
    if node is not None:
        try:
            size = (int(float(node.findtext("height") or 0)), int(float(node.findtext("width") or 0)))
        except ValueError:
            size = None
    objects = []
    for k, obj in enumerate(root.iter("object")):
        name = (obj.findtext("name") or "").strip()
        bnd = obj.find("bndbox")
        if not name:
            raise DataError(f"VOC annotation {path}: object {k} has no <name>")
        if bnd is None:
            raise DataError(f"VOC annotation {path}: object {k} ({name}) has no <bndbox>")
        try:
            coords = [float((bnd.findtext(c) or "").strip()) for c in ("xmin", "ymin", "xmax", "ymax")]
        except ValueError as exc:
            raise DataError(f"VOC annotation {path}: object {k} ({name}) has a bad coordinate: "
                            f"{exc}") from exc
        if not all(np.isfinite(coords)):
            raise DataError(f"VOC annotation {path}: object {k} ({name}) has a non-finite coordinate")
        diff = (obj.findtext("difficult") or "0").strip() in ("1", "true", "True")
        objects.append(VocObject(name, *coords, difficult=diff))
    return objects, size


def image_path(root: Path, image_id: str) -> Path | None:
    for ext in IMAGE_EXTS:
        path = root / "JPEGImages" / f"{image_id}{ext}"
        if path.is_file():
            return path
    return None


def read_split_file(path: Path) -> list[str]:
    """Sorted, de-duplicated image ids of one ``ImageSets/Main/<split>.txt`` (first column)."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"VOC split file {path} is unreadable: {exc}") from exc
    return sorted({line.split()[0] for line in text.splitlines() if line.strip()})


def check_split_overlap(main: Path, ids: dict[str, list[str]]) -> None:
    """Refuse ids listed in train and in val or test: they would be trained on and then
    selected or scored on as if unseen. (val and test may share images: some sets have no
    separate validation split.)"""
    train = set(ids.get("train", ()))
    for other in ("test", "val"):
        both = sorted(train & set(ids.get(other, ())))
        if both:
            shown = ", ".join(both[:3]) + (f" and {len(both) - 3} more" if len(both) > 3 else "")
            raise DataError(f"{len(both)} image(s) are listed in both {main / 'train.txt'} and "
                            f"{main / f'{other}.txt'} ({shown}): {other} images must not be "
                            f"trained on")


def voc_split_ids(root: Path, split: str, seed: int = 0, val_fraction: float = 0.2,
                  test_fraction: float = 0.2) -> tuple[list[str], str]:
    """Image ids of ``split`` and where they came from (``ImageSets`` or ``seeded``).

    With ``ImageSets/Main/{train,val,test}.txt`` those decide (an image in train and in val or
    test is refused); with none of them the sorted annotation ids are shuffled with ``seed`` and
    cut into train / val / test by the fractions. Only some of the three is refused rather than
    silently replaced by a seeded split.
    """
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
    main = root / "ImageSets" / "Main"
    present = [s for s in SPLITS if (main / f"{s}.txt").is_file()]
    if present and len(present) < len(SPLITS):
        missing = [f"{s}.txt" for s in SPLITS if s not in present]
        raise DataError(f"{main} has {', '.join(f'{s}.txt' for s in present)} but no "
                        f"{' or '.join(missing)}: give all three split files (train.txt, val.txt, "
                        f"test.txt) or none (then a seeded split is drawn)")
    if present:
        ids_of = {s: read_split_file(main / f"{s}.txt") for s in SPLITS}
        check_split_overlap(main, ids_of)
        if not ids_of[split]:
            raise DataError(f"VOC split file {main / f'{split}.txt'} lists no images")
        return ids_of[split], "ImageSets"
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise DataError(f"split fractions val={val_fraction}, test={test_fraction} must be in "
                        f"[0, 1) and sum below 1")
    all_ids = sorted(p.stem for p in (root / "Annotations").glob("*.xml"))
    if not all_ids:
        raise DataError(f"no VOC annotations (*.xml) in {root / 'Annotations'}")
    order = numpy_rng(seed).permutation(len(all_ids))
    n_test = round(test_fraction * len(all_ids))
    n_val = round(val_fraction * len(all_ids))
    parts = {"test": order[:n_test], "val": order[n_test:n_test + n_val],
             "train": order[n_test + n_val:]}
    ids = sorted(all_ids[i] for i in parts[split])
    if not ids:
        raise DataError(f"the seeded {split} split of {root} is empty ({len(all_ids)} images)")
    return ids, "seeded"


def _no_objects_message(root: Path) -> str:
    return f"no annotated objects in {root / 'Annotations'}"


def _discover_classes(root: Path) -> tuple[str, ...]:
    names: set[str] = set()
    for xml in sorted((root / "Annotations").glob("*.xml")):
        names.update(o.name for o in parse_voc_xml(xml)[0])
    if not names:
        raise DataError(_no_objects_message(root))
    return tuple(sorted(names))


def require_objects(root: Path, split: str, class_names: Sequence[str], n_images: int,
                    dropped: DroppedBoxes) -> None:
    """Refuse a split without a single usable box (every VOC-layout loader calls this): a
    detector learns nothing from it and mAP over it is a meaningless 0."""
    if any(parse_voc_xml(xml)[0] for xml in sorted((root / "Annotations").glob("*.xml"))):
        lost = f"; {dropped.total} unusable box(es) dropped" if dropped.total else ""
        raise DataError(f"the {split} split of {root} ({n_images} image(s)) has no objects of the "
                        f"classes {', '.join(class_names)}{lost}: a detector needs boxes to train "
                        "on and to be scored against")
    raise DataError(_no_objects_message(root))


def _size_hw(size: int | Sequence[int]) -> tuple[int, int]:
    hw = (int(size), int(size)) if np.isscalar(size) else tuple(int(s) for s in size)
    if len(hw) != 2 or min(hw) < 1:
        raise DataError(f"size must be a positive int or (height, width), got {size!r}")
    return hw  # type: ignore[return-value]


def load_voc_detection(root: str | Path, split: str, size: int | Sequence[int] = 320,
                       classes: Sequence[str] | None = None, *, unknown: str = "error",
                       ignore: Sequence[str] = (), seed: int = 0, val_fraction: float = 0.2,
                       test_fraction: float = 0.2, name: str = "voc") -> DetectionDataset:
    """A VOC folder's ``split`` as whole RGB images resized to ``size`` with exact boxes.

    ``classes=None`` takes every object name in ``Annotations/`` (sorted), so all splits agree.
    With ``classes`` given, objects named in ``ignore`` are dropped silently; any other name
    outside ``classes`` stops with a DataError unless ``unknown="skip"``. Boxes that overhang
    the image are clipped to it; boxes with xmin > xmax (or ymin > ymax), no area or wholly
    outside the image are dropped, counted by kind in ``dropped_boxes`` and
    ``spec["dropped_boxes"]`` (so stores and checkpoints record them) and told in one
    ``DataWarning``; images whose boxes are all dropped stay (as negatives). A split without a
    single box is refused. VOC coordinates are taken as continuous pixel coordinates, as most
    detection code does.
    """
    root = Path(root).expanduser()
    if unknown not in UNKNOWN:
        raise DataError(f"unknown must be one of {', '.join(UNKNOWN)}, got {unknown!r}")
    for sub in ("Annotations", "JPEGImages"):
        if not (root / sub).is_dir():
            raise DataError(f"VOC folder {root} has no {sub}/ directory")
    out_h, out_w = _size_hw(size)
    class_names = tuple(classes) if classes is not None else _discover_classes(root)
    if not class_names or len(set(class_names)) != len(class_names):
        raise DataError(f"detection classes must be distinct names, got {class_names!r}")
    ignored = set(ignore) - set(class_names)
    ids, split_source = voc_split_ids(root, split, seed, val_fraction, test_fraction)

    keep = _BoxFilter(class_names, ignored, unknown)
    images, boxes, labels, difficult, orig, scales = [], [], [], [], [], []
    for image_id in progress(ids, desc=f"{name} {split}", unit="img"):
        xml, objects, image = _read_voc_item(root, image_id, split)
        w, h = image.size
        sx, sy = out_w / w, out_h / h
        if (w, h) != (out_w, out_h):
            image = image.resize((out_w, out_h), Image.Resampling.BILINEAR)
        kept_boxes, kept_labels, kept_diff = keep(objects, xml, w, h, sx, sy)
        images.append(np.asarray(image, dtype=np.uint8))
        boxes.append(np.asarray(kept_boxes, dtype=np.float32).reshape(-1, 4))
        labels.append(np.asarray(kept_labels, dtype=np.int64))
        difficult.append(np.asarray(kept_diff, dtype=bool))
        orig.append((h, w))
        scales.append((sx, sy))
    dropped = keep.dropped
    spec = {"dataset": name, "data_dir": str(root), "size": [out_h, out_w],
            "classes": list(class_names), "unknown": unknown, "ignore": sorted(ignored),
            "split_source": split_source}
    if split_source == "seeded":
        spec.update(seed=seed, val_fraction=val_fraction, test_fraction=test_fraction)
    if dropped.total:  # only then, so the spec (and run fingerprints) of clean data stay as before
        spec["dropped_boxes"] = dropped.as_spec()
    if not any(len(lab) for lab in labels):
        require_objects(root, split, class_names, len(ids), dropped)
    dropped.warn(f"{root} ({split} split)")
    return DetectionDataset(np.stack(images), boxes, labels, class_names, name, split,
                            tuple(ids), np.asarray(orig, dtype=np.int64),
                            np.asarray(scales, dtype=np.float64), difficult, dropped.total, spec)


def _read_voc_item(root: Path, image_id: str, split: str
                   ) -> tuple[Path, list[VocObject], Image.Image]:
    """One listed id's annotation file, its objects and its RGB image (not resized)."""
    xml = root / "Annotations" / f"{image_id}.xml"
    if not xml.is_file():
        raise DataError(f"VOC annotation {xml} is missing (listed in the {split} split)")
    path = image_path(root, image_id)
    if path is None:
        raise DataError(f"VOC image {root / 'JPEGImages' / image_id}.jpg is missing "
                        f"(annotated in {xml.name})")
    objects, _ = parse_voc_xml(xml)
    try:
        with open_image(path, "VOC image") as img:
            image = img.convert("RGB")
    except (OSError, ValueError) as exc:  # decoding a damaged file
        raise DataError(f"cannot read VOC image {path}: {exc}") from None
    return xml, objects, image


class _BoxFilter:
    """Turns an image's objects into its kept boxes (scaled), class indices and difficult
    flags, counting the boxes it drops across the split."""

    def __init__(self, class_names: tuple[str, ...], ignored: set[str], unknown: str) -> None:
        self.class_names, self.ignored, self.unknown = class_names, ignored, unknown
        self.index = {n: i for i, n in enumerate(class_names)}
        self.dropped = DroppedBoxes()

    def __call__(self, objects: list[VocObject], xml: Path, w: int, h: int, sx: float,
                 sy: float) -> tuple[list[list[float]], list[int], list[bool]]:
        kept_boxes, kept_labels, kept_diff = [], [], []
        wanted = 0
        for obj in objects:
            if obj.name not in self.index:
                if obj.name in self.ignored or self.unknown == "skip":
                    continue
                raise DataError(f"VOC annotation {xml}: unknown class {obj.name!r} (classes: "
                                f"{', '.join(self.class_names)}); add it to --classes, or remove "
                                f"or rename those objects (from Python, unknown='skip' drops "
                                f"them)")
            wanted += 1
            problem = box_problem(obj.xmin, obj.ymin, obj.xmax, obj.ymax, w, h)
            if problem is not None:
                self.dropped.add(problem, xml)
                continue
            x0, x1 = np.clip([obj.xmin, obj.xmax], 0.0, w)
            y0, y1 = np.clip([obj.ymin, obj.ymax], 0.0, h)
            kept_boxes.append([x0 * sx, y0 * sy, x1 * sx, y1 * sy])
            kept_labels.append(self.index[obj.name])
            kept_diff.append(obj.difficult)
        if wanted and not kept_boxes:
            self.dropped.emptied += 1
        return kept_boxes, kept_labels, kept_diff


def bccd_detection_root(data_dir: str | Path) -> Path:
    """``data_dir`` itself if it is a VOC folder, else ``data_dir/bccd``."""
    data_dir = Path(data_dir).expanduser()
    for root in (data_dir, data_dir / "bccd"):
        if (root / "Annotations").is_dir() and (root / "JPEGImages").is_dir():
            return root
    raise DataError(f"BCCD not found in {data_dir}: expected Annotations/, JPEGImages/ and "
                    f"ImageSets/Main/ there or in {data_dir / 'bccd'}")


def load_bccd_detection(root: str | Path, split: str, size: int | Sequence[int] = 320,
                        classes: Sequence[str] = BCCD_DETECTION_CLASSES) -> DetectionDataset:
    """Whole BCCD smears (official split) with RBC / WBC / Platelets boxes at ``size`` (paper: 320).

    ``root`` is the BCCD folder or the folder holding ``bccd/``. A BCCD class left out of
    ``classes`` is filtered; any other object name is a DataError (a corrupt annotation).
    """
    dataset = load_voc_detection(bccd_detection_root(root), split, size, classes,
                                 ignore=BCCD_DETECTION_CLASSES, name="bccd-detection")
    spec = dict(dataset.spec, data_dir=str(Path(root).expanduser()))
    spec.pop("ignore", None)
    spec.pop("unknown", None)
    object.__setattr__(dataset, "spec", spec)
    return dataset


@register_dataset("bccd-detection")
def _registered_bccd(split: str, data_dir: Path, size: int | Sequence[int] = 320,
                     classes: Sequence[str] = BCCD_DETECTION_CLASSES) -> DetectionDataset:
    """The registry's face of ``load_bccd_detection`` (``--data-dir``: BCCD or its parent)."""
    return load_bccd_detection(data_dir, split, size, tuple(classes))


@register_dataset("voc")
def _registered_voc(split: str, data_dir: Path, size: int | Sequence[int] = 320,
                    classes: Sequence[str] | None = None, seed: int = 0,
                    val_fraction: float = 0.2, test_fraction: float = 0.2) -> DetectionDataset:
    """The registry's face of ``load_voc_detection`` (``--data-dir``: the VOC folder)."""
    return load_voc_detection(data_dir, split, size, None if classes is None else tuple(classes),
                              seed=seed, val_fraction=val_fraction, test_fraction=test_fraction)
