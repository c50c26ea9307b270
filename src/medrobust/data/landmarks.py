"""A user's own landmark data: ``images/<id>.png`` plus ``landmarks.csv`` (the landmark folder layout).

Layout (../shared/data/README.md, "The landmark folder layout"; ../shared/data/isbi2015_ceph is the
reference case): ``images/<id>.<ext>`` of any size, greyscale or RGB; ``landmarks.csv`` with the header
``id,x1,y1,...,xK,yK`` in pixels of that image (x = column, y = row, origin top-left); optional
``metadata.csv`` with ``id,...,pixel_size_mm`` (errors then in mm); optional ``splits.csv`` with
``id,split`` (else a seeded train/val/test split). Any K, any image size.

Images are resized to one (H, W) with PIL's Lanczos filter: PIL widens the filter by the reduction
factor, so downsampling is antialiased (no aliasing of the thin bone edges the landmarks sit on), and
Lanczos keeps edges sharper than bilinear/box, which matters for localisation; the same filter made
the ISBI 516x640 copy. Landmarks are mapped with the transform PIL's resize applies to pixel centres,
per axis: ``x' = (x + 0.5) * sx - 0.5`` with ``sx = W_new / W_old`` (likewise y), so a landmark stays
on the same image content even when the aspect ratio changes (anisotropic scale). The per-image
scales and original sizes are kept: ``to_original`` maps predictions back to original pixels, and
distances divide by (sx, sy) per axis, so errors in original pixels (and mm) do not depend on the
pixel-centre convention.

DICOM and NIfTI images are read too (``base.open_image``; ``window`` sets their intensities). Their
header's pixel spacing (DICOM PixelSpacing, else ImagerPixelSpacing; NIfTI zooms) gives the mm scale
when ``metadata.csv`` has no ``pixel_size_mm``. A 3D volume is sliced along ``axis``; its slices are
the ids ``<stem>#z=12`` in ``landmarks.csv`` (slices without a row are skipped), and the seeded split
is over files, so the slices of one scan stay in one split.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from medrobust.data.base import ImageReader, ImageRef, PixelArrays, open_image
from medrobust.data.catalog import register_dataset
from medrobust.data.medical import MEDICAL_SUFFIXES, file_stem, suffix_of
from medrobust.errors import DataError
from medrobust.utils.seeding import numpy_rng
from medrobust.utils.validation import check_split_fractions

SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", *MEDICAL_SUFFIXES)
#: Pixels whose row and column spacing differ by more than this are not square (one mm scale).
SQUARE_TOLERANCE = 1e-3
SEEDED_SPLITS = ("train", "val", "test")
#: The paper's input size (H, W) for ISBI 2015 cephalograms.
DEFAULT_SIZE = (200, 160)


@dataclass(frozen=True)
class LandmarkDataset(PixelArrays):
    """One split of a landmark dataset held in memory (``class_names`` name the landmarks).

    ``images`` uint8 (N, H, W, C); ``landmarks`` float32 (N, K, 2) as (x, y) in resized pixels;
    ``original_sizes`` int64 (N, 2) as (H, W) of the files; ``scales`` float64 (N, 2) as
    (sx, sy) = resized / original per axis; ``pixel_size_mm`` float64 (N,) of the ORIGINAL images,
    or None when unknown. ``spec`` holds the loader's options (``load_landmarks(**spec)`` rebuilds it).
    """

    images: np.ndarray
    landmarks: np.ndarray
    ids: tuple[str, ...]
    original_sizes: np.ndarray
    scales: np.ndarray
    pixel_size_mm: np.ndarray | None
    split: str
    name: str = "landmarks"
    spec: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.check_images(self.name)
        n = self.images.shape[0]
        if self.landmarks.ndim != 3 or self.landmarks.shape[0] != n or self.landmarks.shape[2] != 2:
            raise DataError(f"{self.name}: landmarks must be (N,K,2) with N = {n}, got "
                            f"{self.landmarks.shape}")
        if len(self.ids) != n or self.scales.shape != (n, 2) or self.original_sizes.shape != (n, 2):
            raise DataError(f"{self.name}: ids, scales and original sizes must have {n} rows")
        if self.pixel_size_mm is not None and self.pixel_size_mm.shape != (n,):
            raise DataError(f"{self.name}: pixel_size_mm must be (N,) with N = {n}")

    @property
    def num_landmarks(self) -> int:
        return int(self.landmarks.shape[1])

    @property
    def class_names(self) -> tuple[str, ...]:  # type: ignore[override]
        """The landmarks in ``landmarks.csv``'s column order: L1..LK."""
        return tuple(f"L{k + 1}" for k in range(self.num_landmarks))

    def to_original(self, points: np.ndarray, i: int) -> np.ndarray:
        """(..., 2) points (x, y) in resized pixels of image ``i`` -> pixels of its original file."""
        return to_original(points, self.scales[i])

    def subset(self, index: np.ndarray | list[int]) -> LandmarkDataset:
        """The items at ``index`` (a new dataset; this one is not changed)."""
        idx = np.asarray(index, dtype=np.int64)
        return LandmarkDataset(
            self.images[idx], self.landmarks[idx], tuple(self.ids[i] for i in idx),
            self.original_sizes[idx], self.scales[idx],
            None if self.pixel_size_mm is None else self.pixel_size_mm[idx], self.split, self.name,
            dict(self.spec))


def to_resized(points: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Original-pixel (x, y) -> resized pixels, PIL's pixel-centre mapping per axis."""
    p = np.asarray(points, dtype=np.float64)
    return (p + 0.5) * np.asarray(scale, dtype=np.float64) - 0.5


def to_original(points: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Resized-pixel (x, y) -> original pixels (inverse of ``to_resized``)."""
    p = np.asarray(points, dtype=np.float64)
    return (p + 0.5) / np.asarray(scale, dtype=np.float64) - 0.5


def _read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    """Header and rows of a CSV file (blank lines skipped); one DataError line when unreadable."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            rows = [r for r in csv.reader(fh) if any(c.strip() for c in r)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    if not rows:
        raise DataError(f"{path} is empty (expected a header line)")
    return [c.strip() for c in rows[0]], [[c.strip() for c in r] for r in rows[1:]]


def _number(path: Path, line: int, column: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"{path} line {line}: {column} is not a number ({text!r})") from None
    if not math.isfinite(value):
        raise DataError(f"{path} line {line}: {column} is {text!r} (must be a finite number)")
    return value


def read_landmarks_csv(path: Path) -> tuple[dict[str, np.ndarray], int]:
    """id -> (K, 2) float64 landmarks in the file's pixels, and K."""
    header, rows = _read_csv(path)
    if not header or header[0].lower() != "id" or len(header) < 3 or len(header) % 2 == 0:
        raise DataError(f"{path}: header must be id,x1,y1,...,xK,yK (got {len(header)} columns: "
                        f"{','.join(header[:5])}{',...' if len(header) > 5 else ''})")
    k = (len(header) - 1) // 2
    if not rows:
        raise DataError(f"{path} has a header but no landmark rows")
    out: dict[str, np.ndarray] = {}
    for line, row in enumerate(rows, start=2):
        if len(row) != len(header):
            raise DataError(f"{path} line {line}: {len(row)} columns, the header has {len(header)} "
                            f"(id + {k} x,y pairs)")
        if not row[0]:
            raise DataError(f"{path} line {line}: empty id")
        if row[0] in out:
            raise DataError(f"{path} line {line}: id {row[0]!r} appears twice")
        vals = [_number(path, line, header[j], row[j]) for j in range(1, len(row))]
        out[row[0]] = np.asarray(vals, dtype=np.float64).reshape(k, 2)
    return out, k


def read_id_column(path: Path, column: str, ids: set[str]) -> dict[str, str]:
    """id -> value of ``column`` for a metadata/splits CSV; every id must be in ``ids``."""
    header, rows = _read_csv(path)
    if not header or header[0].lower() != "id":
        raise DataError(f"{path}: the first column must be 'id' (got {header[0]!r})")
    if column not in header:
        raise DataError(f"{path} has no {column!r} column (columns: {','.join(header)})")
    j = header.index(column)
    out: dict[str, str] = {}
    for line, row in enumerate(rows, start=2):
        if len(row) <= j:
            raise DataError(f"{path} line {line}: {len(row)} columns, {column!r} is column {j + 1}")
        if row[0] not in ids:
            raise DataError(f"{path} line {line}: id {row[0]!r} is not in landmarks.csv")
        if row[0] in out:
            raise DataError(f"{path} line {line}: id {row[0]!r} appears twice")
        out[row[0]] = row[j]
    return out


def _image_files(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise DataError(f"landmark folder has no images/ folder: {folder} does not exist")
    files: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and suffix_of(p) in SUFFIXES and not p.name.startswith("."):
            stem = file_stem(p)
            if stem in files:
                raise DataError(f"two images in {folder} share the id {stem!r} "
                                f"({files[stem].name}, {p.name})")
            files[stem] = p
    if not files:
        raise DataError(f"no images in {folder} (PNG, JPEG, TIFF, BMP, DICOM or NIfTI)")
    return files


def _header_pixel_sizes(ids: list[str], refs: dict[str, ImageRef], reader: ImageReader,
                        folder: Path) -> tuple[dict[str, float], str] | None:
    """id -> mm per pixel from the image headers, and the fields read; None when no header
    has a spacing. Some images with a spacing and some without (mm and pixels cannot be mixed),
    or pixels that are not square (one scale per image), are one DataError line."""
    found = {i: reader.spacing(refs[i]) for i in ids}
    have = [i for i in ids if found[i] is not None]
    if not have:
        return None
    if len(have) < len(ids):
        lacking = next(i for i in ids if found[i] is None)
        raise DataError(f"{len(have)} of the {len(ids)} images in {folder} give a pixel spacing "
                        f"in their header but {refs[lacking].name} does not: give pixel_size_mm "
                        "for every id in metadata.csv (errors cannot mix mm and pixels)")
    sizes, fields = {}, set()
    for i in have:
        row, col, source = found[i]  # type: ignore[misc]
        if not math.isclose(row, col, rel_tol=SQUARE_TOLERANCE):
            raise DataError(f"{refs[i].name}: its header ({source}) gives {row:g} mm between rows "
                            f"but {col:g} mm between columns; landmark errors take one mm scale per "
                            "image: give pixel_size_mm in metadata.csv or resample it to square "
                            "pixels")
        sizes[i] = (row + col) / 2.0
        fields.add(source)
    return sizes, "header: " + ", ".join(sorted(fields))


def _read_resized(ref: ImageRef, channels: int, size: tuple[int, int], reader: ImageReader
                  ) -> tuple[np.ndarray, tuple[int, int]]:
    """uint8 (H, W, C) resized with Lanczos, and the file's (H, W)."""
    h, w = size
    try:
        # 16-bit/float greyscale, DICOM and NIfTI come back as 8-bit through the reader's window
        with open_image(ref, reader=reader) as img:
            img = img.convert("RGB" if channels == 3 else "L")
            orig = (img.height, img.width)
            if orig != (h, w):
                img = img.resize((w, h), Image.Resampling.LANCZOS)
            arr = np.asarray(img, dtype=np.uint8)
    except (OSError, ValueError) as exc:  # decoding a damaged file
        raise DataError(f"cannot read image {ref}: {exc}") from None
    return arr.reshape(h, w, channels), orig


def seeded_split(n: int, val_fraction: float, test_fraction: float, seed: int) -> dict[str, np.ndarray]:
    """Disjoint sorted index arrays over 0..n-1 (train keeps at least one item)."""
    order = numpy_rng(seed).permutation(n)
    n_test, n_val = round(n * test_fraction), round(n * val_fraction)
    if n >= 3:
        n_test = max(n_test, 1 if test_fraction > 0 else 0)
        n_val = max(n_val, 1 if val_fraction > 0 else 0)
    if n_test + n_val >= n:
        n_test = min(n_test, max(n - 1, 0))
        n_val = max(min(n_val, n - 1 - n_test), 0)
    return {"test": np.sort(order[:n_test]), "val": np.sort(order[n_test:n_test + n_val]),
            "train": np.sort(order[n_test + n_val:])}


def load_landmarks(data_dir: str | Path, split: str = "train",
                   size: tuple[int, int] | list[int] | int = DEFAULT_SIZE, channels: int | None = None,
                   val_fraction: float = 0.15, test_fraction: float = 0.15, seed: int = 0,
                   window: tuple[float, float] | str | None = None, axis: str = "z"
                   ) -> LandmarkDataset:
    """One split of the landmark folder ``data_dir`` resized to ``size`` = (H, W) (an int: square).

    ``splits.csv``, when present, decides the splits (any names, e.g. ISBI's ``test2``); otherwise a
    seeded split of the image files into train/val/test with the given fractions (the same seed, the
    same split). ``channels=None`` gives 3 if any image of the folder is colour, else 1. ``window``
    (centre, width) maps 16-bit/float, DICOM and NIfTI intensities to 0..255 (None: the file's own,
    else the default); 3D volumes are sliced along ``axis``. The mm scale is ``metadata.csv``'s
    ``pixel_size_mm``, else the image headers' pixel spacing, else unknown (errors in pixels).
    """
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise DataError(f"landmark folder {root} does not exist")
    hw = _size_hw(size)
    if channels is not None and channels not in (1, 3):
        raise DataError(f"channels must be 1, 3 or None, got {channels!r}")
    check_split_fractions(val_fraction, test_fraction)
    reader = ImageReader(window, axis)

    table = root / "landmarks.csv"
    if not table.is_file():
        raise DataError(f"landmark folder {root} has no landmarks.csv")
    marks, k = read_landmarks_csv(table)
    files = _image_files(root / "images")
    refs = _labelled_refs(root, table, marks, files, reader)
    ids = sorted(marks)
    chosen = _choose_split(root, split, ids, files, refs, val_fraction, test_fraction, seed)
    pixel_size, size_source = _pixel_sizes(root, split, ids, chosen, refs, reader)
    if channels is None:
        channels = 3 if any(reader.is_colour(p) for p in files.values()) else 1
    images, points, orig, scales = _read_split(table, chosen, marks, refs, reader, channels, hw, k)
    spec = {"dataset": "landmarks", "data_dir": str(root), "size": list(hw), "channels": channels,
            "val_fraction": val_fraction, "test_fraction": test_fraction, "seed": seed,
            "splits_csv": (root / "splits.csv").is_file(), "num_landmarks": k,
            "pixel_size_source": size_source, **reader.spec()}
    return LandmarkDataset(images, points, tuple(chosen), orig, scales, pixel_size, split,
                           root.name, spec)


def _size_hw(size: tuple[int, int] | list[int] | int) -> tuple[int, int]:
    if isinstance(size, int):
        size = (size, size)
    if len(size) != 2 or any(int(s) != s or int(s) < 8 for s in size):
        raise DataError(f"size must be (H, W) with sides >= 8, got {size!r}")
    return (int(size[0]), int(size[1]))


def _labelled_refs(root: Path, table: Path, marks: dict[str, np.ndarray],
                   files: dict[str, Path], reader: ImageReader) -> dict[str, ImageRef]:
    """id -> image (a file's stem, or ``stem#z=12`` for each slice of a volume); every id of
    ``landmarks.csv`` must have an image and every image file a row."""
    refs = {ref.stem: ref for path in files.values() for ref in reader.images(path)}
    missing = [i for i in marks if i not in refs]
    if missing:
        raise DataError(f"{len(missing)} id(s) of {table} have no image in {root / 'images'} "
                        f"(first: {missing[0]!r})")
    labelled = {refs[i].path for i in marks}
    unlabelled = [stem for stem, path in files.items() if path not in labelled]
    if unlabelled:
        raise DataError(f"{len(unlabelled)} image(s) in {root / 'images'} are missing in {table} "
                        f"(first: {files[unlabelled[0]].name})")
    return refs


def _choose_split(root: Path, split: str, ids: list[str], files: dict[str, Path],
                  refs: dict[str, ImageRef], val_fraction: float, test_fraction: float,
                  seed: int) -> list[str]:
    """The ids of ``split``: from ``splits.csv`` when present, else a seeded split of the files."""
    splits_csv = root / "splits.csv"
    if splits_csv.is_file():
        assignment = read_id_column(splits_csv, "split", set(ids))
        names = sorted(set(assignment.values()))
        if split not in names:
            raise DataError(f"unknown split {split!r}: {splits_csv} has {', '.join(names)}")
        chosen = [i for i in ids if assignment.get(i) == split]
    else:
        if split not in SEEDED_SPLITS:
            raise DataError(f"unknown split {split!r}: without splits.csv the splits are "
                            f"{', '.join(SEEDED_SPLITS)}")
        # Over files, not ids: the slices of one volume stay in one split. (For 2D files the
        # stems are the ids, so this is the split over ids it has always been.)
        stems = sorted(files)
        index = seeded_split(len(stems), val_fraction, test_fraction, seed)[split]
        picked = {files[stems[j]] for j in index}
        chosen = [i for i in ids if refs[i].path in picked]
    if not chosen:
        raise DataError(f"split {split!r} of {root} is empty")
    return chosen


def _pixel_sizes(root: Path, split: str, ids: list[str], chosen: list[str],
                 refs: dict[str, ImageRef], reader: ImageReader
                 ) -> tuple[np.ndarray | None, str | None]:
    """mm per pixel of each chosen image and where it came from: ``metadata.csv``, else the
    image headers, else (None, None)."""
    pixel_size, size_source = None, None
    meta_csv = root / "metadata.csv"
    if meta_csv.is_file():
        header, _ = _read_csv(meta_csv)
        if "pixel_size_mm" in header:
            sizes = read_id_column(meta_csv, "pixel_size_mm", set(ids))
            absent = [i for i in chosen if i not in sizes]
            if absent:
                raise DataError(f"{meta_csv} has no row for id {absent[0]!r} "
                                f"({len(absent)} of split {split!r} missing)")
            vals = []
            for i in chosen:
                try:
                    v = float(sizes[i])
                except ValueError:
                    v = float("nan")
                if not (math.isfinite(v) and v > 0):
                    raise DataError(f"{meta_csv}: pixel_size_mm of id {i!r} must be a positive "
                                    f"number, got {sizes[i]!r}")
                vals.append(v)
            pixel_size, size_source = np.asarray(vals, dtype=np.float64), "metadata.csv"
    if pixel_size is None:
        from_headers = _header_pixel_sizes(ids, refs, reader, root / "images")
        if from_headers is not None:
            sizes_mm, size_source = from_headers
            pixel_size = np.asarray([sizes_mm[i] for i in chosen], dtype=np.float64)
    return pixel_size, size_source


def _read_split(table: Path, chosen: list[str], marks: dict[str, np.ndarray],
                refs: dict[str, ImageRef], reader: ImageReader, channels: int,
                hw: tuple[int, int], k: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The chosen images resized to ``hw`` and their landmarks mapped onto them: (images,
    points, original sizes, scales); a landmark outside its image is refused."""
    images = np.empty((len(chosen), hw[0], hw[1], channels), dtype=np.uint8)
    points = np.empty((len(chosen), k, 2), dtype=np.float32)
    orig = np.empty((len(chosen), 2), dtype=np.int64)
    scales = np.empty((len(chosen), 2), dtype=np.float64)
    for n, i in enumerate(chosen):
        images[n], (oh, ow) = _read_resized(refs[i], channels, hw, reader)
        p = marks[i]
        outside = (p[:, 0] < -0.5) | (p[:, 0] > ow) | (p[:, 1] < -0.5) | (p[:, 1] > oh)
        if outside.any():
            j = int(np.flatnonzero(outside)[0])
            raise DataError(f"{table}: landmark {j + 1} of id {i!r} at ({p[j, 0]:g}, {p[j, 1]:g}) is "
                            f"outside its {ow}x{oh} (W x H) image {refs[i].name}")
        orig[n] = (oh, ow)
        scales[n] = (hw[1] / ow, hw[0] / oh)
        points[n] = to_resized(p, scales[n]).astype(np.float32)
    return images, points, orig, scales


def load_from_spec(spec: dict[str, Any], split: str) -> LandmarkDataset:
    """The ``split`` of the dataset a ``spec`` (e.g. from a checkpoint) describes."""
    keys = ("data_dir", "size", "channels", "val_fraction", "test_fraction", "seed", "window", "axis")
    return load_landmarks(split=split, **{k: spec[k] for k in keys if k in spec})


@register_dataset("landmarks")
def _registered(split: str, data_dir: Path, size: tuple[int, int] | list[int] | int = DEFAULT_SIZE,
                channels: int | None = None, val_fraction: float = 0.15,
                test_fraction: float = 0.15, seed: int = 0,
                window: tuple[float, float] | str | None = None, axis: str = "z") -> LandmarkDataset:
    """The registry's face of ``load_landmarks``: ``--data-dir`` is the landmark folder."""
    return load_landmarks(data_dir, split, size, channels, val_fraction, test_fraction, seed,
                          window, axis)
