"""Bad image files, VOC folders and store files give one ``error:`` line, exit 2 and touch nothing.

Each row of ``CASES`` builds its bad input under ``tmp_path`` (tiny synthetic folders and SQLite
files) and names the command and a substring the one line must hold. Every file under
``tmp_path`` must keep its bytes (md5), so no store, run, checkpoint or partial file appears and
no given file (a store included) is modified. Unusable VOC boxes are not an error: they are
dropped, counted in the dataset spec and told in one warning (tested below the table).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import struct
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from cli_util import assert_one_error_line, run_cli
from PIL import Image
from test_detection import _voc
from test_landmarks import make_folder as landmark_folder
from test_segmentation import make_folder as seg_folder

from medrobust.data.base import DataWarning
from medrobust.data.voc import load_voc_detection
from medrobust.errors import DataError
from medrobust.models import Classifier, build_model, save_checkpoint, save_model
from medrobust.models.detector import Detector
from medrobust.store import Store, StoreError

pytestmark = pytest.mark.usefixtures("one_thread_module")

BOMB = "is 15000x15000 pixels, over Pillow's decompression-bomb limit"
FOREIGN = "is a SQLite database of another program, not a medrobust store (tables: {})"


# --------------------------------------------------------------------------- builders


@cache
def _bomb_bytes(side: int = 15000) -> bytes:
    """A valid 1-bit PNG of side x side (27 kB): over Pillow's limit, cheap to write."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    row = b"\0" * (1 + (side + 7) // 8)
    comp = zlib.compressobj(9)
    body = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body)
            + chunk(b"IEND", b""))


def _bomb(path: Path) -> None:
    path.write_bytes(_bomb_bytes())


def _nan_tiff(path: Path, shape: tuple[int, int], nan: int = 1) -> None:
    """A float32 TIFF with ``nan`` NaN pixels (the rest a ramp, so scaling is well defined)."""
    a = np.linspace(0, 1, shape[0] * shape[1], dtype=np.float32).reshape(shape)
    a.flat[:nan] = np.nan
    Image.fromarray(a, mode="F").save(path)


def _landmarks(t: Path, edit: Callable[[Path], None]) -> Path:
    root = t / "lm"
    landmark_folder(root, n=8, h=24, w=20)
    edit(root)
    return root


def _lm_bomb(root: Path) -> None:
    _bomb(root / "images" / "003.png")


def _lm_nan(root: Path) -> None:
    (root / "images" / "003.png").unlink()
    _nan_tiff(root / "images" / "003.tif", (24, 20), nan=3)


def _segfolder(t: Path, edit: Callable[[Path], None]) -> Path:
    root = seg_folder(t / "seg", 6, [(20, 20)], colour=False)
    edit(root)
    return root


def _seg_nan_image(root: Path) -> None:
    (root / "images" / "img002.png").unlink()
    _nan_tiff(root / "images" / "img002.tif", (20, 20))


def _seg_nan_mask(root: Path) -> None:
    (root / "masks" / "img002.png").unlink()
    _nan_tiff(root / "masks" / "img002.tif", (20, 20), nan=2)


BOXES = {f"i{k}": [("RBC", 4 + k, 4, 20 + k, 18, 0), ("WBC", 30, 20, 56, 44, 0)]
         for k in range(6)}
SPLITS = {"train": ["i0", "i1", "i2", "i3"], "val": ["i4"], "test": ["i5"]}


def _voc_dir(t: Path, boxes: dict | None = None, splits: dict | None = SPLITS,
             edit: Callable[[Path], None] | None = None) -> Path:
    root = _voc(t / "voc", BOXES if boxes is None else boxes, splits)
    if edit is not None:
        edit(root)
    return root


def _landmark_model(t: Path) -> Path:
    """An untrained landmark checkpoint on a clean landmark folder (loading is under test)."""
    from medrobust.data import load_dataset
    from medrobust.models.landmark_unet import LandmarkModel

    root = t / "clean"
    landmark_folder(root, n=8, h=24, w=20)
    spec = load_dataset("landmarks", "test", data_dir=root, size=(24, 20)).spec
    model = LandmarkModel(build_model("landmark_unet", 1, 3, width=2), [0.4], [0.2], 3, 4.0)
    return save_model(model, t / "m_lm", {"model": "landmark_unet", "model_kwargs": {"width": 2},
                                          "dataset": spec})


def _detector(t: Path, classes: tuple[str, ...] = ("RBC", "WBC")) -> Path:
    """An untrained detector whose dataset spec names ``classes`` on a clean VOC folder."""
    root = _voc(t / "clean_voc", BOXES, SPLITS)
    spec = load_voc_detection(root, "test", size=16, classes=classes).spec
    spec["dataset"] = "voc"
    det = Detector(build_model("centernet", 3, len(classes), width=2), mean=[0.5] * 3,
                   std=[0.25] * 3, class_names=classes)
    return save_model(det, t / "m_det", {"model": "centernet", "model_kwargs": {"width": 2},
                                          "dataset": spec})


def _classifier(t: Path) -> Path:
    net = build_model("smallcnn", 3, 2, width=4)
    clf = Classifier(net, mean=[0.5] * 3, std=[0.25] * 3, class_names=("normal", "mitosis"))
    return save_checkpoint(clf, t / "m", {"model": "smallcnn", "model_kwargs": {"width": 4},
                                          "dataset": {"dataset": "synthetic", "size": 16,
                                                      "n": 8, "seed": 0}})


def _sqlite(path: Path, *sql: str) -> Path:
    conn = sqlite3.connect(path)
    for statement in sql:
        conn.execute(statement)
    conn.commit()
    conn.close()
    return path


def _store(path: Path) -> Path:
    """A medrobust store holding one finished run."""
    with Store(path) as store:
        run_id, _ = store.start_run("campaign", {"n": 1})
        store.finish_run(run_id)
    return path


# --------------------------------------------------------------------------- commands


def _train_lm(d: Path) -> list[str]:
    return ["train", "--task", "landmarks", "--dataset", "landmarks", "--data-dir", str(d),
            "--size", "16", "--epochs", "1", "--width", "2", "--out", "out", "--store", "s.db"]


def _train_det(d: Path, dataset: str = "voc") -> list[str]:
    return ["train", "--task", "detection", "--dataset", dataset, "--data-dir", str(d),
            "--size", "16", "--epochs", "1", "--width", "2", "--out", "out", "--store", "s.db"]


def _train_seg(d: Path) -> list[str]:
    return ["train", "--task", "segmentation", "--dataset", "segfolder", "--data-dir", str(d),
            "--size", "16", "--epochs", "1", "--out", "out", "--store", "s.db"]


def _train_folder(d: Path) -> list[str]:
    return ["train", "--dataset", "folder", "--data-dir", str(d), "--size", "16", "--epochs", "1",
            "--width", "4", "--out", "out", "--store", "s.db"]


def _pgd_lm(t: Path, data: Path) -> list[str]:
    return ["attack", "pgd", "--model", str(_landmark_model(t)), "--dataset", "landmarks",
            "--data-dir", str(data), "--split", "test", "--eps", "2", "--norm", "l2",
            "--steps", "1", "--limit", "1", "--store", "s.db"]


def _evaluate_pgd(t: Path, store: str) -> list[str]:
    return ["evaluate", "--model", str(_classifier(t)), "--dataset", "synthetic", "--size", "16",
            "--attack", "pgd", "--l2", "1", "--steps", "1", "--limit", "2", "--store", store]


def _folder_bomb(t: Path) -> Path:
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (t / "data" / c).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), np.uint8)).save(
                t / "data" / c / f"{i}.png")
    _bomb(t / "data" / "b" / "big.png")
    return t / "data"


def _no_objects(root: Path) -> None:
    for xml in (root / "Annotations").glob("*.xml"):
        xml.write_text("<annotation><size><width>64</width><height>48</height></size>"
                       "</annotation>")


def _unlink_split(name: str) -> Callable[[Path], None]:
    return lambda root: (root / "ImageSets" / "Main" / name).unlink()


def _unknown_class(t: Path) -> list[str]:
    boxes = dict(BOXES, i5=[("RBC", 4, 4, 20, 18, 0), ("Platelets", 30, 20, 40, 30, 0)])
    data = _voc_dir(t, boxes)
    return ["evaluate", "--model", str(_detector(t)), "--dataset", "voc", "--data-dir",
            str(data), "--store", "s.db"]


def _wal_blocked(t: Path) -> list[str]:
    db = _store(t / "s.db")
    Path(f"{db}-wal").mkdir()  # SQLite cannot create its log there, root or not
    return ["store", "runs", "--store", str(db)]


# --------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class Case:
    id: str
    build: Callable[[Path], list[str]]  # makes the bad input under tmp_path, returns argv
    needle: str


def _foreign(sql: str, journal_wal: bool = False) -> Callable[[Path], Path]:
    def build(t: Path) -> Path:
        statements = (["PRAGMA journal_mode=WAL"] if journal_wal else []) + [sql]
        return _sqlite(t / "other.db", *statements)

    return build


_FOO = _foreign("CREATE TABLE foo (a INTEGER)")
_RUNS = _foreign("CREATE TABLE runs (id INTEGER PRIMARY KEY, what TEXT)")
_FOO_WAL = _foreign("CREATE TABLE foo (a INTEGER)", journal_wal=True)

CASES: list[Case] = [
    # --- 1: decompression bombs, in every folder loader
    Case("bomb-landmarks-train", lambda t: _train_lm(_landmarks(t, _lm_bomb)), BOMB),
    Case("bomb-landmarks-pgd", lambda t: _pgd_lm(t, _landmarks(t, _lm_bomb)), BOMB),
    Case("bomb-voc", lambda t: _train_det(_voc_dir(t, edit=lambda r: _bomb(
        r / "JPEGImages" / "i1.png"))), BOMB),
    Case("bomb-bccd-detection", lambda t: _train_det(_voc_dir(t, edit=lambda r: _bomb(
        r / "JPEGImages" / "i1.png")), "bccd-detection"), BOMB),
    Case("bomb-segfolder-image", lambda t: _train_seg(_segfolder(
        t, lambda r: _bomb(r / "images" / "img001.png"))), BOMB),
    Case("bomb-segfolder-mask", lambda t: _train_seg(_segfolder(
        t, lambda r: _bomb(r / "masks" / "img001.png"))), "img001.png " + BOMB),
    Case("bomb-class-folder", lambda t: _train_folder(_folder_bomb(t)), BOMB),
    # --- 6: a float TIFF with NaN pixels
    Case("nan-tiff-landmarks", lambda t: _train_lm(_landmarks(t, _lm_nan)),
         "003.tif has 3 non-finite pixel value(s) (NaN or infinity) of 480"),
    Case("nan-tiff-segfolder-image", lambda t: _train_seg(_segfolder(t, _seg_nan_image)),
         "img002.tif has 1 non-finite pixel value(s) (NaN or infinity) of 400"),
    Case("nan-tiff-segfolder-mask", lambda t: _train_seg(_segfolder(t, _seg_nan_mask)),
         "img002.tif has 2 non-finite pixel value(s)"),
    # --- 4: a folder without a single box, voc and bccd-detection alike
    Case("no-objects-voc", lambda t: _train_det(_voc_dir(t, edit=_no_objects)),
         "no annotated objects in"),
    Case("no-objects-bccd-detection", lambda t: _train_det(_voc_dir(t, edit=_no_objects),
                                                           "bccd-detection"),
         "no annotated objects in"),
    Case("no-objects-in-the-test-split", lambda t: _train_det(_voc_dir(
        t, dict(BOXES, i5=[("RBC", 30, 5, 20, 18, 0)]))),
         "the test split of"),
    # --- 5: VOC split files
    Case("voc-train-test-overlap", lambda t: _train_det(_voc_dir(
        t, splits=dict(SPLITS, test=["i5", "i2"]))),
         "1 image(s) are listed in both"),
    Case("voc-train-val-overlap", lambda t: _train_det(_voc_dir(
        t, splits=dict(SPLITS, val=["i0", "i1", "i4"]))), "val.txt (i0, i1): val images"),
    Case("voc-no-test-txt", lambda t: _train_det(_voc_dir(t, edit=_unlink_split("test.txt"))),
         "has train.txt, val.txt but no test.txt: give all three split files"),
    Case("voc-only-train-txt", lambda t: _train_det(_voc_dir(
        t, edit=lambda r: [_unlink_split(n)(r) for n in ("val.txt", "test.txt")])),
         "has train.txt but no val.txt or test.txt"),
    # --- 7: an object of a class the model does not know: say what a CLI user can do
    Case("voc-unknown-class", _unknown_class,
         "unknown class 'Platelets' (classes: RBC, WBC); add it to --classes, or remove or "
         "rename those objects (from Python, unknown='skip' drops them)"),
    # --- 2: store files that are not medrobust stores, and stores SQLite cannot write
    Case("store-foreign-evaluate-pgd", lambda t: _evaluate_pgd(t, str(_FOO(t))),
         FOREIGN.format("foo")),
    Case("store-foreign-wal-evaluate-pgd", lambda t: _evaluate_pgd(t, str(_FOO_WAL(t))),
         FOREIGN.format("foo")),
    Case("store-foreign-train", lambda t: [*_train_lm(_landmarks(t, lambda r: None))[:-1],
                                           str(_FOO(t))], FOREIGN.format("foo")),
    Case("store-foreign-report", lambda t: ["report", "--store", str(_FOO(t)), "--out", "rep"],
         FOREIGN.format("foo")),
    Case("store-foreign-runs", lambda t: ["store", "runs", "--store", str(_FOO(t))],
         FOREIGN.format("foo")),
    Case("store-foreign-export", lambda t: ["store", "export", "--store", str(_FOO(t)), "--out",
                                            "x.csv"], FOREIGN.format("foo")),
    Case("store-own-runs-table-report", lambda t: ["report", "--store", str(_RUNS(t)), "--out",
                                                   "rep"], FOREIGN.format("runs")),
    Case("store-own-runs-table-runs", lambda t: ["store", "runs", "--store", str(_RUNS(t))],
         FOREIGN.format("runs")),
    Case("store-own-runs-table-export", lambda t: ["store", "export", "--store", str(_RUNS(t)),
                                                   "--out", "x.csv"], FOREIGN.format("runs")),
    Case("store-wal-path-blocked", _wal_blocked,
         "-wal, where SQLite keeps the store's write-ahead log, is a folder"),
]


def _snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root`` with the md5 of its bytes ('dir' for folders)."""
    return {str(p.relative_to(root)): "dir" if p.is_dir() else hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_data_or_store_gives_one_error_line_and_touches_nothing(case, tmp_path, capsys,
                                                                     monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(tmp_path)
    argv = case.build(work)
    before = _snapshot(tmp_path)
    code, _out, err = run_cli(capsys, *argv)
    line = assert_one_error_line(code, err, case.needle)
    assert _snapshot(tmp_path) == before  # no store, run, checkpoint or half-written file
    if case.id.startswith("voc-unknown"):  # the Python-only option is offered only as such
        assert line.count("unknown='skip'") == 1


# --------------------------------------------------------------------------- 3: unusable boxes


DEGENERATE = dict(
    BOXES,
    i0=[*BOXES["i0"], ("RBC", 30, 10, 20, 18, 0)],  # xmin > xmax
    i1=[*BOXES["i1"], ("RBC", 5, 5, 5, 18, 0), ("WBC", 60, 40, 70, 60, 0)],  # zero area; overhang
    i2=[("WBC", 70, 5, 90, 20, 0)],  # wholly outside the 64x48 image: i2 keeps no box
)
DROPPED = {"total": 3, "inverted": 1, "zero_area": 1, "outside": 1, "files": 3,
           "images_left_without_boxes": 1}
WARNING = ("dropped 3 boxes (xmin > xmax or ymin > ymax: 1, zero area: 1, outside the image: 1) "
           "in 3 files of {root} (train split); 1 image(s) lost all their boxes and load as "
           "negatives")


def test_unusable_boxes_are_counted_recorded_and_warned(tmp_path):
    root = _voc(tmp_path / "voc", DEGENERATE, SPLITS)
    with pytest.warns(DataWarning) as caught:
        ds = load_voc_detection(root, "train", size=32)
    assert [str(w.message) for w in caught] == [WARNING.format(root=root)]
    assert ds.dropped_boxes == 3 and ds.spec["dropped_boxes"] == DROPPED
    assert [len(b) for b in ds.boxes] == [2, 3, 0, 2]  # the overhanging box is clipped, kept
    np.testing.assert_allclose(ds.boxes[1][2], [60 / 2, 40 / 1.5, 64 / 2, 48 / 1.5])
    assert ds.describe()["spec"]["dropped_boxes"] == DROPPED
    clean = load_voc_detection(root, "val", size=32)  # no drops: no warning, the spec as before
    assert "dropped_boxes" not in clean.spec and clean.dropped_boxes == 0


def test_unusable_boxes_reach_the_json_the_store_and_one_warning_line(tmp_path, capsys,
                                                                       monkeypatch):
    from medrobust.cli.main import main

    root = _voc(tmp_path / "voc", DEGENERATE, SPLITS)
    argv = [*_train_det(root)[:-4], "--out", str(tmp_path / "m"), "--store",
            str(tmp_path / "s.db"), "--json"]
    monkeypatch.setattr(sys, "argv", ["medrobust", *argv])  # a real command line: its warnings
    assert main() == 0
    out, err = capsys.readouterr()
    assert err.splitlines() == ["warning: " + WARNING.format(root=root)]
    summary = json.loads(out)
    assert summary["dataset"]["dropped_boxes"] == DROPPED
    with Store(tmp_path / "s.db") as store:
        assert store.get_run(summary["run_id"])["dataset"]["dropped_boxes"] == DROPPED
    meta = json.loads((tmp_path / "m" / "meta.json").read_text())
    assert meta["dataset"]["dropped_boxes"] == DROPPED


def test_bccd_crops_count_unusable_boxes(tmp_path):
    from medrobust.data.bccd import load_bccd

    root = _voc(tmp_path / "bccd", DEGENERATE, SPLITS)
    with pytest.warns(DataWarning, match=r"dropped 3 boxes \(xmin > xmax or ymin > ymax: 1, "
                                         r"zero area: 1, outside the image: 1\) in 3 files"):
        ds = load_bccd("train", root, size=8)
    assert ds.spec["dropped_boxes"] == {"total": 3, "inverted": 1, "zero_area": 1, "outside": 1,
                                        "files": 3}
    assert len(ds) == 2 * 3 + 1  # i0, i1, i3 keep 2 boxes each (+ i1's overhang); i2 none


def test_bccd_split_files_that_overlap_are_refused(tmp_path):
    from medrobust.data.bccd import load_bccd

    root = _voc(tmp_path / "bccd", BOXES, dict(SPLITS, test=["i5", "i3"]))
    with pytest.raises(DataError, match=r"1 image\(s\) are listed in both .*train\.txt and "
                                        r".*test\.txt \(i3\): test images must not be trained on"):
        load_bccd("val", root, size=8)


# --------------------------------------------------------------------------- 2: store, unit level


def test_an_empty_sqlite_file_or_none_may_become_a_store_but_not_for_readers(tmp_path):
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    for path in (empty, tmp_path / "missing.db"):
        with pytest.raises(StoreError, match="no medrobust store at"):
            Store(path, create=False)
    assert empty.read_bytes() == b"" and not (tmp_path / "missing.db").exists()
    with Store(empty) as store:  # writers may make a store of it
        assert store.runs() == []
    with Store(empty, create=False) as store:  # and then it is one
        assert store.runs() == []


def test_a_store_newer_than_this_code_is_refused_before_anything_is_written(tmp_path):
    db = _store(tmp_path / "s.db")
    _sqlite(db, "PRAGMA journal_mode=DELETE",  # so switching it to WAL would change its bytes
            "UPDATE store_meta SET value = '99' WHERE key = 'schema_version'")
    before = hashlib.md5(db.read_bytes()).hexdigest()
    with pytest.raises(StoreError, match="has store schema version 99, newer than"):
        Store(db)
    assert hashlib.md5(db.read_bytes()).hexdigest() == before  # not even switched to WAL


def test_a_store_in_a_folder_root_cannot_write_is_not_called_corrupt(tmp_path, monkeypatch):
    """Root writes through permission bits, so an unwritable folder is emulated: SQLite is
    really stopped (its -wal path is taken) and the folder reports itself read-only."""
    from medrobust.store import files

    db = _store(tmp_path / "s.db")
    Path(f"{db}-wal").mkdir()
    real = os.access
    monkeypatch.setattr(files.os, "access", lambda p, mode: Path(p) != tmp_path
                        and real(p, mode))
    with pytest.raises(StoreError) as info:
        Store(db)
    assert str(info.value) == (f"cannot write to run store {db}: its folder {tmp_path} is not "
                               "writable (SQLite must create s.db-wal and s.db-shm beside the "
                               "store, even to read it)")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root writes into a read-only folder anyway")
def test_a_store_in_a_read_only_folder_by_permissions(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    db = _store(ro / "s.db")
    ro.chmod(0o555)
    try:
        before = _snapshot(tmp_path)
        for argv in (["store", "runs"], ["report", "--out", str(tmp_path / "rep")]):
            code, _, err = run_cli(capsys, *argv, "--store", str(db))
            assert_one_error_line(code, err, f"its folder {ro} is not writable")
        assert _snapshot(tmp_path) == before
    finally:
        ro.chmod(0o755)
