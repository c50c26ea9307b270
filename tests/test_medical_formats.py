"""DICOM and NIfTI in the folder datasets (issue 24): the three folder loaders, intensity
windowing (file, user, default), 3D slicing with the slice in the names, the landmark mm scale
from headers, and one DataError line for each kind of bad file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import get_decoder
from pydicom.uid import (
    BasicTextSRStorage,
    CTImageStorage,
    ExplicitVRLittleEndian,
    JPEGLSLossless,
    generate_uid,
)

from medrobust.data import load_dataset, load_from_spec
from medrobust.data.base import ImageReader, open_image
from medrobust.data.folder import load_folder
from medrobust.data.landmarks import load_landmarks
from medrobust.data.segfolder import load_segfolder
from medrobust.errors import ConfigError, DataError

ALL_TRAIN = {"val_fraction": 0.0, "test_fraction": 0.0}


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text and "Traceback" not in text, text
    return text


def write_dicom(path: Path, pixels: np.ndarray, syntax: str = ExplicitVRLittleEndian,
                **attrs: object) -> Path:
    """A small CT-like DICOM: int16 (rows, cols), or (frames, rows, cols) as multi-frame."""
    arr = np.asarray(pixels)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.Rows, ds.Columns = arr.shape[-2:]
    if arr.ndim == 3:
        ds.NumberOfFrames = arr.shape[0]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    for key, value in attrs.items():
        setattr(ds, key, value)
    if syntax == ExplicitVRLittleEndian:
        ds.PixelData = arr.astype("<i2").tobytes()
    else:  # a compressed syntax: one encapsulated frame (its bytes never get decoded)
        ds.PixelData = encapsulate([b"\xff\xd8\xff\xf7" + bytes(16) + b"\xff\xd9"])
        ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return path


def write_nifti(path: Path, data: np.ndarray, zooms: tuple[float, ...] = (1.0, 1.0, 1.0),
                **header: float) -> Path:
    """A NIfTI-1 file of ``data`` indexed (x, y[, z[, t]]) with voxel sizes ``zooms`` in mm."""
    path.parent.mkdir(parents=True, exist_ok=True)
    diag = [*zooms[:3], *([1.0] * (3 - len(zooms[:3]))), 1.0]
    img = nib.Nifti1Image(np.asarray(data), np.diag(diag))
    img.header.set_xyzt_units("mm")
    for key, value in header.items():
        img.header[key] = value
    nib.save(img, path)
    return path


def write_png(path: Path, size: int = 8, value: int = 128) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size), value, np.uint8)).save(path)
    return path


def volume(shape: tuple[int, int, int]) -> np.ndarray:
    """uint8 (x, y, z) with values that tell every voxel's position apart along each axis."""
    i, j, k = np.indices(shape)
    return ((i + 7 * j + 31 * k) % 256).astype(np.uint8)


STORED = (np.arange(64, dtype=np.int16).reshape(8, 8) * 10 - 100)
HU = STORED.astype(np.float64) * 2 - 50  # RescaleSlope 2, RescaleIntercept -50


def windowed(values: np.ndarray, centre: float, width: float) -> np.ndarray:
    lo = centre - width / 2
    return np.clip(np.rint((values - lo) / width * 255), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- the three loaders


def test_folder_reads_dicom_and_nifti_with_one_named_image_per_slice(tmp_path):
    write_dicom(tmp_path / "a" / "x1.dcm", STORED, WindowCenter=40, WindowWidth=400)
    write_dicom(tmp_path / "a" / "x2.dcm", STORED)
    write_nifti(tmp_path / "b" / "vol.nii.gz", volume((8, 8, 3)))
    write_nifti(tmp_path / "b" / "flat.nii", volume((8, 8, 1)) + 1)
    ds = load_folder("train", tmp_path, size=8, **ALL_TRAIN)
    assert ds.images.shape == (6, 8, 8, 1) and ds.images.dtype == np.uint8
    named = dict(zip(ds.names, ds.labels.tolist(), strict=True))
    assert named == {"x1.dcm": 0, "x2.dcm": 0, "flat.nii": 1,
                     "vol.nii.gz#z=0": 1, "vol.nii.gz#z=1": 1, "vol.nii.gz#z=2": 1}
    # the slices differ (each is its own image), and windowing used the whole 0..255 range
    slices = [ds.images[ds.names.index(f"vol.nii.gz#z={k}")] for k in range(3)]
    assert not np.array_equal(slices[0], slices[1])
    assert ds.spec["window"] is None and ds.spec["axis"] == "z"
    assert ds.spec["windowing"]["files"] == {"file": 1, "percentile": 3}
    assert ds.subset([5, 0]).names == (ds.names[5], ds.names[0])


def test_volume_slices_never_cross_splits(tmp_path):
    for c in ("a", "b"):
        for n in range(6):
            write_nifti(tmp_path / c / f"{c}{n}.nii.gz", volume((8, 8, 4)) + n)
    owner: dict[str, str] = {}
    for split in ("train", "val", "test"):
        ds = load_folder(split, tmp_path, size=8, val_fraction=1 / 3, test_fraction=1 / 3, seed=3)
        files = {name.split("#")[0] for name in ds.names}
        assert len(ds) == 4 * len(files)  # every slice of a chosen file, no other
        for f in files:
            assert owner.setdefault(f, split) == split, f"{f} is in {owner[f]} and {split}"
    assert len(owner) == 12


def test_segfolder_pairs_volume_slices_with_mask_slices(tmp_path):
    labels = np.zeros((16, 16, 4), np.uint8)
    labels[2:9, 3:12, 1:] = 1
    labels[10:14, 5:7, 2:] = 2
    intensities = np.random.default_rng(0).normal(100, 30, (16, 16, 4)).astype(np.float32)
    write_nifti(tmp_path / "images" / "vol.nii.gz", intensities)
    write_nifti(tmp_path / "masks" / "vol_mask.nii.gz", labels)
    write_dicom(tmp_path / "images" / "d.dcm", np.tile(STORED, (2, 2)))
    Image.fromarray((np.eye(16) * 255).astype(np.uint8)).save(tmp_path / "masks" / "d.png")
    ds = load_segfolder("train", tmp_path, size=16, **ALL_TRAIN)
    assert ds.names == ("d", "vol#z=0", "vol#z=1", "vol#z=2", "vol#z=3")
    assert ds.num_classes == 3 and ds.channels == 1
    for k in range(4):  # a z slice is (rows y, columns x): the voxel array transposed
        assert np.array_equal(ds.masks[ds.names.index(f"vol#z={k}")], labels[:, :, k].T)
    assert np.array_equal(ds.masks[0], np.eye(16, dtype=np.int64))
    along_x = load_segfolder("train", tmp_path, size=16, axis="x", **ALL_TRAIN)
    assert along_x.names[1:] == tuple(f"vol#x={i}" for i in range(16))
    # an x slice is (rows z, columns y), 4 x 16 here, resized to 16 x 16 (nearest for masks)
    assert np.array_equal(along_x.masks[1 + 5], _resized_mask(labels[5].T))
    assert along_x.spec["axis"] == "x"


def _resized_mask(plane: np.ndarray) -> np.ndarray:
    img = Image.fromarray(plane.astype(np.int32)).resize((16, 16), Image.Resampling.NEAREST)
    return np.asarray(img).astype(np.int64)


def test_a_mask_volume_with_other_slice_count_is_one_line(tmp_path):
    write_nifti(tmp_path / "images" / "v.nii.gz", volume((8, 8, 4)))
    write_nifti(tmp_path / "masks" / "v.nii.gz", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(DataError) as exc:
        load_segfolder("train", tmp_path, size=8, **ALL_TRAIN)
    assert "v.nii.gz has 4 slice(s) along z but its mask v.nii.gz has 3" in one_line(exc)


def test_slices_along_each_axis_keep_x_as_column_and_y_as_row(tmp_path):
    v = volume((12, 10, 9))
    path = write_nifti(tmp_path / "v.nii.gz", v)
    expected = {"z": lambda k: v[:, :, k].T, "y": lambda k: v[:, k, :].T, "x": lambda k: v[k].T}
    for axis, plane in expected.items():
        reader = ImageReader(window=(127.5, 255), axis=axis)  # identity on 0..255
        refs = reader.images(path)
        n = v.shape["xyz".index(axis)]
        assert [r.name for r in refs] == [f"v.nii.gz#{axis}={k}" for k in range(n)]
        assert refs[3].stem == f"v#{axis}=3"
        for k in (0, 3, n - 1):
            with open_image(refs[k], reader=reader) as img:
                assert np.array_equal(np.asarray(img), plane(k)), (axis, k)
    # one 2D image is wanted: a whole volume says so
    with pytest.raises(DataError) as exc, open_image(path):
        pass
    assert "is a 3D volume (9 slices along z)" in one_line(exc)


# --------------------------------------------------------------------------- windowing


def _one_dicom_folder(tmp_path: Path, **attrs: object) -> Path:
    write_dicom(tmp_path / "a" / "scan.dcm", STORED, RescaleSlope=2, RescaleIntercept=-50, **attrs)
    write_png(tmp_path / "b" / "other.png")
    return tmp_path


def _scan(ds) -> np.ndarray:
    return ds.images[ds.names.index("scan.dcm"), :, :, 0]


def test_window_order_user_then_file_then_default(tmp_path):
    root = _one_dicom_folder(tmp_path / "file", WindowCenter=[100, 40], WindowWidth=[400, 80])
    file_ds = load_folder("train", root, size=8, **ALL_TRAIN)
    assert np.array_equal(_scan(file_ds), windowed(HU, 100, 400))  # the first of two windows
    assert file_ds.spec["windowing"]["files"] == {"file": 1}

    user_ds = load_folder("train", root, size=8, window="0,2000", **ALL_TRAIN)
    assert np.array_equal(_scan(user_ds), windowed(HU, 0, 2000))
    assert user_ds.spec["window"] == [0.0, 2000.0]
    assert user_ds.spec["windowing"]["files"] == {"user": 1}

    root = _one_dicom_folder(tmp_path / "none")
    default_ds = load_folder("train", root, size=8, **ALL_TRAIN)
    lo, hi = np.percentile(HU, [0.5, 99.5])
    got = _scan(default_ds).astype(int)
    assert np.abs(got - windowed(HU, (lo + hi) / 2, hi - lo)).max() <= 1
    assert got.min() == 0 and got.max() == 255 and not np.array_equal(got, _scan(file_ds))
    assert default_ds.spec["windowing"]["files"] == {"percentile": 1}
    assert "0.5-99.5 percentile" in default_ds.spec["windowing"]["default"]


def test_monochrome1_is_inverted_after_the_window(tmp_path):
    root = _one_dicom_folder(tmp_path, WindowCenter=100, WindowWidth=400,
                             PhotometricInterpretation="MONOCHROME1")
    assert np.array_equal(_scan(load_folder("train", root, size=8, **ALL_TRAIN)),
                          255 - windowed(HU, 100, 400))


def test_nifti_window_from_cal_min_max_and_rescale(tmp_path):
    v = volume((8, 8, 2)).astype(np.int16)
    write_nifti(tmp_path / "a" / "n.nii", v, cal_min=50.0, cal_max=150.0, scl_slope=2.0,
                scl_inter=10.0)
    write_png(tmp_path / "b" / "p.png")
    ds = load_folder("train", tmp_path, size=8, **ALL_TRAIN)
    got = ds.images[ds.names.index("n.nii#z=1"), :, :, 0]
    assert np.array_equal(got, windowed(v[:, :, 1].T * 2.0 + 10, 100, 100))
    assert ds.spec["windowing"]["files"] == {"file": 1}


def test_the_window_reaches_16_bit_pngs_and_reloads_from_the_spec(tmp_path):
    wide = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)
    (tmp_path / "a").mkdir()
    Image.fromarray(wide).save(tmp_path / "a" / "w.png")
    write_dicom(tmp_path / "b" / "d.dcm", STORED)
    ds = load_dataset("folder", "train", data_dir=tmp_path, size=8, window="20000,40000",
                      **ALL_TRAIN)
    assert np.array_equal(ds.images[ds.names.index("w.png"), :, :, 0],
                          windowed(wide.astype(float), 20000, 40000))
    again = load_from_spec(ds.spec, "train")
    assert np.array_equal(again.images, ds.images) and again.names == ds.names
    plain = load_dataset("folder", "train", data_dir=tmp_path, size=8, **ALL_TRAIN)
    assert plain.spec["windowing"]["files"] == {"min-max": 1, "percentile": 1}


def test_window_and_axis_options_are_checked_in_one_line(tmp_path):
    for bad in ("40", "40,0", "a,b", (1, 2, 3)):
        with pytest.raises(ConfigError) as exc:
            ImageReader(window=bad)
        assert "window" in one_line(exc)
    with pytest.raises(ConfigError) as exc:
        ImageReader(axis="t")
    assert "axis must be one of x, y, z" in one_line(exc)
    with pytest.raises(ConfigError) as exc:
        load_dataset("synthetic", "train", window="40,400")
    assert one_line(exc) == ("window applies to datasets read from image files (folder, "
                             "landmarks, segfolder), not synthetic")
    with pytest.raises(ConfigError) as exc:  # put into a model's spec: refused, not dropped
        load_from_spec({"dataset": "synthetic", "size": 8, "n": 4, "axis": "y"}, "test")
    assert "axis applies to datasets read from image files" in one_line(exc)


# --------------------------------------------------------------------------- landmarks


def _landmark_folder(root: Path, images: dict[str, object], rows: list[str]) -> Path:
    for name, make in images.items():
        make(root / "images" / name)  # type: ignore[operator]
    (root / "landmarks.csv").write_text("id,x1,y1\n" + "\n".join(rows) + "\n")
    (root / "splits.csv").write_text("id,split\n" + "\n".join(
        f"{r.split(',')[0]},train" for r in rows) + "\n")
    return root


def test_landmark_mm_scale_comes_from_the_headers(tmp_path):
    root = _landmark_folder(tmp_path, {
        "a.dcm": lambda p: write_dicom(p, STORED, PixelSpacing=[0.2, 0.2]),
        "b.dcm": lambda p: write_dicom(p, STORED, ImagerPixelSpacing=[0.3, 0.3]),
        "c.nii.gz": lambda p: write_nifti(p, volume((8, 8, 1)), zooms=(0.25, 0.25, 1.0)),
        "v.nii.gz": lambda p: write_nifti(p, volume((8, 8, 3)), zooms=(0.5, 0.5, 2.0)),
    }, ["a,1,2", "b,3,4", "c,5,6", "v#z=1,2,2"])
    ds = load_landmarks(root, "train", size=8)
    assert ds.ids == ("a", "b", "c", "v#z=1")  # slices without a row are left out
    assert ds.pixel_size_mm.tolist() == pytest.approx([0.2, 0.3, 0.25, 0.5])
    assert ds.spec["pixel_size_source"] == "header: ImagerPixelSpacing, NIfTI zooms, PixelSpacing"
    assert np.allclose(ds.landmarks[0], [[1, 2]])
    (root / "metadata.csv").write_text("id,pixel_size_mm\na,1\nb,1\nc,1\nv#z=1,1\n")
    given = load_landmarks(root, "train", size=8)  # the user's scale wins
    assert given.pixel_size_mm.tolist() == [1.0] * 4
    assert given.spec["pixel_size_source"] == "metadata.csv"


@pytest.mark.parametrize("second, needle", [
    (lambda p: write_dicom(p, STORED, PixelSpacing=[0.2, 0.4]),
     "b.dcm: its header (PixelSpacing) gives 0.2 mm between rows but 0.4 mm between columns"),
    (lambda p: write_png(p.with_suffix(".png")),
     "1 of the 2 images in {images} give a pixel spacing in their header but b.png does not"),
], ids=["not-square", "some-without"])
def test_landmark_headers_that_disagree_are_one_line(tmp_path, second, needle):
    root = _landmark_folder(tmp_path, {
        "a.dcm": lambda p: write_dicom(p, STORED, PixelSpacing=[0.2, 0.2]), "b.dcm": second,
    }, ["a,1,2", "b,3,4"])
    with pytest.raises(DataError) as exc:
        load_landmarks(root, "train", size=8)
    assert needle.format(images=root / "images") in one_line(exc)


# --------------------------------------------------------------------------- bad files


def _truncated_dicom(p: Path) -> None:
    write_dicom(p, STORED)
    p.write_bytes(p.read_bytes()[:-60])


def _report_dicom(p: Path) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = BasicTextSRStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = BasicTextSRStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality = "SR"
    ds.save_as(p, enforce_file_format=True)


def _nifti_with_nan(p: Path, slices: int = 2) -> None:
    v = np.ones((8, 8, slices), np.float32)
    v[1, 2, slices - 1] = np.nan
    write_nifti(p, v)


def _truncated_nifti(p: Path) -> None:
    write_nifti(p, volume((8, 8, 4)))
    p.write_bytes(p.read_bytes()[:120])


BAD = [
    ("truncated-dicom", "bad.dcm", _truncated_dicom, "is cut short: PixelData has 68 of its 128 bytes"),
    ("dicom-without-pixels", "bad.dcm", _report_dicom,
     "is a DICOM file without pixel data (Basic Text SR Storage)"),
    ("compressed-dicom", "bad.dcm", lambda p: write_dicom(p, STORED, syntax=JPEGLSLossless),
     "is compressed as JPEG-LS Lossless Image Compression and no installed decoder reads it"),
    ("not-dicom", "bad.dcm", lambda p: p.write_bytes(b"not a scan " * 40), "is not a DICOM file"),
    ("4d-nifti", "bad.nii.gz", lambda p: write_nifti(p, np.zeros((8, 8, 3, 2), np.float32)),
     "is a 4D NIfTI (shape (8, 8, 3, 2)): only 2D images and 3D volumes are read"),
    ("nifti-with-nan", "bad.nii", _nifti_with_nan, "has 1 non-finite pixel value(s) (NaN or infinity)"),
    ("truncated-nifti", "bad.nii.gz", _truncated_nifti, "cannot read NIfTI image"),
]


@pytest.mark.parametrize("name, make, needle", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_a_bad_file_is_one_data_error_line_naming_it(tmp_path, name, make, needle):
    if "compressed" in needle and get_decoder(JPEGLSLossless).is_available:
        pytest.skip("a JPEG-LS decoder is installed here")
    write_png(tmp_path / "a" / "good.png")
    (tmp_path / "b").mkdir()
    make(tmp_path / "b" / name)
    with pytest.raises(DataError) as exc:
        load_folder("train", tmp_path, size=8, **ALL_TRAIN)
    text = one_line(exc)
    assert str(tmp_path / "b" / name) in text and needle in text, text


def test_a_mask_with_nan_is_one_line(tmp_path):
    write_nifti(tmp_path / "images" / "m.nii", volume((8, 8, 1)))
    _nifti_with_nan(tmp_path / "masks" / "m.nii", slices=1)
    with pytest.raises(DataError) as exc:
        load_segfolder("train", tmp_path, size=8, **ALL_TRAIN)
    assert "mask" in one_line(exc) and "m.nii has 1 non-finite" in one_line(exc)


def test_reading_plain_images_does_not_import_pydicom_or_nibabel():
    code = ("import sys, medrobust.data.folder, medrobust.data.segfolder, medrobust.data.landmarks;"
            "print(sorted(m for m in ('pydicom', 'nibabel') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stderr
