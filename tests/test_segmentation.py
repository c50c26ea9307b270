"""Segmentation data, metrics, target masks, the Segmenter, U-Net training and the CLI, on tiny
generated folders (greyscale and RGB, several sizes); one realdata test on DSB2018."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_util import run_json
from PIL import Image

from medrobust.attacks.seg_targets import (
    TargetSpec,
    dilate_mask,
    erase_largest_object,
    pick_other,
    shift_mask,
)
from medrobust.cli.main import main
from medrobust.data import load_dataset, load_from_spec
from medrobust.data.segfolder import read_mask
from medrobust.errors import DataError
from medrobust.metrics.segmentation import per_image_metrics, segmentation_metrics
from medrobust.models.segmenter import Segmenter, load_segmenter, save_segmenter
from medrobust.models.unet import unet
from medrobust.training.segmentation import SegTrainConfig, evaluate_segmenter, train_segmenter

pytestmark = pytest.mark.usefixtures("one_thread_module")


def blob_image(rng: np.random.Generator, h: int, w: int, colour: bool
               ) -> tuple[np.ndarray, np.ndarray]:
    """Bright disks on a dark noisy background, and their 0/255 mask."""
    yy, xx = np.mgrid[:h, :w]
    mask = np.zeros((h, w), bool)
    for _ in range(rng.integers(1, 4)):
        cy, cx = rng.integers(4, h - 4), rng.integers(4, w - 4)
        r = rng.integers(3, max(4, min(h, w) // 4))
        mask |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    base = rng.normal(50, 15, (h, w)) + mask * 140
    img = np.clip(base, 0, 255).astype(np.uint8)
    if colour:
        img = np.stack([img, (img * 0.8).astype(np.uint8), img // 2], axis=2)
    return img, (mask * 255).astype(np.uint8)


def make_folder(root: Path, n: int, sizes: list[tuple[int, int]], colour: bool, seed: int = 0,
                mask_suffix: str = ".png") -> Path:
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        h, w = sizes[i % len(sizes)]
        img, mask = blob_image(rng, h, w, colour)
        Image.fromarray(img).save(root / "images" / f"img{i:03d}.png")
        Image.fromarray(mask).save(root / "masks" / f"img{i:03d}{mask_suffix}")
    return root


# -- data -----------------------------------------------------------------------------------------

def test_segfolder_rgb_mixed_sizes_and_seeded_split(tmp_path):
    root = make_folder(tmp_path / "rgb", 20, [(40, 30), (50, 50), (33, 61)], colour=True)
    parts = {s: load_dataset("segfolder", s, data_dir=root, size=32, seed=1)
             for s in ("train", "val", "test")}
    assert [len(parts[s]) for s in ("train", "val", "test")] == [14, 3, 3]
    names = [n for d in parts.values() for n in d.names]
    assert sorted(names) == [f"img{i:03d}" for i in range(20)]  # disjoint and complete
    tr = parts["train"]
    assert tr.images.shape == (14, 32, 32, 3) and tr.images.dtype == np.uint8
    assert tr.masks.shape == (14, 32, 32) and set(np.unique(tr.masks)) <= {0, 1}
    assert tr.class_names == ("background", "foreground") and 0 < tr.foreground_fraction() < 1
    again = load_dataset("segfolder", "test", data_dir=root, size=32, seed=1)
    other = load_dataset("segfolder", "test", data_dir=root, size=32, seed=2)
    assert again.names == parts["test"].names and other.names != again.names
    reloaded = load_from_spec(parts["test"].spec)
    assert np.array_equal(reloaded.images, again.images)
    with pytest.raises(DataError, match="segmentation"):
        _ = tr.labels  # classification code gets one clear line


def test_segfolder_greyscale_forced_channels_and_tiles(tmp_path):
    root = make_folder(tmp_path / "grey", 6, [(48, 40)], colour=False)
    ds = load_dataset("segfolder", "train", data_dir=root, size=24, val_fraction=0.2,
                      test_fraction=0.2)
    assert ds.channels == 1 and ds.images.shape[1:] == (24, 24, 1)
    assert load_dataset("segfolder", "train", data_dir=root, size=24, channels=3).channels == 3
    tiles = load_dataset("segfolder", "train", data_dir=root, size=16, mode="tile",
                         val_fraction=0.2, test_fraction=0.2)
    # 48x40 -> rows at 0,16,32 and columns at 0,16,24 (last tile flush with the edge)
    assert len(tiles) == 9 * len(ds) and tiles.names[0].endswith("@0,0")
    assert tiles.names[8].endswith("@32,24")
    img = np.asarray(Image.open(root / "images" / f"{ds.names[0]}.png"))
    assert np.array_equal(tiles.images[8, :, :, 0], img[32:48, 24:40])


def test_segfolder_errors(tmp_path):
    root = make_folder(tmp_path / "bad", 3, [(20, 20)], colour=False)
    (root / "masks" / "img001.png").unlink()
    with pytest.raises(DataError, match="no mask"):
        load_dataset("segfolder", "train", data_dir=root)
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("segfolder", "train", data_dir=tmp_path / "nothing")


def test_mask_reading_rules(tmp_path):
    noisy = np.array([[0, 3, 252, 255]], dtype=np.uint8)  # JPEG-like 0/255
    Image.fromarray(noisy).save(tmp_path / "a.png")
    assert read_mask(tmp_path / "a.png").tolist() == [[0, 0, 1, 1]]
    index = np.array([[0, 1, 2, 2]], dtype=np.uint8)
    Image.fromarray(index).save(tmp_path / "b.png")
    assert read_mask(tmp_path / "b.png").tolist() == [[0, 1, 2, 2]]
    assert read_mask(tmp_path / "b.png", "binary").tolist() == [[0, 1, 1, 1]]
    inst = np.array([[0, 1, 300, 2]], dtype=np.uint16)  # 16-bit instance labels
    Image.fromarray(inst).save(tmp_path / "c.png")
    assert read_mask(tmp_path / "c.png").tolist() == [[0, 1, 1, 1]]


# -- targets and metrics ----------------------------------------------------------------------------

def test_target_mask_builders(tmp_path):
    m = np.zeros((8, 8), np.int64)
    m[1:3, 1:3] = 1  # 4 pixels
    m[5:8, 4:7] = 1  # 9 pixels: the largest
    erased = erase_largest_object(m)
    assert erased.sum() == 4 and erased[1:3, 1:3].all()
    assert erase_largest_object(np.zeros((4, 4), np.int64)).sum() == 0
    shifted = shift_mask(m, dx=2, dy=-1)  # two columns right, one row up
    assert shifted[0, 3] == 1 and shifted[0:2, 3:5].all() and shifted.sum() == 4 + 6
    assert dilate_mask(m, 1).sum() > m.sum() and (dilate_mask(m, 1) >= m).all()
    picks = [pick_other(5, i, seed=3) for i in range(5)]
    assert all(p != i and 0 <= p < 5 for i, p in enumerate(picks))
    assert picks == [pick_other(5, i, seed=3) for i in range(5)]
    masks = np.stack([m, erased, shifted])
    target, src = TargetSpec("other", seed=0).build(masks, 1)
    assert src in (0, 2) and np.array_equal(target, masks[src])
    Image.fromarray((m * 255).astype(np.uint8)).resize((16, 16), Image.NEAREST).save(
        tmp_path / "t.png")
    from_file, _ = TargetSpec("file", file=str(tmp_path / "t.png")).build(masks, 0)
    assert np.array_equal(from_file, m)


def test_segmentation_metrics_on_hand_made_masks():
    pred = np.array([[[1, 1, 0, 0]], [[0, 0, 0, 0]], [[1, 0, 0, 0]]])
    ref = np.array([[[1, 0, 0, 0]], [[0, 0, 0, 0]], [[0, 0, 0, 1]]])
    m = per_image_metrics(pred, ref)
    assert m["iou"].tolist() == pytest.approx([0.5, 1.0, 0.0])
    assert m["dice"].tolist() == pytest.approx([2 / 3, 1.0, 0.0])
    assert m["pixel_accuracy"].tolist() == pytest.approx([0.75, 1.0, 0.5])
    summary = segmentation_metrics(pred, ref)
    assert summary["n"] == 3 and summary["dice"] == pytest.approx((2 / 3 + 1) / 3)


# -- models and training ----------------------------------------------------------------------------

def test_segmenter_pads_odd_sizes_and_round_trips(tmp_path):
    torch.manual_seed(0)
    seg = Segmenter(unet(in_channels=3, num_classes=2, channels=(4, 8), strides=(2,)),
                    mean=[0.5, 0.4, 0.3], std=[0.2, 0.2, 0.2],
                    class_names=("background", "foreground"), multiple=2)
    x = np.random.default_rng(0).integers(0, 256, (2, 13, 17, 3), dtype=np.uint8)
    assert seg(seg.to_tensor(x)).shape == (2, 2, 13, 17)
    pred = seg.predict(x)
    assert pred.shape == (2, 13, 17) and pred.dtype == np.int64
    save_segmenter(seg, tmp_path / "ck", {"model": "unet", "model_kwargs": {
        "channels": [4, 8], "strides": [2]}})
    back = load_segmenter(tmp_path / "ck")
    assert back.multiple == 2 and back.class_names == seg.class_names
    assert np.array_equal(back.predict(x), pred)


def test_tiny_unet_learns_blobs(tmp_path):
    root = make_folder(tmp_path / "blobs", 60, [(32, 32)], colour=False, seed=4)
    tr = load_dataset("segfolder", "train", data_dir=root, size=32, val_fraction=0.2,
                      test_fraction=0.1)
    va = load_dataset("segfolder", "val", data_dir=root, size=32, val_fraction=0.2,
                      test_fraction=0.1)
    cfg = SegTrainConfig(model_kwargs={"channels": (8, 16), "strides": (2,)}, epochs=4,
                         batch_size=8, lr=1e-2, seed=0)
    res = train_segmenter(tr, va, cfg)
    assert res.val_metrics["dice"] > 0.8, res.history
    assert evaluate_segmenter(res.segmenter, va)["dice"] == pytest.approx(res.val_metrics["dice"])
    again = train_segmenter(tr, va, cfg)
    assert [h["train_loss"] for h in again.history] == [h["train_loss"] for h in res.history]


# -- CLI ------------------------------------------------------------------------------------------------



@pytest.mark.slow
def test_cli_train_attack_ablation_report(tmp_path, capsys):
    root = make_folder(tmp_path / "data", 16, [(30, 26), (36, 36)], colour=True, seed=2)
    db, ck = str(tmp_path / "s.db"), str(tmp_path / "unet")
    trained = run_json(capsys, "train", "--task", "segmentation", "--dataset", "segfolder",
                       "--data-dir", str(root), "--size", "24", "--epochs", "1",
                       "--batch-size", "8", "--out", ck, "--store", db)
    assert trained["task"] == "segmentation" and 0 <= trained["test"]["dice"] <= 1
    assert json.loads((Path(ck) / "meta.json").read_text())["task"] == "segmentation"

    args = ("attack", "asma", "--task", "segmentation", "--model", ck, "--split", "train",
            "--limit", "3", "--iterations", "3", "--target-mode", "erase-one", "--store", db)
    first = run_json(capsys, *args)
    assert first["images"] == 3 and first["attacked_now"] == 3 and not first["resumed"]
    assert 0 <= first["mean_iou_target"] <= 1 and first["mean_linf"] <= 0.1 + 1e-6
    again = run_json(capsys, *args)
    assert again["resumed"] and again["attacked_now"] == 0 and again["run_id"] == first["run_id"]

    pgd = run_json(capsys, "attack", "pgd", "--task", "segmentation", "--model", ck,
                   "--dataset", "segfolder", "--data-dir", str(root), "--split", "train",
                   "--limit", "2", "--eps", "4/255", "--steps", "2", "--store", db)
    assert pgd["task"] == "segmentation" and pgd["mean_linf"] <= 4 / 255 + 1e-7
    assert pgd["mean_iou_target"] is None  # untargeted: scored against the truth only

    abl = run_json(capsys, "attack", "asma", "--model", ck, "--split", "train", "--limit", "2",
                   "--iterations", "2", "--ablation", "--out", str(tmp_path / "abl"),
                   "--store", db)
    assert [r["variant"] for r in abl["ablation"]] == ["static", "adaptive", "asma", "pgd"]
    ref = next(r for r in abl["ablation"] if r["variant"] == "asma")
    for row in abl["ablation"]:
        assert row["l2"] <= ref["l2"] + 1e-5  # matched L2 budget
    assert (tmp_path / "abl" / "ablation.md").read_text().count("\n") == 6

    code = main(["report", "--store", db, "--out", str(tmp_path / "rep")])
    capsys.readouterr()
    assert code == 0
    html = (tmp_path / "rep" / "report.html").read_text()
    assert "Segmentation attacks" in html and "segmentation attack panels" in html


def test_cli_pgd_on_a_classifier(tmp_path, capsys, tiny_classifier, tiny_synthetic):
    from medrobust.models import save_checkpoint

    ck = tmp_path / "clf"
    save_checkpoint(tiny_classifier, ck, {"model": "smallcnn", "model_kwargs": {"width": 8},
                                          "dataset": tiny_synthetic[2].spec})
    db = str(tmp_path / "c.db")
    out = run_json(capsys, "attack", "pgd", "--model", str(ck), "--limit", "12", "--eps",
                   "8/255", "--steps", "5", "--store", db)
    assert out["task"] == "classification" and out["images"] == 12
    assert out["adv_accuracy"] <= out["clean_accuracy"]
    assert out["mean_linf"] <= 8 / 255 + 1e-7
    eps0 = run_json(capsys, "attack", "ifgsm", "--model", str(ck), "--limit", "12", "--eps",
                    "0", "--store", db)
    assert eps0["adv_accuracy"] == out["clean_accuracy"] and eps0["mean_l2"] == 0


def test_cli_errors_are_one_line(tmp_path, capsys):
    root = make_folder(tmp_path / "d", 4, [(20, 20)], colour=False)
    code = main(["train", "--dataset", "segfolder", "--data-dir", str(root), "--out",
                 str(tmp_path / "x"), "--store", str(tmp_path / "s.db"), "--epochs", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "segmentation" in err and len(err.strip().splitlines()) == 1


@pytest.mark.realdata
def test_dsb2018_loads_as_a_segfolder(shared_data):
    ds = load_dataset("segfolder", "test", data_dir=shared_data / "dsb2018_nuclei", size=64)
    assert len(ds) == 100 and ds.images.shape == (100, 64, 64, 3)
    assert set(np.unique(ds.masks)) == {0, 1} and 0.05 < ds.foreground_fraction() < 0.4
