"""Object detection: VOC loading, CenterNet codec, loss, COCO mAP and a smoke training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medrobust.data.voc import DetectionDataset, load_bccd_detection, load_voc_detection
from medrobust.errors import DataError
from medrobust.metrics.detection import MeanAveragePrecision
from medrobust.models.centernet import centernet
from medrobust.models.centernet_codec import decode, encode
from medrobust.training.detection import augment_detection, evaluate_detector, train_detector
from medrobust.training.detection_loss import DetectionLoss


def _xml(objects: list[tuple], width: int = 64, height: int = 48) -> str:
    body = "".join(
        f"<object><name>{n}</name><difficult>{d}</difficult><bndbox><xmin>{x0}</xmin>"
        f"<ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
        for n, x0, y0, x1, y1, d in objects)
    return (f"<annotation><size><width>{width}</width><height>{height}</height><depth>3</depth>"
            f"</size>{body}</annotation>")


def _voc(root: Path, annotations: dict[str, list[tuple]], splits: dict[str, list[str]] | None,
         width: int = 64, height: int = 48) -> Path:
    (root / "Annotations").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    rng = np.random.default_rng(0)
    for image_id, objects in annotations.items():
        (root / "Annotations" / f"{image_id}.xml").write_text(_xml(objects, width, height))
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "JPEGImages" / f"{image_id}.png")
    if splits is not None:
        (root / "ImageSets" / "Main").mkdir(parents=True)
        for split, ids in splits.items():
            (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return root


@pytest.fixture
def tiny_voc(tmp_path: Path) -> Path:
    return _voc(tmp_path / "voc", {
        "a": [("RBC", 8, 6, 40, 30, 0), ("WBC", -5, 10, 20, 60, 1), ("RBC", 10, 10, 10, 20, 0)],
        "b": [("Platelets", 0, 0, 64, 48, 0), ("RBC", 70, 5, 90, 20, 0)],
        "c": [("WBC", 1, 2, 3, 4, 0)],
    }, {"train": ["a", "b"], "val": ["c"], "test": ["c"]})


def test_voc_anisotropic_resize_scales_boxes_exactly(tiny_voc: Path) -> None:
    ds = load_voc_detection(tiny_voc, "train", size=(32, 128), classes=("RBC", "WBC", "Platelets"))
    assert isinstance(ds, DetectionDataset)
    assert ds.images.shape == (2, 32, 128, 3) and ds.image_ids == ("a", "b")
    sx, sy = 128 / 64, 32 / 48
    np.testing.assert_allclose(ds.scales, [[sx, sy], [sx, sy]])
    np.testing.assert_array_equal(ds.orig_sizes, [[48, 64], [48, 64]])
    # a: RBC exact; WBC clipped to x >= 0 and y <= 48; zero-width RBC dropped
    np.testing.assert_allclose(ds.boxes[0], [[8 * sx, 6 * sy, 40 * sx, 30 * sy],
                                             [0, 10 * sy, 20 * sx, 48 * sy]], rtol=1e-6)
    assert ds.boxes[0].dtype == np.float32 and ds.labels[0].dtype == np.int64
    np.testing.assert_array_equal(ds.labels[0], [0, 1])
    np.testing.assert_array_equal(ds.difficult[0], [False, True])
    # b: the box wholly outside the image (x from 70 > 64) is degenerate after clipping
    np.testing.assert_allclose(ds.boxes[1], [[0, 0, 128, 32]])
    assert ds.dropped_boxes == 2
    assert ds.spec["split_source"] == "ImageSets"


def test_voc_classes_discovered_filtered_and_unknown(tiny_voc: Path) -> None:
    ds = load_voc_detection(tiny_voc, "val", size=16)
    assert ds.class_names == ("Platelets", "RBC", "WBC")  # sorted over all annotations
    with pytest.raises(DataError, match=r"a\.xml: unknown class 'WBC'"):
        load_voc_detection(tiny_voc, "train", classes=("RBC", "Platelets"))
    only = load_voc_detection(tiny_voc, "train", size=16, classes=("WBC",), unknown="skip")
    assert [len(b) for b in only.boxes] == [1, 0]
    bccd = load_bccd_detection(tiny_voc, "train", size=16, classes=("Platelets",))
    assert [lab.tolist() for lab in bccd.labels] == [[], [0]]


def test_voc_seeded_split_without_imagesets(tmp_path: Path) -> None:
    root = _voc(tmp_path / "v", {f"i{k}": [("x", 1, 1, 9, 9, 0)] for k in range(10)}, None)
    parts = [load_voc_detection(root, s, size=8, seed=3).image_ids for s in ("train", "val", "test")]
    assert sorted(i for p in parts for i in p) == sorted(f"i{k}" for k in range(10))
    assert [len(p) for p in parts] == [6, 2, 2]
    assert load_voc_detection(root, "val", size=8, seed=3).image_ids == parts[1]


@pytest.mark.parametrize("breakage, message", [
    ("bad_xml", "cannot parse VOC annotation"),
    ("bad_coord", "bad coordinate"),
    ("missing_image", "is missing"),
    ("missing_xml", "is missing"),
    ("no_annotations_dir", "has no Annotations/"),
])
def test_voc_bad_input_is_one_line_data_error(tmp_path: Path, breakage: str, message: str) -> None:
    # disjoint train / held-out splits (an overlap is refused before any of these breakages)
    root = _voc(tmp_path / "voc", {"a": [("RBC", 1, 1, 9, 9, 0)], "b": [("RBC", 2, 2, 8, 8, 0)],
                                   "c": [("RBC", 3, 3, 7, 7, 0)]},
                {"train": ["a", "b"], "val": ["c"], "test": ["c"]})
    if breakage == "bad_xml":
        (root / "Annotations" / "b.xml").write_text("<annotation><object>")
    elif breakage == "bad_coord":
        (root / "Annotations" / "b.xml").write_text(_xml([("RBC", "one", 1, 9, 9, 0)]))
    elif breakage == "missing_image":
        (root / "JPEGImages" / "b.png").unlink()
    elif breakage == "missing_xml":
        (root / "Annotations" / "b.xml").unlink()
    else:
        for xml in (root / "Annotations").glob("*.xml"):
            xml.unlink()
        (root / "Annotations").rmdir()
    with pytest.raises(DataError, match=message) as info:
        load_voc_detection(root, "train", size=16)
    assert "\n" not in str(info.value)


def _iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    lt, rb = torch.maximum(a[:, :2], b[:, :2]), torch.minimum(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(1)
    area = lambda z: (z[:, 2:] - z[:, :2]).prod(1)  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def _perfect_outputs(targets: dict[str, torch.Tensor], num_classes: int) -> torch.Tensor:
    """Network outputs that reproduce the targets exactly (logit of the heatmap, regressions)."""
    heat = targets["heatmap"]
    bsz, _, h, w = heat.shape
    out = torch.zeros(bsz, num_classes + 4, h, w)
    out[:, :num_classes] = torch.logit(heat.clamp(1e-6, 1 - 1e-6))
    for b in range(bsz):
        for j in torch.nonzero(targets["mask"][b]).flatten():
            cell = int(targets["index"][b, j])
            out[b, num_classes:num_classes + 2, cell // w, cell % w] = targets["size"][b, j]
            out[b, num_classes + 2:, cell // w, cell % w] = targets["offset"][b, j]
    return out


def test_encode_decode_round_trip_recovers_boxes() -> None:
    boxes = [torch.tensor([[10.0, 20.0, 50.0, 60.0], [101.0, 43.0, 183.0, 161.0]]),
             torch.tensor([[0.0, 0.0, 30.0, 40.0]]), torch.zeros(0, 4)]
    labels = [torch.tensor([0, 2]), torch.tensor([1]), torch.zeros(0, dtype=torch.long)]
    t = encode(boxes, labels, (64, 64), num_classes=3)
    assert t["heatmap"].shape == (3, 3, 64, 64) and t["mask"].tolist() == [[1, 1], [1, 0], [0, 0]]
    assert t["heatmap"].amax().item() == 1.0 and t["heatmap"].min().item() >= 0.0
    dets = decode(_perfect_outputs(t, 3), k=20, score_threshold=0.5)
    for (pb, ps, pl), tb, tl in zip(dets, boxes, labels, strict=True):
        assert len(pb) == len(tb)
        order = torch.argsort(pl)
        if len(tb):
            assert torch.equal(pl[order], tl.sort().values)
            ious = _iou(pb[order], tb[torch.argsort(tl)])
            assert (ious > 0.99).all()
            assert (ps > 0.99).all()


def test_loss_has_three_per_sample_terms_zero_at_truth() -> None:
    boxes = [torch.tensor([[10.0, 20.0, 50.0, 60.0]]), torch.tensor([[4.0, 4.0, 30.0, 40.0]])]
    labels = [torch.tensor([0]), torch.tensor([1])]
    t = encode(boxes, labels, (16, 16), num_classes=2)
    loss = DetectionLoss(2)
    perfect = loss(_perfect_outputs(t, 2), t)
    assert set(perfect) == {"heatmap", "size", "offset", "total"}
    assert all(v.shape == (2,) for v in perfect.values())
    assert perfect["size"].abs().max() < 1e-3 and perfect["offset"].abs().max() < 1e-3
    bad = loss(torch.zeros(2, 6, 16, 16), (boxes, labels))  # raw box lists are encoded too
    assert (bad["heatmap"] > perfect["heatmap"] + 0.1).all() and (bad["size"] > 1).all()
    torch.testing.assert_close(bad["total"], bad["heatmap"] + 0.1 * bad["size"] + bad["offset"])


def test_map_on_hand_made_boxes() -> None:
    metric = MeanAveragePrecision(("cell", "other"))
    gt = [np.array([[0.0, 0.0, 100.0, 100.0]])]
    # A false positive scored above the true positive: precision 1/2 at every recall -> AP 0.5
    metric.update([np.array([[200.0, 200.0, 250.0, 250.0], [0.0, 0.0, 100.0, 100.0]])],
                  [np.array([0.9, 0.5])], [np.array([0, 0])], gt, [np.array([0])])
    out = metric.aggregate()
    assert out["map"] == pytest.approx(0.5) and out["map50"] == pytest.approx(0.5)
    assert out["per_class"] == {"cell": pytest.approx(0.5), "other": None} and out["n"] == 1
    metric.reset()
    # The same false positive scored below: AP 1
    metric([np.array([[200.0, 200.0, 250.0, 250.0], [0.0, 0.0, 100.0, 100.0]])],
           [np.array([0.1, 0.5])], [np.array([0, 0])], gt, [np.array([0])])
    assert metric.aggregate()["map"] == pytest.approx(1.0)
    metric.reset()
    # IoU 0.62 counts at thresholds 0.50, 0.55, 0.60 only: 3 of 10
    metric([torch.tensor([[0.0, 0.0, 100.0, 62.0]])], [torch.tensor([0.8])], [torch.tensor([0])],
           gt, [np.array([0])])
    out = metric.aggregate()
    assert out["map"] == pytest.approx(0.3) and out["map50"] == pytest.approx(1.0)


def test_augmentation_keeps_boxes_exact() -> None:
    x = torch.zeros(6, 3, 40, 40)
    x[:, :, 10:20, 4:12] = 1.0  # a white box (x 4..12, y 10..20)
    boxes = [torch.tensor([[4.0, 10.0, 12.0, 20.0]])] * 6
    g = torch.Generator().manual_seed(0)
    out, new, keeps = augment_detection(x, boxes, g, scale=(1.0, 1.0), shift=0.0, jitter=0.0)
    assert torch.equal(x[:, :, 10:20, 4:12], torch.ones(6, 3, 10, 8))  # input untouched
    for img, b, k in zip(out, new, keeps, strict=True):
        assert k.all()
        x0, y0, x1, y1 = (int(v) for v in b[0].round())
        assert img[0, y0:y1, x0:x1].min() > 0.99 and img[0].sum() == pytest.approx((x1 - x0) * (y1 - y0))


def _toy_dataset(n: int, seed: int) -> DetectionDataset:
    """Bright squares on a dark field, one class, 32x32."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, 32, 32, 3), np.uint8)
    boxes, labels = [], []
    for i in range(n):
        s = int(rng.integers(6, 11))
        x0, y0 = (int(v) for v in rng.integers(0, 32 - s, 2))
        images[i, y0:y0 + s, x0:x0 + s] = 220
        boxes.append(np.array([[x0, y0, x0 + s, y0 + s]], np.float32))
        labels.append(np.zeros(1, np.int64))
    return DetectionDataset(images, boxes, labels, ("square",), "toy", "train",
                            tuple(map(str, range(n))), np.full((n, 2), 32), np.ones((n, 2)))




def test_smoke_training_lowers_loss_and_is_seeded(one_thread) -> None:
    train, val = _toy_dataset(32, 0), _toy_dataset(8, 1)
    kw = dict(epochs=4, batch_size=8, lr=5e-3, seed=0, width=4, augment=True, eval_every=2)
    model, hist = train_detector(train, val, **kw)
    losses = [r["loss_total"] for r in hist["epochs"]]
    assert losses[-1] < losses[0]
    assert set(hist["epochs"][-1]) >= {"loss_heatmap", "loss_size", "loss_offset", "val_map"}
    assert not model.training and len(hist["mean"]) == 3
    out = model(torch.zeros(2, 3, 32, 32))
    assert out.shape == (2, 1 + 4, 8, 8)
    _, again = train_detector(train, val, **kw)
    assert [r["loss_total"] for r in again["epochs"]] == losses
    scores = evaluate_detector(model, val, hist["mean"], hist["std"])
    assert 0.0 <= scores["map"] <= 1.0 and scores["n"] == 8


def test_centernet_output_layout() -> None:
    net = centernet(1, 5, width=4).eval()
    out = net(torch.zeros(2, 1, 64, 48))
    assert out.shape == (2, 9, 16, 12)
    assert torch.sigmoid(out[:, :5]).mean().item() == pytest.approx(0.1, abs=0.05)


@pytest.mark.realdata
def test_bccd_detection_official_split(shared_data: Path) -> None:
    sizes = {}
    for split in ("train", "val", "test"):
        ds = load_bccd_detection(shared_data, split)
        sizes[split] = len(ds)
        assert ds.images.shape[1:] == (320, 320, 3) and ds.class_names == ("RBC", "WBC", "Platelets")
        allb = np.concatenate(ds.boxes)
        assert (allb >= 0).all() and (allb[:, [0, 2]] <= 320).all() and (allb[:, [1, 3]] <= 320).all()
        assert (allb[:, 2] > allb[:, 0]).all() and (allb[:, 3] > allb[:, 1]).all()
        np.testing.assert_allclose(ds.scales, [[0.5, 2 / 3]] * len(ds))
    assert sizes == {"train": 205, "val": 87, "test": 72}
