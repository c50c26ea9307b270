"""Bad files (datasets, checkpoints) give one ``error:`` line, exit 2 and write nothing (issue 11,
part 7); a folder-trained checkpoint reloads; user strings are escaped in reports.

Each row of ``CASES`` builds its bad input in ``tmp_path`` and names the command to run and a
substring the one line must hold. The command runs in-process with every output path inside
``tmp_path``; the files there before and after must be the same (nothing half-written).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from cli_util import assert_one_error_line, run_cli, run_json, tree
from PIL import Image

from medrobust.data import medmnist
from medrobust.errors import ConfigError
from medrobust.models import Classifier, build_model, save_checkpoint

RNG = np.random.default_rng(0)


# --------------------------------------------------------------------------- builders


def _npz(path: Path, n: int = 6, shape: tuple[int, ...] = (28, 28), classes: int = 2,
         **override: np.ndarray) -> Path:
    """A MedMNIST-style file with every split; ``override`` replaces arrays by key."""
    path.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split in ("train", "val", "test"):
        arrays[f"{split}_images"] = RNG.integers(0, 256, (n, *shape), dtype=np.uint8)
        arrays[f"{split}_labels"] = RNG.integers(0, classes, (n, 1), dtype=np.uint8)
    arrays.update(override)
    np.savez(path / "pneumoniamnist.npz", **arrays)
    return path


def _png(path: Path, size: int = 16, mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (size, size, 3) if mode == "RGB" else (size, size)
    Image.fromarray(RNG.integers(0, 256, shape, dtype=np.uint8)).save(path)


def _folder(root: Path, classes: tuple[str, ...] = ("a", "b"), n: int = 6,
            mode: str = "RGB") -> Path:
    for c in classes:
        for i in range(n):
            _png(root / c / f"{i}.png", mode=mode)
    return root


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:max(1, int(len(data) * keep))])


def _segfolder(root: Path, n: int = 4) -> Path:
    for i in range(n):
        _png(root / "images" / f"{i}.png")
        mask = (RNG.random((16, 16)) > 0.5).astype(np.uint8) * 255
        (root / "masks").mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask).save(root / "masks" / f"{i}.png")
    return root


def _checkpoint(path: Path, channels: int = 3, model: str = "smallcnn", width: int = 4,
                dataset: dict | None = None) -> Path:
    """An untrained checkpoint (loading, not accuracy, is under test)."""
    kwargs = {"width": width} if model == "smallcnn" else {}
    net = build_model(model, channels, 2, **kwargs)
    clf = Classifier(net, mean=[0.5] * channels, std=[0.25] * channels,
                     class_names=("normal", "mitosis"))
    spec = dataset or {"dataset": "synthetic", "size": 16, "n": 8, "seed": 0}
    return save_checkpoint(clf, path, {"model": model, "model_kwargs": kwargs, "dataset": spec})


def _edit_meta(ckpt: Path, change: Callable[[dict], object]) -> Path:
    meta = json.loads((ckpt / "meta.json").read_text())
    result = change(meta)
    text = result if isinstance(result, str) else json.dumps(meta if result is None else result)
    (ckpt / "meta.json").write_text(text)
    return ckpt


def _meta(**fields) -> Callable[[dict], None]:
    return lambda meta: meta.update(fields)


def _drop(key: str) -> Callable[[dict], None]:
    def change(meta: dict) -> None:
        del meta[key]

    return change


# --------------------------------------------------------------------------- commands


def _train_npz(d: Path) -> list[str]:
    return ["train", "--dataset", "pneumoniamnist", "--data-dir", str(d), "--no-verify",
            "--epochs", "1", "--width", "4", "--out", "out", "--store", "s.db"]


def _train_folder(d: Path) -> list[str]:
    return ["train", "--dataset", "folder", "--data-dir", str(d), "--size", "16", "--epochs", "1",
            "--width", "4", "--out", "out", "--store", "s.db"]


def _train_seg(d: Path) -> list[str]:
    return ["train", "--task", "segmentation", "--dataset", "segfolder", "--data-dir", str(d),
            "--size", "16", "--epochs", "1", "--out", "out", "--store", "s.db"]


def _evaluate(ckpt: Path, *extra: str) -> list[str]:
    return ["evaluate", "--model", str(ckpt), "--store", "s.db", *extra]


def _onepixel(ckpt: Path, *extra: str) -> list[str]:
    return ["attack", "onepixel", "--model", str(ckpt), "--limit", "2", "--population", "8",
            "--generations", "1", "--store", "s.db", *extra]


# --------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class Case:
    id: str
    build: Callable[[Path], list[str]]  # makes the bad input under tmp_path, returns argv
    needle: str


def _ck(t: Path, change: Callable[[dict], object]) -> Path:
    return _edit_meta(_checkpoint(t / "m"), change)


def _weights(t: Path, fn: Callable[[Path], None]) -> Path:
    ckpt = _checkpoint(t / "m")
    fn(ckpt / "model.safetensors")
    return ckpt


def _other_weights(t: Path, model: str, width: int = 4) -> Path:
    """meta.json of a width-4 smallcnn over the weights of another network."""
    other = _checkpoint(t / "other", model=model, width=width)
    ckpt = _checkpoint(t / "m")
    shutil.copy(other / "model.safetensors", ckpt / "model.safetensors")
    shutil.rmtree(other)
    return ckpt


def _flat(t: Path, name: str, fn: Callable[[Path], None]) -> Path:
    root = _folder(t / "data")
    fn(root / "a" / name)
    return root


def _rgb_on_grey_npz(t: Path) -> list[str]:
    _npz(t / "d")
    return _evaluate(_checkpoint(t / "m", channels=3), "--dataset", "pneumoniamnist",
                     "--data-dir", str(t / "d"), "--no-verify")


def _download(t: Path, mp: pytest.MonkeyPatch) -> list[str]:
    mp.setattr(medmnist, "ZENODO_URL", (t / "no-mirror").as_uri() + "/{filename}")
    return _train_npz(t / "not-yet" / "data")


N, S = 6, (28, 28)
CASES: list[Case] = [
    # --- MedMNIST npz files
    Case("npz-wrong-keys", lambda t: _train_npz(_npz_keys(t)),
         "has no train_images / train_labels"),
    Case("npz-float-images", lambda t: _train_npz(_npz(
        t / "d", train_images=RNG.random((N, *S)).astype(np.float32))), "expected uint8"),
    Case("npz-float-labels", lambda t: _train_npz(_npz(
        t / "d", train_labels=np.full((N, 1), 0.7))), "labels must be integers, got float64"),
    Case("npz-nan-images", lambda t: _train_npz(_npz(
        t / "d", train_images=np.full((N, *S), np.nan, np.float32))), "NaN"),
    Case("npz-nan-labels", lambda t: _train_npz(_npz(
        t / "d", train_labels=np.full((N, 1), np.nan))), "labels must be integers"),
    Case("npz-labels-out-of-range", lambda t: _train_npz(_npz(
        t / "d", train_labels=np.full((N, 1), 5, np.uint8))), "labels outside 0..1"),
    Case("npz-negative-labels", lambda t: _train_npz(_npz(
        t / "d", train_labels=np.full((N, 1), -1, np.int64))), "labels outside 0..1"),
    Case("npz-labels-2-columns", lambda t: _train_npz(_npz(
        t / "d", train_labels=np.zeros((N, 2), np.uint8))), "expected labels of shape (N, 1)"),
    Case("npz-zero-images", lambda t: _train_npz(_npz(
        t / "d", train_images=np.zeros((0, *S), np.uint8),
        train_labels=np.zeros((0, 1), np.uint8))), "train_images holds 0 images"),
    Case("npz-2x2-images", lambda t: _train_npz(_npz(t / "d", shape=(2, 2))),
         "are 2x2 but a MedMNIST size-28 file holds 28x28 images"),
    Case("npz-length-mismatch", lambda t: _train_npz(_npz(
        t / "d", train_labels=np.zeros((N - 1, 1), np.uint8))),
         "6 train_images but 5 train_labels"),
    Case("npz-2-channel-images", lambda t: _train_npz(_npz(t / "d", shape=(28, 28, 2))),
         "expected uint8 train_images"),
    Case("npz-not-a-zip", lambda t: _train_npz(_write(t / "d" / "pneumoniamnist.npz",
                                                      b"not an npz")),
         "is not an npz file (not a zip archive)"),
    Case("npz-pickled-object-array", lambda t: _train_npz(_npz(
        t / "d", train_labels=np.array([{"a": 1}] * N, dtype=object))), "cannot read"),
    # --- folder datasets
    Case("folder-truncated-png", lambda t: _train_folder(_flat(t, "0.png", _truncate)),
         "cannot read image"),
    Case("folder-truncated-jpeg", lambda t: _train_folder(_jpeg_truncated(t)),
         "cannot read image"),
    Case("folder-empty-png", lambda t: _train_folder(_flat(
        t, "0.png", lambda p: p.write_bytes(b""))), "cannot read image"),
    Case("folder-text-named-png", lambda t: _train_folder(_flat(
        t, "0.png", lambda p: p.write_text("hello"))), "cannot read image"),
    Case("folder-one-class", lambda t: _train_folder(_folder(t / "data", classes=("only",))),
         "a classifier needs at least 2 classes"),
    Case("folder-empty", lambda t: _train_folder(_mkdir(t / "data")),
         "no class subfolders with PNG/JPEG images"),
    Case("folder-missing", lambda t: _train_folder(t / "nowhere"), "does not exist"),
    Case("folder-too-small-for-the-model", lambda t: [*_train_folder(_folder(t / "data")),
                                                      "--size", "2"],
         "model 'smallcnn' cannot run on 2x2 data images"),
    # --- segmentation folders
    Case("segfolder-mask-other-size", lambda t: _train_seg(_seg_mask_size(t)), "but its mask"),
    Case("segfolder-mask-missing", lambda t: _train_seg(_seg_without_mask(t)), "have no mask"),
    Case("segfolder-truncated-mask", lambda t: _train_seg(_seg_truncated_mask(t)),
         "cannot read"),
    # --- checkpoints
    Case("ckpt-no-meta", lambda t: _evaluate(_unlink(_checkpoint(t / "m"), "meta.json")),
         "is not a medrobust checkpoint (no meta.json)"),
    Case("ckpt-meta-not-json", lambda t: _evaluate(_ck(t, lambda m: "{not json")),
         "is not valid JSON"),
    Case("ckpt-meta-json-list", lambda t: _evaluate(_ck(t, lambda m: [m])),
         "must hold a JSON object, not a list"),
    Case("ckpt-meta-no-mean", lambda t: _evaluate(_ck(t, _drop("mean"))),
         "lacks the field 'mean'"),
    Case("ckpt-meta-no-model", lambda t: _evaluate(_ck(t, _drop("model"))),
         "lacks the field 'model'"),
    Case("ckpt-meta-no-head", lambda t: _evaluate(_ck(t, _drop("head"))),
         "lacks the field 'head'"),
    Case("ckpt-std-zero", lambda t: _evaluate(_ck(t, _meta(std=[0.0, 0.25, 0.25]))),
         "'std' must be positive"),
    Case("ckpt-std-negative", lambda t: _evaluate(_ck(t, _meta(std=[-0.25] * 3))),
         "'std' must be positive"),
    Case("ckpt-mean-wrong-channels", lambda t: _evaluate(_ck(t, _meta(mean=[0.5]))),
         "'mean' must be 3 finite number(s)"),
    Case("ckpt-mean-not-numbers", lambda t: _evaluate(_ck(t, _meta(mean=["a", "b", "c"]))),
         "'mean' must be 3 finite number(s)"),
    Case("ckpt-one-class-name", lambda t: _evaluate(_ck(t, _meta(class_names=["x"]))),
         "'class_names' must list at least 2 class name(s)"),
    Case("ckpt-channels-not-int", lambda t: _evaluate(_ck(t, _meta(channels="3"))),
         "'channels' must be a positive integer"),
    Case("ckpt-bad-head", lambda t: _evaluate(_ck(t, _meta(head="linear"))),
         "'head' must be softmax or sigmoid"),
    Case("ckpt-model-kwargs-list", lambda t: _evaluate(_ck(t, _meta(model_kwargs=[4]))),
         "'model_kwargs' must be a JSON object"),
    Case("ckpt-no-weights", lambda t: _evaluate(_unlink(_checkpoint(t / "m"),
                                                        "model.safetensors")),
         "model.safetensors does not exist"),
    Case("ckpt-truncated-weights", lambda t: _evaluate(_weights(t, _truncate)),
         "not a complete safetensors file"),
    Case("ckpt-empty-weights", lambda t: _evaluate(_weights(t, lambda p: p.write_bytes(b""))),
         "not a complete safetensors file"),
    Case("ckpt-other-architecture", lambda t: _evaluate(_other_weights(t, "resnet18")),
         "do not fit the model 'smallcnn' named in meta.json"),
    Case("ckpt-other-width", lambda t: _evaluate(_other_weights(t, "smallcnn", width=8)),
         "in the file but"),
    Case("ckpt-segmentation-to-onepixel", lambda t: _onepixel(
        _ck(t, _meta(task="segmentation"))), "holds a segmentation model; this needs a "
                                             "classifier"),
    Case("ckpt-denoiser-to-evaluate", lambda t: _evaluate(_ck(t, _meta(kind="denoiser"))),
         "holds a denoiser, not a classifier"),
    # --- a model on data with another channel count
    Case("grey-model-on-rgb-evaluate", lambda t: _evaluate(
        _checkpoint(t / "m", channels=1), "--dataset", "synthetic", "--size", "16"),
         "the model takes 1-channel images but synthetic test has 3 channels"),
    Case("rgb-model-on-grey-evaluate", _rgb_on_grey_npz,
         "the model takes 3-channel images but pneumoniamnist test has 1 channels"),
    Case("grey-model-on-rgb-onepixel", lambda t: _onepixel(
        _checkpoint(t / "m", channels=1), "--dataset", "synthetic", "--size", "16"),
         "the model takes 1-channel images but synthetic test has 3 channels"),
    Case("grey-model-on-rgb-pgd", lambda t: [
        "attack", "pgd", "--model", str(_checkpoint(t / "m", channels=1)), "--dataset",
        "synthetic", "--size", "16", "--limit", "2", "--steps", "1", "--store", "s.db"],
         "the model takes 1-channel images but synthetic test has 3 channels"),
]


def _npz_keys(t: Path) -> Path:
    t.joinpath("d").mkdir()
    np.savez(t / "d" / "pneumoniamnist.npz", x_train=np.zeros((N, *S), np.uint8),
             y_train=np.zeros((N, 1), np.uint8))
    return t / "d"


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path.parent


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


def _unlink(ckpt: Path, name: str) -> Path:
    (ckpt / name).unlink()
    return ckpt


def _jpeg_truncated(t: Path) -> Path:
    root = _folder(t / "data")
    img = Image.fromarray(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    img.save(root / "b" / "photo.jpg", quality=90)
    _truncate(root / "b" / "photo.jpg", 0.4)
    return root


def _seg_mask_size(t: Path) -> Path:
    root = _segfolder(t / "seg")
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(root / "masks" / "1.png")
    return root


def _seg_without_mask(t: Path) -> Path:
    root = _segfolder(t / "seg")
    (root / "masks" / "2.png").unlink()
    return root


def _seg_truncated_mask(t: Path) -> Path:
    root = _segfolder(t / "seg")
    _truncate(root / "masks" / "0.png", 0.3)
    return root


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_file_gives_one_error_line_and_writes_nothing(case, tmp_path, capsys, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(tmp_path)
    argv = case.build(work)
    before = tree(tmp_path)
    code, _out, err = run_cli(capsys, *argv)
    assert_one_error_line(code, err, case.needle)
    assert tree(tmp_path) == before  # no store, no checkpoint folder, no partial file


def test_failed_download_does_not_create_the_data_dir(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = _download(tmp_path, monkeypatch)
    code, _, err = run_cli(capsys, *argv)
    assert_one_error_line(code, err, "downloading it failed")
    assert not (tmp_path / "not-yet").exists() and tree(tmp_path) == set()


# --------------------------------------------------------------------------- NumPy layout


@pytest.mark.parametrize("channels,shape,needle", [
    (1, (4, 1, 16, 16), "channels first (N,C,H,W)? Use images.transpose(0, 2, 3, 1)"),
    (3, (4, 3, 16, 16), "channels first (N,C,H,W)?"),
    (1, (4, 16, 16), "greyscale stack (N,H,W) without a channel axis? Use images[..., None]"),
    (3, (3, 16, 16), "a single image (C,H,W) or a greyscale stack (N,H,W)?"),
    (1, (4, 16, 16, 3), "the model takes 1-channel images but these have 3 channels"),
    (3, (2, 4, 16, 16, 3), "got shape (2, 4, 16, 16, 3)"),
])
def test_numpy_arrays_in_another_layout_say_how_they_are_read(channels, shape, needle):
    clf = Classifier(build_model("smallcnn", channels, 2, width=4), mean=[0.5] * channels,
                     std=[0.25] * channels, class_names=("a", "b"))
    with pytest.raises(ConfigError) as exc:
        clf.to_tensor(np.zeros(shape, np.uint8))
    msg = str(exc.value)
    assert "\n" not in msg and needle in msg
    assert "NumPy arrays are read as (N,H,W,C)" in msg


def test_numpy_arrays_in_the_convention_still_work():
    clf = Classifier(build_model("smallcnn", 1, 2, width=4), mean=[0.5], std=[0.25],
                     class_names=("a", "b"))
    assert clf.to_tensor(np.zeros((4, 16, 16, 1), np.uint8)).shape == (4, 1, 16, 16)
    assert clf.to_tensor(np.zeros((16, 16, 1), np.uint8)).shape == (1, 1, 16, 16)


def test_open_dataset_refuses_data_of_another_channel_count_before_any_run():
    from medrobust.cli.common import open_dataset
    from medrobust.errors import DataError

    with pytest.raises(DataError) as exc:
        open_dataset("synthetic", "test", None, 16, False, model_channels=1)
    assert str(exc.value) == ("the model takes 1-channel images but synthetic test has 3 "
                              "channels (a greyscale model on colour data?)")


# --------------------------------------------------------------------------- folder checkpoints


def test_a_folder_trained_checkpoint_reloads_for_evaluate_and_attack(tmp_path, capsys):
    root = _folder(tmp_path / "cells", n=8)
    db, ckpt = str(tmp_path / "s.db"), str(tmp_path / "m")
    run_json(capsys, *_train_folder(root)[:-4], "--out", ckpt, "--store", db)
    ev = run_json(capsys, "evaluate", "--model", ckpt, "--store", db)
    assert ev["n"] == 2  # the folder's seeded test split (1 per class), found from meta.json
    att = run_json(capsys, *_onepixel(Path(ckpt))[:-2], "--store", db)
    assert att["images"] == 2


# --------------------------------------------------------------------------- escaping


def test_class_names_are_escaped_in_report_and_markdown(tmp_path, capsys):
    # A folder name cannot hold "/", so not "<script>alert(1)</script>"; this one runs script
    # just the same if written into HTML unescaped.
    evil = "<img src=x onerror=alert(1)>"
    root = _folder(tmp_path / "cells", classes=(evil, "normal"), n=8)
    db, ckpt = str(tmp_path / "s.db"), str(tmp_path / "m")
    run_json(capsys, *_train_folder(root)[:-4], "--out", ckpt, "--store", db)
    run_json(capsys, "attack", "onepixel", "--model", ckpt, "--population", "16",
             "--generations", "2", "--store", db)
    run_json(capsys, "analyze", "--store", db, "--out", str(tmp_path / "study"))
    run_json(capsys, "report", "--store", db, "--out", str(tmp_path / "rep"))
    html = (tmp_path / "rep" / "report.html").read_text()
    escaped = "&lt;img src=x onerror=alert(1)&gt;"
    assert evil not in html and escaped in html
    written = list((tmp_path / "study").rglob("*.md")) + list((tmp_path / "rep").rglob("*.md"))
    assert written
    texts = [p.read_text() for p in written]
    assert not any("<img" in t for t in texts)
    assert any("&lt;img src=x onerror=alert(1)>" in t for t in texts)  # no tag can open
