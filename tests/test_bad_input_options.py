"""Out-of-range and unknown options, and unwritable outputs, on every command (issue 11, part 7).

Each case must end in exit code 2 with one ``error: ...`` line naming the problem, no traceback,
no run recorded in the store and no file written: options are validated before a run is opened,
data is loaded or anything is trained. Cases marked ``usage`` are click's own usage errors
(bad types, unknown options or choices); ``cli/main.py`` decides how those are printed, so for
them only the exit code, an ``error:`` line and the absence of a traceback are asserted.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_util import run_cli, run_count, tree
from PIL import Image

from medrobust.store import Store

#: a folder nobody can write in, root included (/proc refuses new files)
READ_ONLY = Path("/proc/medrobust-read-only")


@dataclass(frozen=True)
class Fx:
    """Paths a case can use: shared checkpoints and store, and this case's scratch folder."""

    ck: str  # a tiny softmax classifier, 16x16 RGB, trained on a 60-image synthetic split
    unet: str  # a tiny (untrained) U-Net on a 16x16 greyscale segfolder
    attacked: str  # a store holding a one-pixel run against ``ck``
    tmp: Path  # this case's empty working folder

    @property
    def db(self) -> str:
        """A store that does not exist yet: it must still not exist afterwards."""
        return str(self.tmp / "s.db")

    @property
    def afile(self) -> str:
        """A regular file, so anything below it cannot be written."""
        return str(self.tmp / "afile")


pytestmark = pytest.mark.usefixtures("one_thread_module")


@pytest.fixture(scope="module")
def shared(tmp_path_factory, tiny_classifier, tiny_synthetic) -> dict[str, str]:
    from medrobust.attacks import OnePixel
    from medrobust.campaigns.onepixel import run_onepixel_campaign
    from medrobust.data import load_dataset
    from medrobust.models import save_checkpoint
    from medrobust.models.segmenter import Segmenter, save_segmenter
    from medrobust.models.unet import unet

    root = tmp_path_factory.mktemp("bad_options")
    ck = root / "clf"
    test = tiny_synthetic[2]
    save_checkpoint(tiny_classifier, ck, {"model": "smallcnn", "model_kwargs": {"width": 8},
                                          "dataset": test.spec, "image_size": [16, 16]})
    db = root / "attacked.db"
    with Store(db) as store:
        run_onepixel_campaign(store, tiny_classifier, ck, test,
                              OnePixel(tiny_classifier, population=20, generations=3, seed=0),
                              list(range(6)), show_progress=False)

    data = root / "seg"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(10):
        mask = np.zeros((20, 20), np.uint8)
        y, x = rng.integers(3, 12, 2)
        mask[y:y + 6, x:x + 6] = 255
        img = np.clip(rng.normal(60, 10, (20, 20)) + (mask > 0) * 120, 0, 255).astype(np.uint8)
        Image.fromarray(img).save(data / "images" / f"im{i}.png")
        Image.fromarray(mask).save(data / "masks" / f"im{i}.png")
    spec = load_dataset("segfolder", "train", data_dir=data, size=16, channels=1).spec
    torch.manual_seed(0)
    seg = Segmenter(unet(in_channels=1, num_classes=2, channels=(4, 8), strides=(2,)),
                    mean=[0.4], std=[0.2], class_names=("background", "foreground"), multiple=2)
    save_segmenter(seg, root / "unet", {"model": "unet", "task": "segmentation",
                                        "model_kwargs": {"channels": [4, 8], "strides": [2]},
                                        "dataset": spec, "image_size": [16, 16]})
    return {"ck": str(ck), "unet": str(root / "unet"), "attacked": str(db)}


Argv = Callable[[Fx], list[str]]


def op(*args: str, model: str = "ck") -> Argv:
    """``attack onepixel`` on the tiny classifier, cheap settings, a fresh store."""
    return lambda f: ["attack", "onepixel", "--model", getattr(f, model), "--limit", "2", "--population", "8",
                      "--generations", "1", "--store", f.db, *args]


def grad(kind: str, *args: str, model: str = "ck") -> Argv:
    return lambda f: ["attack", kind, "--model", getattr(f, model), "--limit", "2", "--steps",
                      "2", "--store", f.db, *args]


def asma(*args: str, model: str = "unet") -> Argv:
    return lambda f: ["attack", "asma", "--model", getattr(f, model), "--limit", "2",
                      "--iterations", "2", "--store", f.db, *args]


def train(*args: str) -> Argv:
    return lambda f: ["train", "--dataset", "synthetic", "--size", "16", "--epochs", "1",
                      "--out", str(f.tmp / "model"), "--store", f.db, *args]


def train_seg(*args: str) -> Argv:
    return lambda f: ["train", "--task", "segmentation", "--dataset", "segfolder", "--data-dir",
                      str(Path(f.unet).parent / "seg"), "--size", "16", "--epochs", "1",
                      "--out", str(f.tmp / "unet"), "--store", f.db, *args]


def denoiser(*args: str) -> Argv:
    return lambda f: ["train-denoiser", "--dataset", "synthetic", "--size", "16", "--epochs", "1",
                      "--max-train", "32", "--out", str(f.tmp / "den"), "--store", f.db, *args]


def defend(*args: str) -> Argv:
    return lambda f: ["defend", "--model", f.ck, "--denoiser", "median3", "--store", f.attacked,
                      *args]


USAGE = "usage"  # marks click's own usage errors
CASES: list[tuple[str, Argv, str] | tuple[str, Argv, str, str]] = [
    # -- attack onepixel ------------------------------------------------------------------------
    ("op-population-1", op("--population", "1"), "population must lie in [4, inf], got 1"),
    ("op-population-3", op("--population", "3"), "population must lie in [4, inf], got 3"),
    ("op-generations-negative", op("--generations", "-1"), "generations must lie in [0, inf]"),
    ("op-pixels-0", op("--pixels", "0"), "pixels must lie in [1, inf], got 0"),
    ("op-pixels-beyond-image", op("--pixels", "1000"),
     "pixels must be at most 256 for 16x16 images, got 1000"),
    ("op-batch-images-0", op("--batch-images", "0"), "--batch-images must lie in [1, inf], got 0"),
    ("op-limit-negative", op("--limit", "-1"), "--limit must be at least 1"),
    ("op-limit-0", op("--limit", "0"), "--limit must be at least 1"),
    ("op-target-unknown", op("--targeted", "--target", "tumour"),
     "--target 'tumour' is not a class of synthetic: normal, mitosis"),
    ("op-target-index-out-of-range", op("--targeted", "--target", "5"),
     "--target '5' is not a class"),
    ("op-target-without-targeted", op("--target", "mitosis"), "--target needs --targeted"),
    ("op-partial-on-softmax", op("--partial"),
     "--partial applies to sigmoid (single-score) models"),
    ("op-threshold-on-softmax", op("--threshold", "0.7"),
     "--threshold applies to sigmoid (single-score) models"),
    ("op-direction-on-softmax", op("--direction", "pos2neg"),
     "direction applies to sigmoid (single-score) models only"),
    ("op-size-differs-from-model", op("--size", "32"),
     "--size 32 differs from the model's input size 16"),
    ("op-f-0", op("--f", "0"), "f must lie in (0, 2], got 0.0"),
    ("op-crossover-1.5", op("--crossover", "1.5"), "crossover must lie in (0, 1], got 1.5"),
    ("op-engine-unknown", op("--engine", "turbo"), "'turbo' is not one of", USAGE),
    ("op-strategy-unknown", op("--strategy", "best2"), "'best2' is not one of", USAGE),
    ("op-population-not-a-number", op("--population", "many"), "'many' is not a valid integer",
     USAGE),
    ("op-unknown-option", op("--index", "5"), "No such option", USAGE),
    ("op-dataset-unknown", op("--dataset", "nosuch"), "unknown dataset 'nosuch': choose from"),
    ("op-segmentation-checkpoint", op(model="unet"), "holds a segmentation model"),
    ("op-store-under-a-file", lambda f: [*op()(f), "--store", f.afile + "/s.db"],
     "--store"),
    ("op-store-read-only", lambda f: [*op()(f), "--store", str(READ_ONLY / "s.db")],
     "/proc is not a writable folder"),
    # -- attack pgd / ifgsm ---------------------------------------------------------------------
    ("pgd-eps-negative", grad("pgd", "--eps", "-1"), "must not be negative", USAGE),
    ("pgd-eps-300", grad("pgd", "--eps", "300"), "eps 300 exceeds the image range"),
    ("pgd-eps-300/255", grad("pgd", "--eps", "300/255"), "exceeds the image range"),
    ("ifgsm-eps-300", grad("ifgsm", "--eps", "300"), "eps 300 exceeds the image range"),
    ("pgd-l2-eps-beyond-image", grad("pgd", "--norm", "l2", "--eps", "100"),
     "eps 100 exceeds the image range"),
    ("pgd-step-0", grad("pgd", "--step", "0"), "step must be positive"),
    ("ifgsm-step-0", grad("ifgsm", "--step", "0"), "step must be positive"),
    ("pgd-step-not-a-number", grad("pgd", "--step", "abc"), "'abc' is not a number", USAGE),
    ("pgd-steps-0", grad("pgd", "--steps", "0"), "steps must lie in [1, inf], got 0"),
    ("ifgsm-steps-negative", grad("ifgsm", "--steps", "-3"), "steps must lie in [1, inf], got -3"),
    ("pgd-norm-unknown", grad("pgd", "--norm", "l7"), "'l7' is not one of", USAGE),
    ("pgd-loss-unknown", grad("pgd", "--loss", "hinge"), "'hinge' is not one of", USAGE),
    ("pgd-loss-dice-on-classifier", grad("pgd", "--loss", "dice"),
     "--loss dice is for segmentation models"),
    ("pgd-limit-0", grad("pgd", "--limit", "0"), "--limit must be at least 1"),
    ("pgd-batch-images-0", grad("pgd", "--batch-images", "0"), "batch_size must lie in [1, inf]"),
    ("pgd-target-unknown", grad("pgd", "--targeted", "--target", "tumour"),
     "--target 'tumour' is not a class"),
    ("pgd-target-without-targeted", grad("pgd", "--target", "mitosis"),
     "--target needs --targeted"),
    ("pgd-stop-iou-on-classifier", grad("pgd", "--stop-iou", "0.5"),
     "--stop-iou applies to segmentation models with --early-stop"),
    ("pgd-target-mode-on-classifier", grad("pgd", "--target-mode", "erase"),
     "--target-mode applies to segmentation models"),
    ("pgd-size-differs-from-model", grad("pgd", "--size", "32"),
     "--size 32 differs from the model's input size 16"),
    ("pgd-seg-stop-iou-2", grad("pgd", "--early-stop", "--target-mode", "erase", "--stop-iou",
                                "2", model="unet"), "stop_iou must lie in (0, 1], got 2.0"),
    ("pgd-seg-targeted", grad("pgd", "--targeted", model="unet"),
     "--targeted and --target are for classifiers"),
    ("pgd-seg-examples-negative", grad("pgd", "--examples", "-1", model="unet"),
     "--examples must lie in [0, inf], got -1"),
    ("pgd-seg-target-file-missing", grad("pgd", "--target-mode", "file", "--target-file",
                                         "nosuch.png", model="unet"),
     "target mask file nosuch.png does not exist"),
    ("pgd-store-read-only", lambda f: [*grad("pgd")(f), "--store", str(READ_ONLY / "s.db")],
     "/proc is not a writable folder"),
    # -- attack asma ----------------------------------------------------------------------------
    ("asma-stop-iou-2", asma("--stop-iou", "2"), "stop_iou must lie in (0, 1], got 2.0"),
    ("asma-stop-iou-0", asma("--stop-iou", "0"), "stop_iou must lie in (0, 1], got 0.0"),
    ("asma-iterations-negative", asma("--iterations", "-1"),
     "iterations must lie in [1, inf], got -1"),
    ("asma-iterations-0", asma("--iterations", "0"), "iterations must lie in [1, inf], got 0"),
    ("asma-tau-negative", asma("--tau", "-1"), "tau must lie in [0.0, inf], got -1.0"),
    ("asma-eps-300", asma("--eps", "300"), "eps 300 exceeds the image range"),
    ("asma-batch-images-0", asma("--batch-images", "0"), "batch_size must lie in [1, inf]"),
    ("asma-examples-negative", asma("--examples", "-1"), "--examples must lie in [0, inf], got -1"),
    ("asma-target-file-missing", asma("--target-mode", "file", "--target-file", "nosuch.png"),
     "target mask file nosuch.png does not exist"),
    ("asma-out-without-ablation", lambda f: [*asma()(f), "--out", str(f.tmp / "abl")],
     "--out applies with --ablation"),
    ("asma-ablation-out-under-a-file",
     lambda f: [*asma("--ablation")(f), "--out", f.afile + "/abl"], "afile is a file"),
    ("asma-classifier-checkpoint", asma(model="ck"),
     "holds a classification model, not a segmentation model"),
    ("asma-mask-unknown", asma("--mask", "dynamic"), "'dynamic' is not one of", USAGE),
    # -- train ----------------------------------------------------------------------------------
    ("train-epochs-0", train("--epochs", "0"), "epochs must lie in [1, inf], got 0"),
    ("train-epochs-negative", train("--epochs", "-2"), "epochs must lie in [1, inf], got -2"),
    ("train-batch-size-0", train("--batch-size", "0"), "batch_size must lie in [1, inf], got 0"),
    ("train-lr-negative", train("--lr", "-1"), "lr must lie in (0, inf], got -1.0"),
    ("train-lr-0", train("--lr", "0"), "lr must lie in (0, inf], got 0.0"),
    ("train-model-unknown", train("--model", "vgg99"),
     "unknown model 'vgg99': choose from "),
    ("train-dataset-unknown", lambda f: [*train()(f), "--dataset", "nosuch"],
     "unknown dataset 'nosuch': choose from"),
    ("train-augment-unknown", train("--augment", "rotate"), "'rotate' is not one of", USAGE),
    ("train-out-under-a-file", lambda f: [*train()(f), "--out", f.afile + "/model"],
     "afile is a file, not a folder"),
    ("train-out-read-only", lambda f: [*train()(f), "--out", str(READ_ONLY / "model")],
     "/proc is not a writable folder"),
    ("train-store-read-only", lambda f: [*train()(f), "--store", str(READ_ONLY / "s.db")],
     "/proc is not a writable folder"),
    ("train-seg-epochs-0", train_seg("--epochs", "0"), "epochs must lie in [1, inf], got 0"),
    ("train-seg-batch-size-0", train_seg("--batch-size", "0"), "batch_size must lie in [1, inf]"),
    ("train-seg-model-unknown", train_seg("--model", "vgg99"), "unknown model 'vgg99'"),
    # -- train-denoiser -------------------------------------------------------------------------
    ("denoiser-epochs-0", denoiser("--epochs", "0"), "epochs must lie in [1, inf], got 0"),
    ("denoiser-batch-size-0", denoiser("--batch-size", "0"), "batch_size must lie in [1, inf]"),
    ("denoiser-lr-negative", denoiser("--lr", "-1"), "lr must lie in (0, inf], got -1.0"),
    ("denoiser-width-0", denoiser("--width", "0"), "width must lie in [2, inf], got 0"),
    ("denoiser-patch-negative", denoiser("--patch", "-1"), "patch must lie in [4, inf], got -1"),
    ("denoiser-density-0", denoiser("--density-min", "0"), "densities must satisfy 0 < low"),
    ("denoiser-out-under-a-file", lambda f: [*denoiser()(f), "--out", f.afile + "/den"],
     "afile is a file, not a folder"),
    # -- evaluate -------------------------------------------------------------------------------
    ("evaluate-size-differs-from-model",
     lambda f: ["evaluate", "--model", f.ck, "--size", "32", "--store", f.db],
     "--size 32 differs from the model's input size 16"),
    ("evaluate-logit-attack-on-segmentation",
     lambda f: ["evaluate", "--model", f.unet, "--attack", "apgd-t", "--store", f.db],
     "apgd-t needs class logits"),
    ("evaluate-protocol-option-without-attack",
     lambda f: ["evaluate", "--model", f.ck, "--steps", "5", "--store", f.db],
     "--steps belongs to the attack protocol"),
    ("evaluate-dataset-unknown",
     lambda f: ["evaluate", "--model", f.ck, "--dataset", "nosuch", "--store", f.db],
     "unknown dataset 'nosuch'"),
    ("evaluate-store-read-only",
     lambda f: ["evaluate", "--model", f.ck, "--store", str(READ_ONLY / "s.db")],
     "/proc is not a writable folder"),
    # -- defend ---------------------------------------------------------------------------------
    ("defend-out-under-a-file", lambda f: [*defend()(f), "--out", f.afile + "/grid"],
     "afile is a file, not a folder"),
    ("defend-out-read-only", lambda f: [*defend()(f), "--out", str(READ_ONLY / "grid")],
     "/proc is not a writable folder"),
    ("defend-denoiser-unknown",
     lambda f: ["defend", "--model", f.ck, "--denoiser", "median0", "--store", f.attacked],
     "unknown denoiser 'median0': use a trained denoiser folder or one of none, median3"),
    ("defend-run-999", defend("--run", "999"), "no run with id 999"),
    ("defend-clean-limit-0", defend("--clean-limit", "0"), "--clean-limit must be at least 1"),
    ("defend-pgd-steps-0", defend("--adaptive", "--pgd-steps", "0"),
     "pgd_steps must lie in [1, inf], got 0"),
    ("defend-population-1", defend("--adaptive", "--onepixel-population", "1"),
     "onepixel_population must lie in [4, inf], got 1"),
    ("defend-linf-300", defend("--adaptive", "--linf", "300"),
     "eps 300 exceeds the image range (Linf budgets are on the [0,1] pixel scale: write 8/255"),
    ("defend-adaptive-option-without-adaptive", defend("--pgd-steps", "5"),
     "--pgd-steps applies with --adaptive"),
    # -- store, analyze, report -----------------------------------------------------------------
    ("export-run-999", lambda f: ["store", "export", "--store", f.attacked, "--table",
                                  "onepixel_results", "--run", "999", "--out",
                                  str(f.tmp / "x.csv")], "no run 999 in"),
    ("export-run-without-table", lambda f: ["store", "export", "--store", f.attacked, "--run",
                                            "1", "--out", str(f.tmp / "x.csv")],
     "--run selects rows of a result table: give --table too"),
    ("export-out-under-a-file", lambda f: ["store", "export", "--store", f.attacked, "--out",
                                           f.afile + "/x.csv"], "afile is a file, not a folder"),
    ("export-out-read-only", lambda f: ["store", "export", "--store", f.attacked, "--out",
                                        str(READ_ONLY / "x.csv")], "/proc is not a writable folder"),
    ("export-suffix-unknown", lambda f: ["store", "export", "--store", f.attacked, "--out",
                                         str(f.tmp / "x.txt")], "unknown suffix '.txt'"),
    ("export-table-unknown", lambda f: ["store", "export", "--store", f.attacked, "--table",
                                        "nosuch", "--out", str(f.tmp / "x.csv")],
     "no table 'nosuch'"),
    ("analyze-run-999", lambda f: ["analyze", "--store", f.attacked, "--run", "999", "--out",
                                   str(f.tmp / "an")], "no run with id 999"),
    ("analyze-out-under-a-file", lambda f: ["analyze", "--store", f.attacked, "--out",
                                            f.afile + "/an"], "afile is a file, not a folder"),
    ("report-out-under-a-file", lambda f: ["report", "--store", f.attacked, "--out",
                                           f.afile + "/rep"], "afile is a file, not a folder"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_option_is_one_error_line_and_writes_nothing(case, shared, tmp_path, capsys,
                                                         monkeypatch):
    _id, build, needle, *kind = case
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    (work / "afile").write_text("not a folder")
    fx = Fx(ck=shared["ck"], unet=shared["unet"], attacked=shared["attacked"], tmp=work)
    runs_before = run_count(shared["attacked"])
    shared_before = tree(Path(shared["attacked"]).parent)
    code, _out, err = run_cli(capsys, *build(fx))
    assert "Traceback" not in err, err
    assert code == 2, err
    last = err.strip().splitlines()[-1] if err.strip() else ""
    if kind == [USAGE]:
        # click's usage block (cli/main.py may turn it into one line): 'error:' in any case
        assert last.lower().startswith("error:") and needle in last, err
    else:
        assert len(err.strip().splitlines()) == 1, err
        assert last.startswith("error: ") and needle in last, err
    assert tree(work) == {"afile"}, "files were written"
    assert run_count(shared["attacked"]) == runs_before, "a run was recorded"
    assert tree(Path(shared["attacked"]).parent) == shared_before, "files were written"


def test_enough_cases():
    assert len(CASES) >= 60


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root can write in a chmod 555 folder")
def test_read_only_folder_by_permissions(shared, tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        code, _, err = run_cli(capsys, "store", "export", "--store", shared["attacked"], "--out",
                               str(ro / "x.csv"))
        assert code == 2 and err.startswith("error: --out") and "is not a writable folder" in err
        assert not any(ro.iterdir())
    finally:
        ro.chmod(0o755)
