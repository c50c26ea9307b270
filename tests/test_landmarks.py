"""Landmark detection pieces: folder loader, heatmap/offset codec, loss, radial-error metric, trainer."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medrobust.data.landmarks import load_from_spec, load_landmarks, to_original, to_resized
from medrobust.errors import DataError
from medrobust.metrics.landmarks import RadialError
from medrobust.models.landmark_codec import decode, default_radius, encode
from medrobust.models.landmark_unet import LandmarkModel, landmark_unet
from medrobust.training.landmark_loss import LandmarkLoss
from medrobust.training.landmarks import augment_affine, evaluate_landmarks, train_landmark_model

K = 3


def make_folder(root: Path, n: int = 12, h: int = 32, w: int = 40, seed: int = 0, rgb: bool = False,
                splits: dict[str, str] | None = None, pixel_size: float | None = 0.5) -> np.ndarray:
    """n images (H x W) with K blobs of different brightness at seeded positions; returns (n,K,2)."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    base = np.array([[0.3, 0.3], [0.7, 0.35], [0.5, 0.75]]) * [w, h]
    pts = base[None] + rng.uniform(-0.12, 0.12, (n, K, 2)) * [w, h]
    yy, xx = np.mgrid[0:h, 0:w]
    rows = ["id," + ",".join(f"x{k + 1},y{k + 1}" for k in range(K))]
    for i in range(n):
        img = np.full((h, w), 20.0)
        for k in range(K):
            img += (235 - 60 * k) * np.exp(-((xx - pts[i, k, 0]) ** 2 + (yy - pts[i, k, 1]) ** 2) / 4.0)
        arr = np.clip(img, 0, 255).astype(np.uint8)
        pil = Image.fromarray(np.stack([arr] * 3, -1) if rgb else arr)
        pil.save(root / "images" / f"{i:03d}.png")
        rows.append(f"{i:03d}," + ",".join(f"{pts[i, k, 0]:.4f},{pts[i, k, 1]:.4f}" for k in range(K)))
    (root / "landmarks.csv").write_text("\n".join(rows) + "\n")
    if pixel_size is not None:
        (root / "metadata.csv").write_text(
            "id,note,pixel_size_mm\n" + "".join(f"{i:03d},x,{pixel_size}\n" for i in range(n)))
    if splits is not None:
        (root / "splits.csv").write_text("id,split\n" + "".join(f"{i},{s}\n" for i, s in splits.items()))
    return pts


# ---------------------------------------------------------------- dataset

def test_dataset_shapes_and_spec(tmp_path):
    make_folder(tmp_path / "lm")
    ds = load_landmarks(tmp_path / "lm", "train", size=(24, 20), seed=1)
    n = len(ds)
    assert ds.images.shape == (n, 24, 20, 1) and ds.images.dtype == np.uint8
    assert ds.landmarks.shape == (n, K, 2) and ds.landmarks.dtype == np.float32
    assert ds.original_sizes.tolist() == [[32, 40]] * n
    np.testing.assert_allclose(ds.scales, [[20 / 40, 24 / 32]] * n)
    np.testing.assert_allclose(ds.pixel_size_mm, 0.5)
    assert ds.num_landmarks == K and ds.size == (24, 20) and ds.channels == 1
    again = load_from_spec(ds.spec, "train")
    assert again.ids == ds.ids and np.array_equal(again.images, ds.images)
    rgb = load_landmarks(_fresh(tmp_path, "rgb", rgb=True), "val", size=16)
    assert rgb.images.shape[1:] == (16, 16, 3)


def _fresh(tmp_path: Path, name: str, **kw) -> Path:
    make_folder(tmp_path / name, **kw)
    return tmp_path / name


def test_anisotropic_scaling_is_exact(tmp_path):
    root = tmp_path / "one"
    (root / "images").mkdir(parents=True)
    h, w = 64, 80
    yy, xx = np.mgrid[0:h, 0:w]
    img = 255 * np.exp(-((xx - 30.0) ** 2 + (yy - 20.0) ** 2) / (2 * 3.0 ** 2))
    for i in range(3):
        Image.fromarray(img.astype(np.uint8)).save(root / "images" / f"{i}.png")
    (root / "landmarks.csv").write_text("id,x1,y1\n" + "".join(f"{i},30,20\n" for i in range(3)))
    ds = load_landmarks(root, "train", size=(32, 60), val_fraction=0, test_fraction=0)
    sx, sy = 60 / 80, 32 / 64
    expected = ((30 + 0.5) * sx - 0.5, (20 + 0.5) * sy - 0.5)  # (22.375, 9.75)
    np.testing.assert_allclose(ds.landmarks[0, 0], expected, atol=1e-6)
    # the blob in the resized image sits where the landmark was mapped (pixel-centre mapping)
    a = ds.images[0, :, :, 0].astype(np.float64)
    a = np.where(a > 10, a, 0)
    ys, xs = np.mgrid[0:32, 0:60]
    centroid = ((a * xs).sum() / a.sum(), (a * ys).sum() / a.sum())
    np.testing.assert_allclose(centroid, expected, atol=0.05)
    np.testing.assert_allclose(ds.to_original(ds.landmarks[0], 0), [[30, 20]], atol=1e-5)
    p = np.array([[1.25, 7.5]])
    np.testing.assert_allclose(to_original(to_resized(p, [sx, sy]), [sx, sy]), p)


def test_splits_csv_honoured_and_seeded_split_reproducible(tmp_path):
    splits = {f"{i:03d}": ("train" if i < 7 else "val" if i < 9 else "test2") for i in range(12)}
    root = _fresh(tmp_path, "s", splits=splits)
    assert load_landmarks(root, "test2", size=16).ids == ("009", "010", "011")
    assert len(load_landmarks(root, "train", size=16)) == 7
    plain = _fresh(tmp_path, "p")
    a = [load_landmarks(plain, s, size=16, seed=5).ids for s in ("train", "val", "test")]
    b = [load_landmarks(plain, s, size=16, seed=5).ids for s in ("train", "val", "test")]
    c = load_landmarks(plain, "train", size=16, seed=6).ids
    assert a == b and sorted(i for ids in a for i in ids) == [f"{i:03d}" for i in range(12)]
    assert c != a[0]


def _bad(tmp_path: Path, name: str, edit) -> Path:
    root = _fresh(tmp_path, name)
    edit(root)
    return root


def _replace_line(root: Path, line: int, text: str, file: str = "landmarks.csv") -> None:
    lines = (root / file).read_text().splitlines()
    lines[line] = text
    (root / file).write_text("\n".join(lines) + "\n")


BAD = {
    "no images folder": (lambda r: [p.unlink() for p in (r / "images").iterdir()] and (r / "images").rmdir(),
                         "images", {}),
    "missing image": (lambda r: (r / "images" / "003.png").unlink(), "no image", {}),
    "image not in csv": (lambda r: _replace_line(r, 4, ""), "missing in", {}),
    "wrong column count": (lambda r: _replace_line(r, 2, "001,1,2,3"), "columns", {}),
    "non-numeric": (lambda r: _replace_line(r, 2, "001,a,2,3,4,5,6"), "not a number", {}),
    "nan": (lambda r: _replace_line(r, 2, "001,nan,2,3,4,5,6"), "finite", {}),
    "outside": (lambda r: _replace_line(r, 2, "001,1,2,3,4,500,6"), "outside", {}),
    "bad header": (lambda r: _replace_line(r, 0, "id,x1,y1,x2"), "header", {}),
    "unknown split": (lambda r: (r / "splits.csv").write_text(
        "id,split\n" + "".join(f"{i:03d},train\n" for i in range(12))), "unknown split", {"split": "val"}),
    "unknown seeded split": (lambda r: None, "unknown split", {"split": "holdout"}),
    "empty split": (lambda r: None, "empty", {"split": "val", "val_fraction": 0.0}),
    "bad pixel size": (lambda r: _replace_line(r, 1, "000,x,-1", "metadata.csv"), "pixel_size_mm", {}),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_folders_give_one_line(tmp_path, case):
    edit, words, kw = BAD[case]
    root = _bad(tmp_path, "b", edit)
    kw = dict(kw)
    split = kw.pop("split", "train")
    with pytest.raises(DataError) as info:
        load_landmarks(root, split, size=16, **kw)
    msg = str(info.value)
    assert "\n" not in msg and words in msg, msg


# ---------------------------------------------------------------- codec

@pytest.mark.parametrize("radius", [3.0, 5.0, 10.0])
def test_encode_decode_round_trip(radius):
    gen = torch.Generator().manual_seed(int(radius))
    h, w = 80, 64
    pts = torch.rand(6, 4, 2, generator=gen) * torch.tensor([w - 1.0, h - 1.0])
    heat, offsets, mask = encode(pts, (h, w), radius)
    assert heat.shape == (6, 4, h, w) and offsets.shape == (6, 8, h, w) and mask.shape == heat.shape
    assert float(heat.max()) <= 1 and float(heat[mask == 0].abs().max()) == 0
    # the top pi R^2 pixels are the disk's: probabilities and logits decode alike
    logits = torch.logit(heat.clamp(1e-4, 1 - 1e-4))
    for maps in (heat, logits):
        got = decode(torch.cat([maps, offsets], 1), radius)
        assert float((got - pts).abs().max()) < 0.5
    coarse = decode(torch.cat([heat, offsets], 1), radius, refine=False)
    assert float((coarse - pts).abs().max()) <= 0.5 + 1e-5
    assert float((decode(torch.cat([heat, offsets], 1), radius) - pts).abs().max()) < 1e-3


def test_encode_formula_at_one_pixel():
    pts = torch.tensor([[[10.3, 7.6]]])
    heat, offsets, mask = encode(pts, (20, 20), 4.0)
    d2 = (10.3 - 12) ** 2 + (7.6 - 9) ** 2
    assert float(heat[0, 0, 9, 12]) == pytest.approx(math.exp(-d2 / 32), rel=1e-5)
    assert float(offsets[0, 0, 9, 12]) == pytest.approx((10.3 - 12) / 4, abs=1e-6)
    assert float(offsets[0, 1, 9, 12]) == pytest.approx((7.6 - 9) / 4, abs=1e-6)
    assert float(mask[0, 0, 7, 15]) == 0  # d = 5.6 > 4
    assert default_radius((200, 160)) == 10.0


# ---------------------------------------------------------------- loss

@pytest.mark.parametrize("kind", ["bce", "dice"])
def test_loss_terms_per_sample_and_minimal_at_target(kind):
    pts = torch.tensor([[[5.0, 6.0], [12.0, 3.5]], [[8.0, 8.0], [2.0, 14.0]]])
    heat, offsets, mask = encode(pts, (16, 16), 3.0)
    target = torch.cat([torch.logit(heat.clamp(1e-6, 1 - 1e-6)), offsets], 1)
    loss = LandmarkLoss(kind)
    at = loss(target, heat, offsets, mask)
    assert at["heatmap"].shape == (2,) and at["offset"].shape == (2,) and at["total"].shape == (2,)
    assert float(at["offset"].abs().max()) < 1e-6
    torch.testing.assert_close(at["total"], loss.total(at))
    moved = target.clone()
    moved[1, :2] -= 3.0  # only sample 1 changes: fainter heatmaps, offsets off by 0.3
    moved[1, 2:] += 0.3
    off = loss(moved, heat, offsets, mask)
    assert torch.equal(off["heatmap"][0], at["heatmap"][0])
    assert torch.equal(off["offset"][0], at["offset"][0])
    assert float(off["heatmap"][1]) > float(at["heatmap"][1])
    assert float(off["offset"][1]) == pytest.approx(0.6)
    if kind == "bce":  # the minimum of BCE with soft targets is the targets' own entropy
        t = heat.clamp(1e-6, 1 - 1e-6)
        ent = -(t * t.log() + (1 - t) * (1 - t).log()).flatten(1).mean(1)
        torch.testing.assert_close(at["heatmap"], ent, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------- metric

def test_radial_error_hand_computed():
    truth = np.zeros((2, 3, 2))
    pred = np.array([[[1, 0], [0, 1], [3, 4]], [[0, 0], [2, 0], [0, 0.5]]], dtype=float)
    scale = np.array([[0.5, 0.25], [1.0, 0.5]])   # resized / original
    # original px: image 0: 2, 4, sqrt(6^2 + 16^2); image 1: 0, 2, 1
    px = np.array([[2, 4, math.hypot(6, 16)], [0, 2, 1]])
    mm = px * np.array([[0.5], [0.1]])
    m = RadialError()
    m.update(pred[:1], truth[:1], scale[:1], [0.5])
    m(pred[1:], truth[1:], scale[1:], np.array([0.1]))
    out = m.aggregate()
    assert out["unit"] == "mm" and out["n"] == 2
    assert out["mre"] == pytest.approx(mm.mean()) and out["mre_std"] == pytest.approx(mm.std())
    assert out["per_landmark"] == pytest.approx(mm.mean(0).tolist())
    assert out["sdr"] == pytest.approx({"2.0": 5 / 6, "2.5": 5 / 6, "3.0": 5 / 6, "4.0": 5 / 6})
    m.reset()
    m.update(torch.as_tensor(pred), torch.as_tensor(truth), torch.as_tensor(scale), None)
    out = m.aggregate()
    assert out["unit"] == "px" and out["mre"] == pytest.approx(px.mean())
    assert out["sdr"]["2.0"] == pytest.approx(4 / 6) and out["sdr"]["4.0"] == pytest.approx(5 / 6)


# ---------------------------------------------------------------- model and training

def test_model_shapes_any_size():
    net = landmark_unet(1, 4, width=4)
    model = LandmarkModel(net, [0.5], [0.2], 4, 3.0).eval()
    for h, w in ((24, 20), (25, 19)):
        x = torch.rand(2, 1, h, w)
        assert model(x).shape == (2, 12, h, w)
    pred = model.predict(np.zeros((3, 24, 20, 1), np.uint8))
    assert pred.shape == (3, 4, 2) and pred.dtype == np.float32


def test_augmentation_moves_landmarks_exactly():
    pts = torch.tensor([[[12.3, 8.7], [30.0, 20.0]]])
    heat, _, _ = encode(pts, (32, 40), 4.0)
    x = heat[:, :1]
    gen = torch.Generator().manual_seed(0)
    out, moved = augment_affine(x, pts, gen, zoom=0.1, shift=0.05)
    assert torch.equal(heat[:, :1], x)  # input untouched
    a = out[0, 0]
    ys, xs = torch.meshgrid(torch.arange(32.0), torch.arange(40.0), indexing="ij")
    centroid = torch.stack([(a * xs).sum() / a.sum(), (a * ys).sum() / a.sum()])
    torch.testing.assert_close(centroid, moved[0, 0], atol=0.1, rtol=0)




@pytest.mark.slow
def test_smoke_training_reduces_mre(tmp_path, one_thread):
    root = _fresh(tmp_path, "t", n=48, h=32, w=40)
    train = load_landmarks(root, "train", size=(32, 40), val_fraction=0.2, test_fraction=0.0)
    val = load_landmarks(root, "val", size=(32, 40), val_fraction=0.2, test_fraction=0.0)
    torch.manual_seed(0)
    untrained = LandmarkModel(landmark_unet(1, K, width=4), [0.2], [0.2], K, 3.0)
    before = evaluate_landmarks(untrained, val)["mre"]
    model, history = train_landmark_model(train, val, epochs=30, batch_size=8, lr=3e-3, radius=3.0,
                                          width=4, seed=0, augment=False, heatmap_loss="dice",
                                          heatmap_weight=1.0)
    after = evaluate_landmarks(model, val)
    assert after["unit"] == "mm" and len(history) == 30
    assert after["mre"] == pytest.approx(min(r["val_mre"] for r in history))
    assert after["mre"] < 0.5 * before, (before, [r["val_mre"] for r in history])
    runs = [train_landmark_model(train, val, epochs=2, batch_size=8, lr=3e-3, radius=3.0, width=4,
                                 seed=0, augment=True)[1] for _ in range(2)]
    assert [r["train_loss"] for r in runs[0]] == [r["train_loss"] for r in runs[1]]


@pytest.mark.realdata
def test_isbi2015_ceph_loads(shared_data):
    root = shared_data / "isbi2015_ceph"
    if not root.is_dir():
        pytest.skip("isbi2015_ceph is absent")
    sizes = {}
    for split in ("train", "val", "test"):
        ds = load_landmarks(root, split, size=(200, 160))
        sizes[split] = len(ds)
        assert ds.images.shape[1:] == (200, 160, 1) and ds.num_landmarks == 19
        np.testing.assert_allclose(ds.pixel_size_mm, 0.375)
        np.testing.assert_allclose(ds.scales, [[160 / 516, 200 / 640]] * len(ds))
        assert ds.original_sizes.tolist() == [[640, 516]] * len(ds)
    assert sizes == {"train": 150, "val": 50, "test": 100}
    # landmark 1 of image 001 (Sella, 221.8667, 265.0667 in the 516x640 file) at 200x160
    first = load_landmarks(root, "train", size=(200, 160))
    assert first.ids[0] == "001"
    np.testing.assert_allclose(first.landmarks[0, 0], [(221.8667 + 0.5) * 160 / 516 - 0.5,
                                                      (265.0667 + 0.5) * 200 / 640 - 0.5], atol=1e-4)
    # an error of 1 resized px in x is 516/160 original px = 1.209 mm
    m = RadialError()
    pred = first.landmarks[:1].copy()
    pred[0, :, 0] += 1
    m.update(pred, first.landmarks[:1], first.scales[:1], first.pixel_size_mm[:1])
    assert m.aggregate()["mre"] == pytest.approx(516 / 160 * 0.375, rel=1e-5)
