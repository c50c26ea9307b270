"""Bad input on the task paths: landmark models, detectors, segmenters and robust training.

Like ``test_bad_input_options.py``: each case must end in exit code 2 with one ``error: ...``
line naming the problem, no traceback, no run recorded in the store and no file written. Here
the problems are ones that used to surface only after a run had opened (data the model cannot
score, an image size the network cannot take, budgets beyond the image, a ``--xi-from``
network of another shape) or options that were silently ignored or replaced.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_util import assert_one_error_line, run_cli, run_count, run_json, tree
from PIL import Image
from test_detection import _voc
from test_landmarks import make_folder

pytestmark = pytest.mark.usefixtures("one_thread_module")


@dataclass(frozen=True)
class Fx:
    """Shared inputs (read-only) and this case's empty working folder."""

    root: Path  # the shared folder below
    tmp: Path

    @property
    def db(self) -> str:
        """A store that does not exist yet: it must still not exist afterwards."""
        return str(self.tmp / "s.db")

    @property
    def out(self) -> str:
        return str(self.tmp / "model")

    def __getattr__(self, name: str) -> str:  # lm3, lm1, voc, seg, m_lm, m_det, m_clf, m_seg
        return str(self.root / name)


def _one_landmark_folder(root: Path, n: int = 6) -> None:
    (root / "images").mkdir(parents=True)
    rows = ["id,x1,y1"]
    for i in range(n):
        Image.fromarray(np.full((32, 32), 40 + i, np.uint8)).save(root / "images" / f"{i:03d}.png")
        rows.append(f"{i:03d},{10 + i},12")
    (root / "landmarks.csv").write_text("\n".join(rows) + "\n")


def _seg_folder(root: Path, n: int = 8) -> None:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        mask = np.zeros((20, 20), np.uint8)
        y, x = rng.integers(3, 12, 2)
        mask[y:y + 6, x:x + 6] = 255
        img = np.clip(rng.normal(60, 10, (20, 20)) + (mask > 0) * 120, 0, 255).astype(np.uint8)
        Image.fromarray(img).save(root / "images" / f"im{i}.png")
        Image.fromarray(mask).save(root / "masks" / f"im{i}.png")


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> Path:
    """Folders and untrained checkpoints: a 3-landmark model (width 2, 32x32), a 1-landmark
    folder, a VOC folder with RBC, WBC and Platelets and a detector of RBC and WBC only, a
    classifier (width 4, 16x16) and a U-Net (16x16)."""
    from medrobust.data import load_dataset
    from medrobust.models import Classifier, build_model, save_model
    from medrobust.models.detector import Detector
    from medrobust.models.landmark_unet import LandmarkModel
    from medrobust.models.segmenter import Segmenter

    root = tmp_path_factory.mktemp("bad_tasks")
    torch.manual_seed(0)
    make_folder(root / "lm3", n=10, h=32, w=32)
    _one_landmark_folder(root / "lm1")
    spec = load_dataset("landmarks", "test", data_dir=root / "lm3", size=32).spec
    save_model(LandmarkModel(build_model("landmark_unet", 1, 3, width=2), [0.4], [0.2], 3, 4.0),
               root / "m_lm", {"model": "landmark_unet", "model_kwargs": {"width": 2},
                               "dataset": spec})
    boxes = {f"i{k}": [("RBC", 4 + k, 4, 20 + k, 18, 0), ("WBC", 30, 20, 56, 44, 0),
                       ("Platelets", 40, 4, 50, 12, 0)] for k in range(8)}
    _voc(root / "voc", boxes, {"train": [f"i{k}" for k in range(5)], "val": ["i5", "i6"],
                               "test": ["i7"]})
    det_spec = load_dataset("bccd-detection", "test", data_dir=root / "voc", size=32,
                            classes=("RBC", "WBC")).spec
    save_model(Detector(build_model("centernet", 3, 2, width=4), mean=[0.5] * 3, std=[0.25] * 3,
                        class_names=("RBC", "WBC")), root / "m_det",
               {"model": "centernet", "model_kwargs": {"width": 4}, "dataset": det_spec})
    syn = load_dataset("synthetic", "test", size=16, n=20, seed=3)
    save_model(Classifier(build_model("smallcnn", 3, 2, width=4), mean=[0.5] * 3,
                          std=[0.25] * 3, class_names=("normal", "mitosis")), root / "m_clf",
               {"model": "smallcnn", "model_kwargs": {"width": 4}, "dataset": syn.spec,
                "image_size": [16, 16]})
    _seg_folder(root / "seg")
    seg_spec = load_dataset("segfolder", "train", data_dir=root / "seg", size=16, channels=1).spec
    kwargs = {"channels": [4, 8], "strides": [2]}
    save_model(Segmenter(build_model("unet", 1, 2, **kwargs), mean=[0.3], std=[0.2],
                         class_names=("background", "foreground"), multiple=2), root / "m_seg",
               {"model": "unet", "model_kwargs": kwargs, "dataset": seg_spec,
                "image_size": [16, 16]})
    return root


Argv = Callable[[Fx], list[str]]


def evaluate(model: str, *args: str) -> Argv:
    return lambda f: ["evaluate", "--model", getattr(f, model), "--store", f.db, *args]


def protocol(model: str, *args: str) -> Argv:
    """``evaluate --attack`` with cheap settings (3 images, 1 step)."""
    return lambda f: ["evaluate", "--model", getattr(f, model), "--limit", "3", "--store", f.db,
                      *args]


def pgd(model: str, *args: str) -> Argv:
    return lambda f: ["attack", "pgd", "--model", getattr(f, model), "--limit", "2", "--steps",
                      "1", "--norm", "l2", "--eps", "0.5", "--store", f.db, *args]


def train_lm(*args: str) -> Argv:
    return lambda f: ["train", "--task", "landmarks", "--dataset", "landmarks", "--data-dir",
                      f.lm3, "--size", "32", "--epochs", "1", "--width", "2", "--out", f.out,
                      "--store", f.db, *args]


def train_det(*args: str) -> Argv:
    return lambda f: ["train", "--task", "detection", "--dataset", "voc", "--data-dir", f.voc,
                      "--size", "32", "--epochs", "1", "--width", "4", "--out", f.out,
                      "--store", f.db, *args]


def train_clf(*args: str) -> Argv:
    return lambda f: ["train", "--dataset", "synthetic", "--size", "16", "--epochs", "1",
                      "--out", f.out, "--store", f.db, *args]


def train_seg(*args: str) -> Argv:
    return lambda f: ["train", "--task", "segmentation", "--dataset", "segfolder", "--data-dir",
                      f.seg, "--size", "16", "--epochs", "1", "--out", f.out, "--store", f.db,
                      *args]


def with_model(build: Callable[..., Argv], *args: str, model: str) -> Argv:
    """A train command whose ``--xi-from`` is one of the shared checkpoints."""
    return lambda f: [*build(*args)(f), "--xi-from", getattr(f, model)]


LM1 = ("--dataset", "landmarks", "--data-dir")
CASES: list[tuple[str, Argv, str]] = [
    # -- 2: data the model cannot score, refused before a run opens -----------------------------
    ("evaluate-landmarks-other-count", lambda f: [*evaluate("m_lm")(f), *LM1, f.lm1],
     "the model predicts 3 landmarks but "),
    ("protocol-landmarks-other-count",
     lambda f: [*protocol("m_lm", "--attack", "pgd", "--steps", "1")(f), *LM1, f.lm1],
     "the model predicts 3 landmarks but "),
    ("pgd-landmarks-other-count", lambda f: [*pgd("m_lm")(f), *LM1, f.lm1],
     "the model predicts 3 landmarks but "),
    ("evaluate-detection-other-classes",
     lambda f: [*evaluate("m_det")(f), "--dataset", "voc", "--data-dir", f.voc],
     "the model detects 2 classes (RBC, WBC) but "),
    ("protocol-detection-other-classes",
     lambda f: [*protocol("m_det", "--attack", "ifgsm", "--ifgsm-steps", "1")(f), "--dataset",
                "voc", "--data-dir", f.voc], "the model detects 2 classes (RBC, WBC) but "),
    ("pgd-detection-other-classes",
     lambda f: [*pgd("m_det")(f), "--dataset", "voc", "--data-dir", f.voc],
     "has 3 (Platelets, RBC, WBC)"),
    # -- 3: sizes the landmark U-Net cannot take ------------------------------------------------
    ("train-landmarks-size-8", lambda f: [*train_lm()(f), "--size", "8"],
     "--size 8 is too small for landmarks: the landmark U-Net halves the image 4 times, so "
     "images need at least 16 pixels a side"),
    ("train-landmarks-size-12", lambda f: [*train_lm()(f), "--size", "12"],
     "--size 12 is too small for landmarks"),
    # -- 5: alpha must be positive (and is no longer replaced by 4 when 0) ----------------------
    ("train-vat-alpha-0", train_clf("--robust", "vat", "--eps", "0.1", "--alpha", "0"),
     "--alpha must be positive"),
    ("train-landmarks-vat-alpha-negative",
     train_lm("--robust", "vat", "--eps", "0.1", "--alpha", "-1"), "--alpha must be positive"),
    # -- 6: margins that could never grow -------------------------------------------------------
    ("train-max-margin-0",
     with_model(train_clf, "--robust", "adaptive-margin", "--delta", "0.1", "--max-margin", "0",
                model="m_clf"), "--max-margin must be a positive"),
    ("train-max-margin-below-delta",
     with_model(train_lm, "--robust", "adaptive-margin", "--delta", "0.1", "--max-margin",
                "0.05", model="m_lm"), "--max-margin 0.05 must exceed --delta 0.1"),
    ("train-max-margin-equal-delta",
     with_model(train_clf, "--robust", "adaptive-margin", "--delta", "0.1", "--max-margin",
                "0.1", model="m_clf"), "--max-margin 0.1 must exceed --delta 0.1"),
    # -- 9: --classes where the data cannot pick classes ----------------------------------------
    ("train-detection-voc-classes-leave-one-out", train_det("--classes", "RBC,WBC"),
     "'Platelets'"),
    ("train-landmarks-classes", train_lm("--classes", "L1,L2"),
     "--classes applies to datasets whose classes can be chosen"),
    # -- 10: found only after the run opened, before ------------------------------------------
    ("train-landmarks-xi-from-detector",
     with_model(train_lm, "--robust", "vat", "--eps", "0.1", model="m_det"),
     "holds a detection model, not landmarks"),
    ("train-landmarks-xi-from-other-width",
     with_model(train_lm, "--robust", "vat", "--eps", "0.1", "--width", "4", model="m_lm"),
     "(--xi-from) holds another network"),
    ("train-classifier-xi-from-other-width",
     with_model(train_clf, "--robust", "teat", "--eps", "0.1", "--width", "8", model="m_clf"),
     "(--xi-from) holds another network"),
    ("train-detection-xi-from-other-width",
     with_model(train_det, "--robust", "vat", "--eps", "0.1", "--width", "8", model="m_det"),
     "(--xi-from) holds another network"),
    ("train-landmarks-eps-1e9", train_lm("--robust", "vat", "--eps", "1e9"),
     "--eps 1e+09 exceeds the image range (no L2 change of a 1x32x32 image exceeds 32)"),
    ("train-classifier-teat-eps-1e9", train_clf("--robust", "teat", "--eps", "1e9"),
     "--eps 1e+09 exceeds the image range"),
    ("train-detection-vat-eps-1e9", train_det("--robust", "vat", "--eps", "1e9"),
     "--eps 1e+09 exceeds the image range"),
    ("train-delta-1e9",
     with_model(train_lm, "--robust", "adaptive-margin", "--delta", "1e9", model="m_lm"),
     "--delta 1e+09 exceeds the image range"),
    # -- 11: an empty budget list ---------------------------------------------------------------
    ("protocol-l2-empty", protocol("m_lm", "--attack", "pgd", "--l2", ""),
     "--l2 needs at least one budget"),
    ("protocol-l2-commas", protocol("m_lm", "--attack", "pgd", "--l2", " , "),
     "--l2 needs at least one budget"),
    ("protocol-linf-empty", protocol("m_lm", "--attack", "pgd", "--linf", ""),
     "--linf needs at least one budget"),
    # -- 12: every task's model runs at the size it was trained at ------------------------------
    ("evaluate-landmarks-size", evaluate("m_lm", "--size", "64"),
     "--size 64 differs from the model's input size 32"),
    ("protocol-landmarks-size", protocol("m_lm", "--attack", "pgd", "--size", "64"),
     "--size 64 differs from the model's input size 32"),
    ("pgd-landmarks-size", pgd("m_lm", "--size", "64"),
     "--size 64 differs from the model's input size 32"),
    ("evaluate-detection-size", evaluate("m_det", "--size", "64"),
     "--size 64 differs from the model's input size 32"),
    ("ifgsm-detection-size", lambda f: ["attack", "ifgsm", *pgd("m_det", "--size", "16")(f)[2:]],
     "--size 16 differs from the model's input size 32"),
    ("evaluate-segmentation-size", evaluate("m_seg", "--size", "32"),
     "--size 32 differs from the model's input size 16"),
    ("pgd-segmentation-size", pgd("m_seg", "--size", "32"),
     "--size 32 differs from the model's input size 16"),
    ("asma-segmentation-size",
     lambda f: ["attack", "asma", "--model", f.m_seg, "--iterations", "1", "--size", "32",
                "--store", f.db], "--size 32 differs from the model's input size 16"),
    ("evaluate-classifier-size", evaluate("m_clf", "--size", "32"),
     "--size 32 differs from the model's input size 16"),
    # -- 14: options that would be ignored ------------------------------------------------------
    ("train-xi-with-vat", train_clf("--robust", "vat", "--eps", "0.1", "--xi", "huber"),
     "--xi applies to --robust adaptive-margin, not vat"),
    ("train-xi-without-robust", train_lm("--xi", "mean"),
     "--xi applies to --robust adaptive-margin; without --robust it would be ignored"),
    ("train-alpha-without-robust", train_clf("--alpha", "2"),
     "--alpha applies to --robust vat and adaptive-margin; without --robust"),
    ("train-alpha-with-teat", train_det("--robust", "teat", "--eps", "0.1", "--alpha", "2"),
     "--alpha applies to --robust vat and adaptive-margin, not teat"),
    ("train-max-margin-without-robust", train_clf("--max-margin", "1"),
     "--max-margin applies to --robust adaptive-margin; without --robust"),
    ("train-refine-margins-with-vat",
     train_lm("--robust", "vat", "--eps", "0.1", "--refine-margins"),
     "--refine-margins applies to --robust adaptive-margin, not vat"),
    ("train-delta-with-teat", train_seg("--robust", "teat", "--eps", "0.1", "--delta", "0.1"),
     "--delta applies to --robust adaptive-margin, not teat"),
    ("train-eps-without-robust", train_lm("--eps", "0.1"), "--eps applies to --robust vat and teat"),
    ("train-xi-from-without-robust", with_model(train_clf, model="m_clf"),
     "--xi-from applies to --robust vat, teat and adaptive-margin"),
    ("train-segmentation-xi",
     with_model(train_seg, "--robust", "adaptive-margin", "--delta", "0.1", "--xi", "huber",
                model="m_seg"), "--xi does not apply to segmentation training"),
    ("protocol-restarts-unused", protocol("m_lm", "--attack", "pgd,ifgsm", "--restarts", "3"),
     "--restarts applies to --attack pgd-restarts, not pgd,ifgsm"),
    ("protocol-queries-unused", protocol("m_clf", "--attack", "pgd,apgd-ce", "--queries", "50"),
     "--queries applies to --attack square or ensemble, not pgd,apgd-ce"),
    ("protocol-steps-unused", protocol("m_det", "--attack", "ifgsm", "--steps", "3"),
     "--steps applies to --attack pgd, pgd-restarts, apgd-ce, apgd-t, apgd or ensemble, not "
     "ifgsm"),
    ("protocol-ifgsm-steps-unused", protocol("m_lm", "--attack", "pgd", "--ifgsm-steps", "3"),
     "--ifgsm-steps applies to --attack ifgsm or ensemble, not pgd"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_task_input_is_one_error_line_and_writes_nothing(case, shared, tmp_path, capsys,
                                                             monkeypatch):
    _id, build, needle = case
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    fx = Fx(root=shared, tmp=work)
    before = tree(shared)
    code, _out, err = run_cli(capsys, *build(fx))
    assert_one_error_line(code, err, needle)
    assert run_count(fx.db) is None, "a store was created"
    assert tree(work) == set(), "files were written"
    assert tree(shared) == before, "files were written"


def test_segmentation_masks_with_more_classes_than_the_model():
    from medrobust.data.segmentation import SegmentationDataset
    from medrobust.errors import DataError
    from medrobust.models import build_model
    from medrobust.models.segmenter import Segmenter
    from medrobust.tasks import get_task

    seg = Segmenter(build_model("unet", 1, 2, channels=[4, 8], strides=[2]), mean=[0.3],
                    std=[0.2], class_names=("background", "foreground"), multiple=2)
    masks = np.zeros((1, 8, 8), np.int64)
    masks[0, 0, 0] = 2
    ds = SegmentationDataset(np.zeros((1, 8, 8, 1), np.uint8), masks, ("a",),
                             ("background", "class 1", "class 2"), "segfolder", "test")
    with pytest.raises(DataError, match="the model segments 2 classes but segfolder"):
        get_task("segmentation").check_data(seg, ds)  # type: ignore[misc]


def test_detection_classes_pick_the_detectors_classes(shared, tmp_path, capsys):
    """--classes on detection training: the detector learns those classes, in that order, and
    the objects of other classes are left out of training and scoring alike."""
    out = run_json(capsys, "train", "--task", "detection", "--dataset", "bccd-detection",
                   "--data-dir", str(shared / "voc"), "--classes", "WBC,RBC", "--size", "32",
                   "--epochs", "1", "--width", "4", "--out", str(tmp_path / "m"), "--store",
                   str(tmp_path / "s.db"))
    assert set(out["test"]["per_class"]) == {"WBC", "RBC"}
    meta = json.loads((tmp_path / "m" / "meta.json").read_text())
    assert meta["class_names"] == ["WBC", "RBC"] and meta["dataset"]["classes"] == ["WBC", "RBC"]
    again = run_json(capsys, "evaluate", "--model", str(tmp_path / "m"), "--store",
                     str(tmp_path / "s.db"))
    assert again["map"] == pytest.approx(out["test"]["map"])


def test_alpha_given_is_alpha_recorded(shared, tmp_path, capsys):
    """The alpha given is the alpha trained with and recorded (not replaced by a default)."""
    out = run_json(capsys, *train_lm("--robust", "vat", "--eps", "0.5", "--alpha", "2.5")(
        Fx(root=shared, tmp=tmp_path)))
    assert out["robust"]["alpha"] == 2.5
    meta = json.loads((tmp_path / "model" / "meta.json").read_text())
    assert meta["robust"]["alpha"] == 2.5 and meta["train"]["options"]["alpha"] == 2.5


def test_budget_error_comes_before_training_and_on_its_own_line(shared, tmp_path, capsys,
                                                                 monkeypatch):
    """With progress bars on, a budget beyond the image stops before the training bar starts,
    and the error line is not glued to a data-loading bar (its text after the bar's last
    carriage return is the error)."""
    monkeypatch.delenv("MEDROBUST_QUIET", raising=False)
    code, _, err = run_cli(capsys, *train_det("--robust", "vat", "--eps", "1e9")(
        Fx(root=shared, tmp=tmp_path)))
    assert code == 2 and "train detector" not in err, err
    assert err.rstrip("\n").rsplit("\r", 1)[-1].startswith("error: --eps 1e+09"), repr(err)


def test_an_open_progress_bar_is_closed_before_the_error_line(tmp_path, capsys, monkeypatch):
    """An error raised while a bar is open (held by a training loop) is printed on a line of
    its own, not after the bar's text."""
    from medrobust.utils.progress import progress

    monkeypatch.delenv("MEDROBUST_QUIET", raising=False)
    bar = progress(total=3, desc="epoch 1")
    bar.update(1)
    code, _, err = run_cli(capsys, "evaluate", "--model", str(tmp_path / "nosuch"), "--store",
                           str(tmp_path / "s.db"))
    assert code == 2 and "epoch 1" in err
    assert err.rstrip("\n").rsplit("\r", 1)[-1].startswith("error: "), repr(err)
