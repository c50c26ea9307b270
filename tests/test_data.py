"""Dataset loaders: synthetic, folder, MedMNIST, BCCD, download helpers, and the real-data tier."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medrobust.data import load_dataset, medmnist
from medrobust.data.bccd import BccdBox, bccd_boxes, crop_window, load_bccd
from medrobust.data.download import download, file_md5, verify_md5
from medrobust.data.folder import load_folder, stratified_split
from medrobust.data.medmnist import MEDMNIST_FLAGS, load_medmnist, medmnist_url
from medrobust.data.synthetic import load_synthetic
from medrobust.errors import DataError, MedrobustError

SPLITS = ("train", "val", "test")


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text, text
    return text


# --------------------------------------------------------------------------- imports


def test_importing_data_does_not_load_pillow():
    # A fresh interpreter: this test module itself imports PIL. Pillow is only needed once an
    # image file is read, so the package (and every command that imports it) starts faster.
    code = "import sys, medrobust.data; print('PIL' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr


# --------------------------------------------------------------------------- synthetic


def test_synthetic_shapes_dtype_and_balance():
    ds = load_synthetic("train", n=201, size=32, seed=3)
    assert ds.images.shape == (201, 32, 32, 3) and ds.images.dtype == np.uint8
    assert ds.labels.dtype == np.int64 and set(np.unique(ds.labels)) == {0, 1}
    assert ds.class_names == ("normal", "mitosis")
    assert ds.class_counts() == {"normal": 101, "mitosis": 100}
    assert 0 < ds.labels[:100].sum() < 100  # shuffled, not sorted by class
    assert ds.spec == {"dataset": "synthetic", "size": 32, "n": 201, "seed": 3}


def test_synthetic_default_sizes_via_registry():
    assert len(load_dataset("synthetic", "val")) == 400
    assert len(load_dataset("synthetic", "test", size=24)) == 400
    assert load_dataset("synthetic", "test", size=24).size == (24, 24)


def test_synthetic_determinism():
    a = load_synthetic("train", n=64, seed=7)
    b = load_synthetic("train", n=64, seed=7)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert not np.array_equal(a.images, load_synthetic("train", n=64, seed=8).images)
    assert not np.array_equal(a.images, load_synthetic("val", n=64, seed=7).images)


def test_synthetic_speed():
    load_synthetic("val", n=8)  # imports and first-call overheads
    # CPU time of this process: other jobs on a shared machine stretch wall time, not this
    start = time.process_time()
    ds = load_synthetic("train", size=32)
    elapsed = time.process_time() - start
    assert len(ds) == 2000
    assert elapsed < 2.0, f"2000 synthetic 32x32 patches took {elapsed:.2f} s of CPU"


def _best_threshold_accuracy(feature: np.ndarray, labels: np.ndarray) -> float:
    """Accuracy of the best single threshold on ``feature`` (either direction)."""
    order = np.argsort(feature, kind="stable")
    y = labels[order]
    n, pos = len(y), y.sum()
    ones_below = np.concatenate([[0], np.cumsum(y)])
    k = np.arange(n + 1)
    acc = ((k - ones_below) + (pos - ones_below)) / n  # below -> 0, above -> 1
    return float(max(acc.max(), 1.0 - acc.min()))


def test_synthetic_cue_is_local_not_global_colour():
    ds = load_synthetic("train", n=1000, size=32, seed=0)
    x = ds.images.astype(np.float64)
    y = ds.labels
    centre = x[:, 10:22, 10:22].sum(axis=-1).min(axis=(1, 2))  # darkest central pixel
    assert centre[y == 1].mean() < centre[y == 0].mean() - 100
    centre_acc = _best_threshold_accuracy(-centre, y)
    mean_acc = _best_threshold_accuracy(x.mean(axis=(1, 2, 3)), y)
    rgb = np.c_[x.mean(axis=(1, 2)), np.ones(len(x))]
    w = np.linalg.lstsq(rgb, 2.0 * y - 1.0, rcond=None)[0]
    rgb_acc = float(((rgb @ w > 0) == y).mean())
    print(f"threshold accuracy: centre min {centre_acc:.3f}, whole-image mean {mean_acc:.3f}; "
          f"linear on mean RGB {rgb_acc:.3f}")
    assert centre_acc >= 0.95  # a simple local feature separates the classes
    assert mean_acc <= 0.7  # whole-image brightness alone does not
    assert rgb_acc <= 0.85  # nor does a linear rule on the mean colour


def test_synthetic_rejects_bad_split():
    with pytest.raises(DataError):
        load_synthetic("training")


# --------------------------------------------------------------------------- folder


def _value(i: int) -> int:
    return 20 + 11 * i


def _make_tree(root: Path, counts: dict[str, int], colour: bool = True) -> None:
    """Class folders of uniform images whose red channel encodes a global id."""
    i = 0
    for name, count in counts.items():
        (root / name).mkdir(parents=True)
        for _ in range(count):
            v = _value(i)
            size = (20 + i, 30 + 2 * i)
            kind = i % 3 if colour else 0
            if kind == 0:
                Image.new("L", size, v).save(root / name / f"img{i:02d}.png")
            elif kind == 1:
                Image.new("RGB", size, (v, 0, 255 - v)).save(root / name / f"img{i:02d}.PNG")
            else:
                Image.new("L", size, v).save(root / name / f"img{i:02d}.JPG", quality=95)
            i += 1


def _ids(ds) -> set[int]:
    red = ds.images[:, ds.size[0] // 2, ds.size[1] // 2, 0].astype(float)
    return set(np.rint((red - 20) / 11).astype(int).tolist())


def test_folder_seeded_split(tmp_path):
    _make_tree(tmp_path, {"benign": 10, "malignant": 7})
    parts = {s: load_folder(s, tmp_path, size=16) for s in SPLITS}
    for ds in parts.values():
        assert ds.images.dtype == np.uint8 and ds.images.shape[1:] == (16, 16, 3)
        assert ds.class_names == ("benign", "malignant")
        assert ds.labels.dtype == np.int64
    assert {s: len(d) for s, d in parts.items()} == {"train": 11, "val": 3, "test": 3}
    ids = {s: _ids(d) for s, d in parts.items()}
    assert sum(len(v) for v in ids.values()) == 17  # distinct images
    assert set().union(*ids.values()) == set(range(17))  # covering
    assert not ids["train"] & ids["val"] and not ids["train"] & ids["test"]
    assert not ids["val"] & ids["test"]
    for ds in parts.values():  # stratified: every class in every split
        assert set(ds.labels.tolist()) == {0, 1}
    again = load_folder("val", tmp_path, size=16)
    np.testing.assert_array_equal(again.images, parts["val"].images)
    other = {s: _ids(load_folder(s, tmp_path, size=16, seed=1)) for s in ("val", "test")}
    assert other != {"val": ids["val"], "test": ids["test"]}


def test_folder_labels_match_class_folders(tmp_path):
    _make_tree(tmp_path, {"benign": 10, "malignant": 7})
    ds = load_dataset("folder", "train", data_dir=tmp_path, size=8)
    ids = np.rint((ds.images[:, 4, 4, 0].astype(float) - 20) / 11).astype(int)
    np.testing.assert_array_equal(ds.labels, (ids >= 10).astype(np.int64))  # ids 0-9 benign


def test_folder_channels(tmp_path):
    _make_tree(tmp_path / "grey", {"a": 4, "b": 4}, colour=False)
    grey = load_folder("train", tmp_path / "grey", size=12)
    assert grey.channels == 1 and grey.spec["channels"] == 1
    assert load_folder("train", tmp_path / "grey", size=12, channels=3).channels == 3
    _make_tree(tmp_path / "mixed", {"a": 4, "b": 4})
    assert load_folder("test", tmp_path / "mixed", size=12).channels == 3
    assert load_folder("test", tmp_path / "mixed", size=12, channels=1).channels == 1
    with pytest.raises(MedrobustError):
        load_folder("train", tmp_path / "grey", channels=2)


def test_folder_split_folders(tmp_path):
    _make_tree(tmp_path / "train", {"cat": 3, "dog": 2})
    _make_tree(tmp_path / "test", {"cat": 1, "dog": 1, "eel": 1})
    train = load_folder("train", tmp_path, size=8)
    test = load_folder("test", tmp_path, size=8)
    assert train.class_names == test.class_names == ("cat", "dog", "eel")
    assert len(train) == 5 and len(test) == 3
    assert test.labels.tolist() == [0, 1, 2]
    with pytest.raises(DataError, match="val"):
        load_folder("val", tmp_path, size=8)


def test_folder_errors(tmp_path):
    with pytest.raises(DataError) as exc:
        load_folder("train", tmp_path)
    assert str(tmp_path) in one_line(exc)
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(DataError):
        load_folder("train", tmp_path)
    with pytest.raises(DataError):
        load_folder("train", tmp_path / "nope")


def test_stratified_split_disjoint_and_covering():
    for n in (1, 2, 3, 10, 101):
        (part,) = stratified_split([n], 0.15, 0.15, seed=4)
        joined = np.concatenate([part["train"], part["val"], part["test"]])
        assert sorted(joined.tolist()) == list(range(n))
        assert len(part["train"]) >= 1


# --------------------------------------------------------------------------- download / md5


def test_verify_md5(tmp_path):
    path = tmp_path / "blob.bin"
    path.write_bytes(b"medrobust" * 1000)
    right = hashlib.md5(path.read_bytes()).hexdigest()
    assert file_md5(path) == right
    assert verify_md5(path, right) == right
    assert verify_md5(path, [right.upper(), "0" * 32]) == right
    with pytest.raises(DataError) as exc:
        verify_md5(path, "0" * 32)
    msg = one_line(exc)
    assert "blob.bin" in msg and "0" * 32 in msg and right in msg


def test_download_file_url(tmp_path):
    src = tmp_path / "src.npz"
    src.write_bytes(b"x" * 5000)
    good = hashlib.md5(src.read_bytes()).hexdigest()
    dest = tmp_path / "out" / "file.npz"
    assert download(src.as_uri(), dest, good) == dest
    assert dest.read_bytes() == src.read_bytes()
    bad_dest = tmp_path / "out" / "bad.npz"
    with pytest.raises(DataError) as exc:
        download(src.as_uri(), bad_dest, "f" * 32)
    assert "MD5" in one_line(exc)
    assert not bad_dest.exists()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["file.npz"]  # no leftovers
    with pytest.raises(DataError):
        download((tmp_path / "missing.npz").as_uri(), tmp_path / "m.npz")


# --------------------------------------------------------------------------- medmnist


def _fake_npz(path: Path, n=(6, 3, 4), shape=(28, 28), label_cols=1, classes=2) -> None:
    rng = np.random.default_rng(0)
    arrays = {}
    for split, count in zip(SPLITS, n, strict=True):
        arrays[f"{split}_images"] = rng.integers(0, 256, (count, *shape), dtype=np.uint8)
        arrays[f"{split}_labels"] = rng.integers(0, classes, (count, label_cols), dtype=np.uint8)
    np.savez(path, **arrays)


def test_medmnist_loads_fake_file_without_verify(tmp_path):
    _fake_npz(tmp_path / "pneumoniamnist.npz")
    ds = load_medmnist("train", tmp_path, verify=False)
    assert ds.images.shape == (6, 28, 28, 1) and ds.images.dtype == np.uint8
    assert ds.labels.shape == (6,) and ds.labels.dtype == np.int64
    assert ds.class_names == ("normal", "pneumonia") and ds.name == "pneumoniamnist"
    raw = np.load(tmp_path / "pneumoniamnist.npz")
    np.testing.assert_array_equal(ds.images[..., 0], raw["train_images"])
    np.testing.assert_array_equal(ds.labels, raw["train_labels"][:, 0])
    assert ds.spec["dataset"] == "medmnist" and ds.spec["flag"] == "pneumoniamnist"
    assert ds.spec["size"] == 28 and ds.spec["data_dir"] == str(tmp_path)
    test = load_dataset("pneumoniamnist", "test", data_dir=tmp_path, verify=False)
    assert len(test) == 4 and test.spec["flag"] == "pneumoniamnist"


def test_medmnist_rgb_and_size(tmp_path):
    _fake_npz(tmp_path / "bloodmnist_64.npz", shape=(64, 64, 3), classes=8)
    ds = load_dataset("medmnist", "val", data_dir=tmp_path, flag="bloodmnist", size=64,
                      verify=False)
    assert ds.images.shape == (3, 64, 64, 3)
    assert ds.num_classes == 8 and ds.spec["size"] == 64


def test_medmnist_chest_is_any_finding(tmp_path):
    _fake_npz(tmp_path / "chestmnist.npz", label_cols=14)
    ds = load_medmnist("train", tmp_path, flag="chestmnist", verify=False)
    raw = np.load(tmp_path / "chestmnist.npz")["train_labels"]
    assert ds.class_names == ("no finding", "finding")
    np.testing.assert_array_equal(ds.labels, raw.any(axis=1).astype(np.int64))
    assert "any" in ds.spec["task"]


def test_medmnist_wrong_checksum(tmp_path):
    _fake_npz(tmp_path / "pneumoniamnist.npz")
    with pytest.raises(DataError) as exc:
        load_medmnist("train", tmp_path)
    msg = one_line(exc)
    assert "MD5" in msg and "verify=False" in msg
    assert MEDMNIST_FLAGS["pneumoniamnist"].md5[28] in msg


def test_medmnist_missing_without_download(tmp_path):
    with pytest.raises(DataError) as exc:
        load_medmnist("train", tmp_path, flag="dermamnist", size=128, download=False)
    msg = one_line(exc)
    assert "dermamnist_128.npz" in msg and str(tmp_path) in msg
    assert medmnist_url("dermamnist", 128) in msg


def test_medmnist_offline_download(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(DataError) as exc:
        load_medmnist("train", tmp_path / "cache")
    msg = one_line(exc)
    assert "pneumoniamnist.npz" in msg and str(tmp_path / "cache") in msg
    assert "name resolution" in msg and medmnist_url("pneumoniamnist") in msg
    assert not list((tmp_path / "cache").glob("*"))  # no partial file left


def test_medmnist_download_path(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    _fake_npz(mirror / "pneumoniamnist.npz")
    monkeypatch.setattr(medmnist, "ZENODO_URL", mirror.as_uri() + "/{filename}")
    with pytest.raises(DataError) as exc:  # the fake file fails the official MD5
        load_medmnist("train", tmp_path / "a")
    assert "MD5" in one_line(exc) and not list((tmp_path / "a").glob("*"))
    ds = load_medmnist("val", tmp_path / "b", verify=False)
    assert len(ds) == 3 and (tmp_path / "b" / "pneumoniamnist.npz").is_file()


def test_medmnist_corrupt_file(tmp_path):
    (tmp_path / "pneumoniamnist.npz").write_bytes(b"not a zip file at all")
    with pytest.raises(DataError) as exc:
        load_medmnist("train", tmp_path, verify=False)
    assert "pneumoniamnist.npz" in one_line(exc)


def test_medmnist_bad_options(tmp_path):
    with pytest.raises(DataError) as exc:
        load_medmnist("train", tmp_path, flag="mnist")
    assert "pathmnist" in one_line(exc) and "organsmnist" in str(exc.value)
    with pytest.raises(DataError):
        load_medmnist("train", tmp_path, size=32)


def test_medmnist_flags_complete():
    assert len(MEDMNIST_FLAGS) == 12
    for flag, info in MEDMNIST_FLAGS.items():
        assert info.n_channels in (1, 3) and len(info.class_names) >= 2, flag
        for size in (28, 64, 128, 224):
            md5 = info.md5[size]
            assert md5 is None or (len(md5) == 32 and int(md5, 16) >= 0), (flag, size)


# --------------------------------------------------------------------------- bccd

_BOXES = {
    # image id -> [(name as written in the XML, xmin, ymin, xmax, ymax)]
    "img_a": [("RBC", 30, 30, 50, 46), (" WBC \n", 0, 0, 12, 10), ("Platelets", 70, 60, 78, 68)],
    "img_b": [("RBC", 100, 80, 120, 100), ("Other", 5, 5, 20, 20), ("RBC", 50, 50, 50, 50)],
    "img_c": [("WBC", 40, 20, 90, 70)],
    "img_noimg": [("RBC", 10, 10, 30, 30)],
}
_SPLIT_FILES = {"train": "img_b\nimg_a\nghost\n", "val": "img_c\n", "test": "img_noimg\n"}
_W, _H = 120, 100


def _voc_xml(boxes) -> str:
    objects = "".join(
        f"<object><name>{name}</name><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>"
        f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
        for name, x0, y0, x1, y1 in boxes)
    return (f"<annotation><size><width>{_W}</width><height>{_H}</height><depth>3</depth></size>"
            f"{objects}</annotation>")


@pytest.fixture
def fake_bccd(tmp_path) -> Path:
    root = tmp_path / "bccd"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True)
    for image_id, boxes in _BOXES.items():
        (root / "Annotations" / f"{image_id}.xml").write_text(_voc_xml(boxes))
        if image_id == "img_noimg":
            continue
        img = Image.new("RGB", (_W, _H), (230, 220, 210))
        for _, x0, y0, x1, y1 in boxes:
            img.paste((200, 20, 20), (x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)))
        img.save(root / "JPEGImages" / f"{image_id}.jpg", quality=95)
    for split, text in _SPLIT_FILES.items():
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text(text)
    return root


def test_bccd_box_list(fake_bccd):
    boxes = bccd_boxes(fake_bccd.parent, "train")
    assert list(boxes) == ["img_a", "img_b"]  # sorted; "ghost" has no files
    assert boxes["img_a"][1] == BccdBox("img_a", "WBC", 0.0, 0.0, 12.0, 10.0)
    assert [b.name for b in boxes["img_b"]] == ["RBC", "Other"]  # zero-area box dropped
    assert bccd_boxes(fake_bccd, "test") == {}  # annotation without JPEG is skipped


def test_bccd_crops(fake_bccd):
    train = load_bccd("train", fake_bccd.parent, size=16)
    assert train.images.shape == (4, 16, 16, 3) and train.images.dtype == np.uint8
    assert train.labels.tolist() == [0, 1, 2, 0]  # img_a boxes in order, then img_b's RBC
    assert train.class_names == ("RBC", "WBC", "Platelets")
    # Box crops are centred on the (red) cell: the centre pixel is red.
    centre = train.images[:, 8, 8].astype(int)
    assert (centre[:, 0] > 150).all() and (centre[:, 1] < 90).all()
    same = load_bccd("train", fake_bccd, size=16)  # the bccd folder itself works too
    np.testing.assert_array_equal(same.images, train.images)
    val = load_dataset("bccd", "val", data_dir=fake_bccd.parent, size=16)
    assert val.labels.tolist() == [1] and val.spec["dataset"] == "bccd"
    only = load_bccd("train", fake_bccd, size=16, classes=("WBC",))
    assert only.labels.tolist() == [0]


def test_bccd_fixed_crops_and_border(fake_bccd):
    fixed = load_bccd("train", fake_bccd, size=24, crop="fixed")
    assert fixed.images.shape == (4, 24, 24, 3)
    centre = fixed.images[0, 12, 12].astype(int)  # RBC at (40, 38): unshifted, red at centre
    assert centre[0] > 150 and centre[1] < 90
    border = BccdBox("x", "WBC", 0, 0, 12, 10)
    for crop in ("box", "fixed"):
        left, top, right, bottom = crop_window(border, _W, _H, crop, 24, 0.15)
        assert left >= 0 and top >= 0 and right <= _W and bottom <= _H
        assert right - left == pytest.approx(13.8 if crop == "box" else 24)
    corner = BccdBox("x", "RBC", 110, 90, 120, 100)
    left, top, right, bottom = crop_window(corner, _W, _H, "fixed", 24, 0.15)
    assert (left, top, right, bottom) == (96, 76, 120, 100)


def test_bccd_errors(fake_bccd, tmp_path):
    with pytest.raises(DataError) as exc:
        load_bccd("train", tmp_path / "elsewhere")
    assert "elsewhere" in one_line(exc)
    with pytest.raises(DataError):
        load_bccd("train", fake_bccd, crop="tight")
    with pytest.raises(DataError):
        load_bccd("test", fake_bccd)  # its only image has no JPEG


# --------------------------------------------------------------------------- real data


@pytest.mark.realdata
@pytest.mark.parametrize("split,n", [("train", 4708), ("val", 524), ("test", 624)])
def test_real_pneumoniamnist(shared_data, split, n):
    ds = load_dataset("pneumoniamnist", split, data_dir=shared_data)  # verify=True by default
    assert len(ds) == n and ds.images.shape[1:] == (28, 28, 1)
    assert ds.class_names == ("normal", "pneumonia") and ds.labels.dtype == np.int64
    if split == "train":
        assert ds.class_counts()["normal"] == 1214


@pytest.mark.realdata
def test_real_bccd(shared_data):
    expected_ids = {"train": 205, "val": 87, "test": 72}
    crops = {"train": 2804, "val": 1137, "test": 945}
    for split in SPLITS:
        assert len(bccd_boxes(shared_data, split)) == expected_ids[split]
        ds = load_dataset("bccd", split, data_dir=shared_data)
        assert ds.images.shape[1:] == (64, 64, 3) and ds.num_classes == 3
        assert len(ds) == crops[split]
        if split == "train":
            assert min(ds.class_counts().values()) > 100
