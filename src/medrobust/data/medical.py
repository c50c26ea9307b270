"""DICOM and NIfTI: the medical formats, decoded for ``base.open_image`` (the one place that
opens image files).

A file is held as a volume of shape (z, y, x) (plus 3 colour samples for RGB DICOM):

- DICOM: frames are z, rows y, columns x; a single-frame file is one z slice. The stored values
  go through RescaleSlope/RescaleIntercept (or the Modality LUT) before any window, and
  MONOCHROME1 (low = white) is inverted after it.
- NIfTI: voxel (i, j, k) is (x, y, z), so an image's column is i and its row j, as nibabel
  indexes the data (no reorientation to a display convention: landmark pixels stay voxel
  indices). scl_slope/scl_inter are applied.

A volume is cut along a chosen axis ("x", "y" or "z") into 2D images whose rows are the later
and columns the earlier of the two other axes (z slice: rows y, columns x; y slice: rows z,
columns x; x slice: rows z, columns y). A file with one voxel along an axis is a 2D image.

Greyscale intensities become uint8 0..255 by one linear window, chosen in this order (and
recorded in the dataset's spec): the user's ``window`` (centre, width); else the file's own
(DICOM WindowCenter/WindowWidth, first value, per frame when frames carry their own; NIfTI
cal_min..cal_max when set); else the 0.5-99.5 percentile range of the whole file (min-max when
that range is empty). ``centre - width/2`` maps to 0 and ``centre + width/2`` to 255, clipped.

pydicom and nibabel are imported only when such a file is read.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medrobust.errors import ConfigError, DataError


def check_finite(a: np.ndarray, path: Path, what: str, fix: str) -> None:
    """Refuse a float image or mask with NaN or infinite pixels, naming how many (scaling or
    casting would silently turn the whole image into zeros)."""
    bad = int(np.count_nonzero(~np.isfinite(a)))
    if bad:
        raise DataError(f"{what} {path} has {bad} non-finite pixel value(s) (NaN or infinity) "
                        f"of {a.size}: replace them with {fix} before loading it")


DICOM_SUFFIXES = (".dcm", ".dicom")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
MEDICAL_SUFFIXES = DICOM_SUFFIXES + NIFTI_SUFFIXES
AXES = ("x", "y", "z")
#: where each axis lies in a volume held as (z, y, x)
AXIS_DIM = {"z": 0, "y": 1, "x": 2}
DEFAULT_PERCENTILES = (0.5, 99.5)
#: A gzip bomb of a .nii.gz can declare billions of voxels in a few kilobytes: refused from the
#: header before any decoding (2**29 voxels is 2 GiB as float32).
MAX_VOLUME_VOXELS = 2**29
WINDOW_ORDER = ("the user's window, else the file's (DICOM WindowCenter/WindowWidth, NIfTI "
                "cal_min..cal_max), else the default; centre - width/2 -> 0, centre + width/2 "
                "-> 255, after DICOM RescaleSlope/RescaleIntercept")
DEFAULT_WINDOW = ("0.5-99.5 percentile range of each DICOM/NIfTI file (min-max when empty); "
                  "min-max of each 16-bit or float PNG/TIFF")
#: How the window of one file was chosen (the spec counts files per source).
SOURCES = ("user", "file", "percentile", "min-max", "colour")
_NIFTI_UNITS_MM = {"mm": 1.0, "meter": 1000.0, "micron": 0.001, "unknown": 1.0}
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def suffix_of(path: Path) -> str:
    """The lower-case file type, two parts for ``.nii.gz``."""
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def file_stem(path: Path) -> str:
    """The name without its type: ``scan`` for ``scan.nii.gz`` (``Path.stem`` gives ``scan.nii``)."""
    return path.name[:-len(".nii.gz")] if suffix_of(path) == ".nii.gz" else path.stem


def medical_format(path: Path) -> str | None:
    """"DICOM", "NIfTI" or None, by the file's type."""
    suffix = suffix_of(path)
    if suffix in DICOM_SUFFIXES:
        return "DICOM"
    return "NIfTI" if suffix in NIFTI_SUFFIXES else None


def check_window(window: Any) -> tuple[float, float] | None:
    """(centre, width) from a pair or a ``"centre,width"`` string; width > 0."""
    if window is None:
        return None
    parts: Sequence[Any] = window.split(",") if isinstance(window, str) else window
    try:
        centre, width = (float(v) for v in parts)
    except (TypeError, ValueError):
        raise ConfigError(f"window must be centre,width (e.g. 40,400 for a CT soft-tissue "
                          f"window), got {window!r}") from None
    if not (math.isfinite(centre) and math.isfinite(width) and width > 0):
        raise ConfigError(f"window must be a finite centre and a width > 0, got {window!r}")
    return centre, width


def check_axis(axis: Any) -> str:
    """The slicing axis of 3D volumes: "x", "y" or "z"."""
    name = str(axis).lower()
    if name not in AXES:
        raise ConfigError(f"axis must be one of x, y, z (the axis 3D volumes are sliced "
                          f"along), got {axis!r}")
    return name


def apply_window(values: np.ndarray, centre: float, width: float) -> np.ndarray:
    """uint8: ``centre - width/2`` -> 0, ``centre + width/2`` -> 255, linear, clipped, rounded."""
    scaled = (values.astype(np.float32) - np.float32(centre - width / 2.0)) * np.float32(255.0 / width)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def default_window(values: np.ndarray) -> tuple[float, float, str]:
    """(centre, width, source): the 0.5-99.5 percentile range, else min-max, else (constant
    values) a window that maps them to 0."""
    if values.size:
        lo, hi = (float(v) for v in np.percentile(values, DEFAULT_PERCENTILES))
        if hi > lo:
            return (lo + hi) / 2.0, hi - lo, "percentile"
        lo, hi = float(values.min()), float(values.max())
        if hi > lo:
            return (lo + hi) / 2.0, hi - lo, "min-max"
        return lo + 0.5, 1.0, "min-max"
    return 0.5, 1.0, "min-max"


@dataclass(frozen=True)
class Header:
    """What a file's header says, without decoding pixels."""

    kind: str  # "DICOM" or "NIfTI"
    shape: tuple[int, int, int]  # voxels along (z, y, x)
    colour: bool
    spacing: tuple[float | None, float | None, float | None]  # mm along (z, y, x)
    spacing_source: str | None  # the header field the in-plane spacing came from

    def flat_axis(self) -> str | None:
        """The axis of a 2D file (one voxel along it), None for a true volume."""
        return next((a for a in ("z", "y", "x") if self.shape[AXIS_DIM[a]] == 1), None)

    def plane(self, axis: str) -> tuple[int, int]:
        """(rows, columns) of the images cut along ``axis``."""
        rows, cols = (d for d in range(3) if d != AXIS_DIM[axis])
        return self.shape[rows], self.shape[cols]

    def plane_spacing(self, axis: str) -> tuple[float | None, float | None]:
        """(row, column) spacing in mm of the images cut along ``axis``."""
        rows, cols = (d for d in range(3) if d != AXIS_DIM[axis])
        return self.spacing[rows], self.spacing[cols]


@dataclass(frozen=True)
class Volume:
    """A decoded file: ``values`` (z, y, x) or (z, y, x, 3); uint8 for images, the stored
    numbers for masks. ``source`` says how intensities became 0..255 (``SOURCES``)."""

    values: np.ndarray
    source: str


def _line(exc: BaseException) -> str:
    """The first line of an exception's message (library messages often span several)."""
    text = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
    return text if len(text) <= 200 else text[:197] + "..."


def read_header(path: Path, what: str = "image") -> Header:
    """The header of a DICOM or NIfTI file; one DataError line when it is unreadable, not an
    image, 4D or over the size limit."""
    header = _dicom_header(path, what) if medical_format(path) == "DICOM" else _nifti_header(path, what)
    voxels = math.prod(header.shape) * (3 if header.colour else 1)
    if voxels > MAX_VOLUME_VOXELS:
        z, y, x = header.shape
        raise DataError(f"{what} {path} is a {x}x{y}x{z} volume ({voxels} values), over the "
                        f"limit of {MAX_VOLUME_VOXELS}: crop or downsample it first")
    return header


def read_volume(path: Path, window: tuple[float, float] | None, labels: bool,
                what: str = "image") -> Volume:
    """The whole file decoded: windowed to uint8 for images, the stored values for masks."""
    if medical_format(path) == "DICOM":
        return _dicom_volume(path, window, labels, what)
    return _nifti_volume(path, window, labels, what)


def window_volume(values: np.ndarray, window: tuple[float, float] | None,
                  file_window: tuple[float, float] | None) -> tuple[np.ndarray, str]:
    """uint8 values and the source of the window used (the whole file shares one)."""
    if window is not None:
        return apply_window(values, *window), "user"
    if file_window is not None:
        return apply_window(values, *file_window), "file"
    centre, width, source = default_window(values)
    return apply_window(values, centre, width), source


# --------------------------------------------------------------------------- DICOM


def _dcmread(path: Path, what: str, pixels: bool) -> Any:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        with warnings.catch_warnings():
            # pydicom warns about every small deviation from the standard it reads past; the
            # checks below name what stops a file from loading, in one line.
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, stop_before_pixels=not pixels)
    except InvalidDicomError:
        raise DataError(f"{what} {path} is not a DICOM file (no 'DICM' marker after the "
                        "128-byte preamble)") from None
    except (OSError, ValueError, EOFError, KeyError, TypeError, AttributeError) as exc:
        raise DataError(f"cannot read DICOM {what} {path}: {_line(exc)}") from None
    _check_complete(ds, path, what)
    return ds


def _check_complete(ds: Any, path: Path, what: str) -> None:
    """A file cut short: pydicom keeps what it read without a word, so an element whose value
    is shorter than its declared length (or a file meta without a transfer syntax) says so."""
    from pydicom.dataelem import RawDataElement

    if "TransferSyntaxUID" not in ds.file_meta:
        raise DataError(f"{what} {path} is cut short or damaged: its file meta has no transfer "
                        "syntax")
    for tag in list(ds.keys()):  # tags: iterating the dataset would convert raw elements
        elem = ds.get_item(tag)
        if (isinstance(elem, RawDataElement) and elem.value is not None
                and elem.length != 0xFFFFFFFF and len(elem.value) < elem.length):
            from pydicom.datadict import keyword_for_tag

            name = keyword_for_tag(tag) or str(tag)
            raise DataError(f"{what} {path} is cut short: {name} has {len(elem.value)} of its "
                            f"{elem.length} bytes")


def _not_image(ds: Any, path: Path, what: str) -> DataError:
    sop = ds.get("SOPClassUID")
    kind = f" ({sop.name})" if sop is not None else ""
    return DataError(f"{what} {path} is a DICOM file without pixel data{kind}: not an image, "
                     "or cut short")


def _group_item(groups: Any, index: int, sequence: str) -> Any:
    """Item 0 of functional-group ``sequence`` in item ``index`` of ``groups`` (or None)."""
    if groups is None or len(groups) <= index:
        return None
    seq = groups[index].get(sequence)
    return seq[0] if seq else None


def _per_frame(ds: Any, sequence: str, keyword: str, frames: int) -> list[Any] | None:
    """``keyword`` for each frame: at the top level, else in the frame's own functional group
    (enhanced multi-frame files), else in the shared one; None when no frame has it."""
    if keyword in ds:
        return [ds[keyword].value] * frames
    shared = _group_item(ds.get("SharedFunctionalGroupsSequence"), 0, sequence)
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    out = []
    for f in range(frames):
        item = _group_item(per_frame, f, sequence)
        if item is None or keyword not in item:
            item = shared
        out.append(item[keyword].value if item is not None and keyword in item else None)
    return out if any(v is not None for v in out) else None


def _first(value: Any) -> float | None:
    """A DS value or the first of a multi-valued one, as float (None when empty or bad)."""
    if value is None:
        return None
    if not isinstance(value, (str, bytes)) and isinstance(value, Sequence):
        value = value[0] if len(value) else None
    try:
        out = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _pair(value: Any) -> tuple[float, float] | None:
    """A two-valued DS such as PixelSpacing (row, column), when both are positive."""
    try:
        a, b = (float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return (a, b) if a > 0 and b > 0 and math.isfinite(a) and math.isfinite(b) else None


def _dicom_header(path: Path, what: str) -> Header:
    return _dicom_facts(_dcmread(path, what, pixels=False), path, what)


def _dicom_facts(ds: Any, path: Path, what: str) -> Header:
    """The header facts of a read dataset (the same refusals whether pixels were read)."""
    if "Rows" not in ds or "Columns" not in ds:
        raise _not_image(ds, path, what)
    frames = int(ds.get("NumberOfFrames") or 1)
    samples = int(ds.get("SamplesPerPixel") or 1)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if samples not in (1, 3) or photometric == "PALETTE COLOR":
        raise DataError(f"{what} {path} is {photometric} with {samples} sample(s) per pixel: "
                        "only greyscale and RGB DICOM are read (convert it to RGB first)")
    spacing, source = None, None
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        values = _per_frame(ds, "PixelMeasuresSequence", keyword, 1)
        spacing = _pair(values[0]) if values else None
        if spacing is not None:
            source = keyword
            break
    z_mm = None
    if frames > 1:
        for keyword in ("SpacingBetweenSlices", "SliceThickness"):
            values = _per_frame(ds, "PixelMeasuresSequence", keyword, 1)
            z_mm = _first(values[0]) if values else None
            if z_mm is not None and z_mm > 0:
                break
            z_mm = None
    row_mm, col_mm = spacing if spacing is not None else (None, None)
    return Header("DICOM", (frames, int(ds.Rows), int(ds.Columns)), samples == 3,
                  (z_mm, row_mm, col_mm), source)


def _decoded_pixels(ds: Any, path: Path, what: str) -> np.ndarray:
    """``ds.pixel_array``, or one DataError line saying why it cannot be had."""
    from pydicom.pixels import get_decoder

    if not any(k in ds for k in _PIXEL_KEYWORDS):
        raise _not_image(ds, path, what)
    syntax = ds.file_meta.TransferSyntaxUID
    if syntax.is_compressed:
        try:
            decoder = get_decoder(syntax)
        except NotImplementedError:
            raise DataError(f"{what} {path} is compressed as {syntax.name}, which pydicom cannot "
                            "decode: decompress it first (e.g. gdcmconv --raw)") from None
        if not decoder.is_available:
            needs = "; ".join(decoder.missing_dependencies)
            raise DataError(f"{what} {path} is compressed as {syntax.name} and no installed "
                            f"decoder reads it: install one of: {needs} (or decompress it first, "
                            "e.g. gdcmconv --raw)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return np.asarray(ds.pixel_array)
    except MemoryError:
        raise
    except Exception as exc:  # each decoder plugin fails in its own way on damaged data
        raise DataError(f"cannot decode the pixel data of DICOM {what} {path}: {_line(exc)}") from None


def _dicom_volume(path: Path, window: tuple[float, float] | None, labels: bool, what: str
                  ) -> Volume:
    ds = _dcmread(path, what, pixels=True)
    header = _dicom_facts(ds, path, what)
    arr = _decoded_pixels(ds, path, what)
    frames = header.shape[0]
    expected = header.shape + ((3,) if header.colour else ())
    if arr.size != math.prod(expected):
        raise DataError(f"{what} {path} decodes to {arr.shape}, not the {expected} its header "
                        "declares")
    arr = arr.reshape(expected)
    if header.colour:
        if labels:
            raise DataError(f"{what} {path} is a colour DICOM: a mask must be single-channel")
        if arr.dtype != np.uint8:  # wider RGB: its stored bit depth is the full range
            top = float(2 ** int(ds.get("BitsStored") or 8) - 1)
            arr = np.clip(np.rint(arr.astype(np.float32) * (255.0 / top)), 0, 255).astype(np.uint8)
        return Volume(arr, "colour")

    values = _modality(ds, arr, frames, path, what)
    if labels:
        return Volume(values, "labels")
    file_window = None
    if window is None:
        centres = _per_frame(ds, "FrameVOILUTSequence", "WindowCenter", frames)
        widths = _per_frame(ds, "FrameVOILUTSequence", "WindowWidth", frames)
        if centres is not None and widths is not None:
            pairs = [(_first(c), _first(w)) for c, w in zip(centres, widths, strict=True)]
            if all(c is not None and w is not None and w > 0 for c, w in pairs):
                if len(set(pairs)) > 1:  # frames with their own windows (enhanced files)
                    out = np.stack([apply_window(values[f], *pairs[f])  # type: ignore[arg-type]
                                    for f in range(frames)])
                    return Volume(_monochrome1(ds, out), "file")
                file_window = pairs[0]
    out, source = window_volume(values, window, file_window)  # type: ignore[arg-type]
    return Volume(_monochrome1(ds, out), source)


def _modality(ds: Any, arr: np.ndarray, frames: int, path: Path, what: str) -> np.ndarray:
    """Stored values -> modality values (e.g. Hounsfield units): the Modality LUT, else
    RescaleSlope/RescaleIntercept per frame. Integer data without a rescale stays as stored."""

    if arr.dtype.kind == "f":
        check_finite(arr, path, what, "numbers")
    if "ModalityLUTSequence" in ds and "RescaleSlope" not in ds:
        from pydicom.pixels import apply_modality_lut

        return np.asarray(apply_modality_lut(arr, ds))
    slopes = _per_frame(ds, "PixelValueTransformationSequence", "RescaleSlope", frames)
    intercepts = _per_frame(ds, "PixelValueTransformationSequence", "RescaleIntercept", frames)
    s, i = _floats(slopes, frames, 1.0), _floats(intercepts, frames, 0.0)
    if np.all(s == 1.0) and np.all(i == 0.0):
        return arr
    shape = (frames,) + (1,) * (arr.ndim - 1)
    return arr.astype(np.float32) * s.reshape(shape) + i.reshape(shape)


def _floats(values: list[Any] | None, frames: int, default: float) -> np.ndarray:
    """One float32 per frame; ``default`` where a frame has no usable value."""
    out = [_first(v) for v in (values or [None] * frames)]
    return np.asarray([default if v is None else v for v in out], dtype=np.float32)


def _monochrome1(ds: Any, out: np.ndarray) -> np.ndarray:
    """MONOCHROME1 shows low values white: inverted so 255 is bright, as everywhere else."""
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        return 255 - out
    return out


# --------------------------------------------------------------------------- NIfTI


def _nib_load(path: Path, what: str) -> Any:
    import nibabel as nib
    from nibabel.filebasedimages import ImageFileError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return nib.load(path, mmap=False)
    except (ImageFileError, OSError, ValueError, EOFError) as exc:
        raise DataError(f"cannot read NIfTI {what} {path} (cut short or not NIfTI?): "
                        f"{_line(exc)}") from None


def _nifti_shape(img: Any, path: Path, what: str) -> tuple[int, int, int]:
    """(z, y, x) of a 2D or 3D file; trailing dimensions of length 1 are ignored."""
    shape = tuple(int(s) for s in img.shape)
    if len(shape) > 3 and any(s != 1 for s in shape[3:]):
        raise DataError(f"{what} {path} is a {len(shape)}D NIfTI (shape {shape}): only 2D images "
                        "and 3D volumes are read; split it into 3D files first (one per time "
                        "point or channel)")
    if len(shape) < 2:
        raise DataError(f"{what} {path} is a {len(shape)}D NIfTI (shape {shape}), not an image")
    dtype = img.get_data_dtype()
    if dtype.fields is not None or dtype.kind not in "biuf":
        raise DataError(f"{what} {path} holds {dtype} voxels: only real-valued greyscale NIfTI "
                        "is read")
    x, y = shape[0], shape[1]
    z = shape[2] if len(shape) > 2 else 1
    return z, y, x


def _nifti_header(path: Path, what: str) -> Header:
    img = _nib_load(path, what)
    shape = _nifti_shape(img, path, what)
    zooms = [float(v) for v in img.header.get_zooms()[:3]]
    unit = _NIFTI_UNITS_MM.get(img.header.get_xyzt_units()[0], 1.0)  # NIfTI's default is mm
    mm = [v * unit if math.isfinite(v) and v > 0 else None for v in zooms]
    while len(mm) < 3:
        mm.append(None)
    source = "NIfTI zooms" if mm[0] is not None and mm[1] is not None else None
    return Header("NIfTI", shape, False, (mm[2], mm[1], mm[0]), source)


def _nifti_volume(path: Path, window: tuple[float, float] | None, labels: bool, what: str
                  ) -> Volume:

    img = _nib_load(path, what)
    z, y, x = _nifti_shape(img, path, what)
    try:
        data = np.asanyarray(img.dataobj)  # scl_slope/scl_inter applied when set
    except MemoryError:
        raise
    except Exception as exc:  # truncated data, a damaged gzip stream, ...
        raise DataError(f"cannot read the voxels of NIfTI {what} {path} (cut short?): "
                        f"{_line(exc)}") from None
    values = np.ascontiguousarray(data.reshape(x, y, z).transpose(2, 1, 0))
    if values.dtype.kind == "f":
        check_finite(values, path, what, "numbers" if not labels else "class values")
    if labels:
        return Volume(values, "labels")
    cal = (float(img.header["cal_min"]), float(img.header["cal_max"]))
    file_window = ((cal[0] + cal[1]) / 2.0, cal[1] - cal[0]) if cal[1] > cal[0] else None
    out, source = window_volume(values, window, file_window)
    return Volume(out, source)
