"""A DICOM class folder and NIfTI volumes go through train, attack and report from the CLI
(issue 24): the window the user chose is recorded with the model's data and used again when the
attack reopens it, and volumes are sliced into images named by their slice."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from cli_util import run_cli, run_json
from test_medical_formats import write_dicom, write_nifti

from medrobust.models.checkpoint import read_meta


def _disc(radius: float, size: int = 16) -> np.ndarray:
    y, x = np.mgrid[:size, :size]
    return (x - size / 2) ** 2 + (y - size / 2) ** 2 <= radius ** 2


def test_a_dicom_class_folder_trains_attacks_and_reports(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for label, radius in (("small", 3.0), ("large", 6.0)):
        for k in range(12):  # CT-like values in Hounsfield units: tissue 40 HU, the disc 300
            hu = rng.normal(40, 20, (16, 16)) + 260 * _disc(radius + rng.uniform(-1, 1))
            write_dicom(tmp_path / "data" / label / f"{label}{k}.dcm",
                        np.rint(hu).astype(np.int16), RescaleSlope=1, RescaleIntercept=0)
    db, model = str(tmp_path / "s.db"), str(tmp_path / "m")
    out = run_json(capsys, "train", "--dataset", "folder", "--data-dir", str(tmp_path / "data"),
                   "--size", "16", "--window", "150,400", "--epochs", "3", "--width", "4",
                   "--batch-size", "8", "--out", model, "--store", db)
    spec = read_meta(model)["dataset"]  # the train split's: each of its files used the window
    assert spec["window"] == [150.0, 400.0]
    assert spec["windowing"]["files"] == {"user": out["sizes"]["train"]}
    assert out["sizes"]["train"] + out["sizes"]["val"] + out["sizes"]["test"] == 24
    # the attack reopens the model's data from its spec: the same window, the same images
    attack = run_json(capsys, "attack", "pgd", "--model", model, "--split", "train", "--limit",
                      "6", "--eps", "8/255", "--steps", "3", "--store", db)
    assert attack["images"] == 6 and attack["adv_accuracy"] <= attack["clean_accuracy"]
    report = run_json(capsys, "report", "--store", db, "--out", str(tmp_path / "rep"))
    assert "Classification: accuracy" in Path(report["report"]).read_text()
    for command in (["train"], ["train-denoiser"], ["demo", "--skip-defence"]):
        # every command that shows --window hands it to the loader (once silently dropped by
        # train-denoiser and demo), which refuses it on data not read from files
        code, _, err = run_cli(capsys, *command, "--dataset", "synthetic", "--window", "40,400",
                               "--out", str(tmp_path / "m2"), *(
                                   [] if command[0] == "demo" else ["--store", db]))
        assert code == 2 and "window applies to datasets read from image files" in err, command


def test_nifti_volumes_train_a_segmenter_attacked_and_reported(tmp_path, capsys):
    rng = np.random.default_rng(1)
    for v in range(6):  # six 16x16x4 volumes: a bright blob on noise, its mask
        mask = np.zeros((16, 16, 4), np.uint8)
        mask[3 + v % 3:10 + v % 3, 4:12, :] = 1
        image = rng.normal(0, 50, mask.shape) + 400.0 * mask
        write_nifti(tmp_path / "seg" / "images" / f"vol{v}.nii.gz", image.astype(np.float32))
        write_nifti(tmp_path / "seg" / "masks" / f"vol{v}_mask.nii.gz", mask)
    db, model = str(tmp_path / "s.db"), str(tmp_path / "m")
    out = run_json(capsys, "train", "--task", "segmentation", "--dataset", "segfolder",
                   "--data-dir", str(tmp_path / "seg"), "--size", "16", "--epochs", "2",
                   "--batch-size", "4", "--out", model, "--store", db)
    # slices of one volume stay in one split: every split holds whole volumes of 4 slices
    assert all(n % 4 == 0 for n in out["sizes"].values()) and sum(out["sizes"].values()) == 24
    assert read_meta(model)["dataset"]["axis"] == "z"
    attack = run_json(capsys, "attack", "pgd", "--model", model, "--split", "train", "--limit",
                      "4", "--eps", "4/255", "--steps", "2", "--store", db)
    assert attack["images"] == 4
    report = run_json(capsys, "report", "--store", db, "--out", str(tmp_path / "rep"))
    html = Path(report["report"]).read_text()
    assert "Segmentation" in html
    with open(Path(model) / "meta.json") as f:
        assert "windowing" in json.load(f)["dataset"]
