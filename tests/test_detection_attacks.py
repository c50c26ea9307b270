"""Detection attack members (TOG vanishing, fabrication, mislabeling; DAG), the per-image damage
against difficult boxes, and the lost / ghost / class-flip breakdown of an attack summary."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from medrobust.attacks.detection_losses import (
    DETECTION_LOSSES,
    dag,
    tog_fabrication,
    tog_mislabeling,
    tog_vanishing,
)
from medrobust.attacks.pgd import PGD
from medrobust.campaigns.protocol_attacks import ProtocolSettings, build_attack, worst_case
from medrobust.data.voc import DetectionDataset
from medrobust.errors import ConfigError
from medrobust.metrics.detection import box_iou, damage_breakdown
from medrobust.models.centernet import split_outputs
from medrobust.models.detector import Detector
from medrobust.tasks import get_task
from medrobust.training.detection import train_detector

pytestmark = pytest.mark.usefixtures("one_thread_module")

NAMES = ("tog-vanishing", "tog-fabrication", "tog-mislabeling", "dag")


def _toy(n: int, seed: int) -> DetectionDataset:
    """32x32 noisy images, one bright square each, its class its colour (red 0, green 1); the
    noise keeps the channel statistics wide, so small pixel steps act locally."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 90, (n, 32, 32, 3)).astype(np.uint8)
    boxes, labels = [], []
    for i in range(n):
        s, c = int(rng.integers(8, 13)), int(rng.integers(0, 2))
        x0, y0 = (int(v) for v in rng.integers(0, 32 - s, 2))
        images[i, y0:y0 + s, x0:x0 + s, c] = 230
        boxes.append(np.array([[x0, y0, x0 + s, y0 + s]], np.float32))
        labels.append(np.array([c], np.int64))
    return DetectionDataset(images, boxes, labels, ("red", "green"), "toy", "test",
                            tuple(map(str, range(n))), np.full((n, 2), 32), np.ones((n, 2)))


@pytest.fixture(scope="module")
def fitted() -> tuple[Detector, DetectionDataset]:
    """A CenterNet fitted for six epochs (about 2 s): it finds the squares, not perfectly."""
    train, test = _toy(48, 0), _toy(6, 1)
    net, hist = train_detector(train, test, epochs=6, batch_size=8, lr=1e-2, seed=0, width=4,
                               augment=False)
    return Detector(net, mean=hist["mean"], std=hist["std"],
                    class_names=train.class_names).eval(), test


def _batch(model: Detector, ds: DetectionDataset, n: int = 4) -> tuple[torch.Tensor, list]:
    idx = np.arange(n)
    return model.to_tensor(ds.images[idx]), get_task("detection").attack_targets(ds, idx)


def _step(model: Detector, name: str, x: torch.Tensor, targets: list, steps: int = 1
          ) -> torch.Tensor:
    """Linf PGD steps of 1/255 from the clean image (one by default), up the named loss."""
    loss = get_task("detection").ensemble_losses[name](model)
    return PGD(model, loss=loss, norm="linf", eps=steps / 255, step=1 / 255, steps=steps,
               random_start=False)(x, targets).adversarial


def _centre(box: np.ndarray) -> tuple[int, int]:
    """(row, column) of the output cell holding a box's centre (stride 4)."""
    return int((box[1] + box[3]) / 2 // 4), int((box[0] + box[2]) / 2 // 4)


def test_the_task_registers_each_member_and_each_is_a_finite_differentiable_per_image_loss(
        fitted):
    model, ds = fitted
    assert get_task("detection").ensemble_losses is DETECTION_LOSSES
    assert tuple(DETECTION_LOSSES) == NAMES
    x, targets = _batch(model, ds)
    for name in NAMES:
        loss = get_task("detection").ensemble_losses[name](model)
        xr = x.clone().requires_grad_(True)
        value = loss(model(xr), targets)
        assert value.shape == (4,) and torch.isfinite(value).all(), name
        (grad,) = torch.autograd.grad(value.sum(), xr)
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0, name
        assert loss.__name__ == name.replace("-", "_")


def test_one_step_of_vanishing_lowers_and_of_fabrication_raises_the_class_scores(fitted):
    model, ds = fitted
    x, targets = _batch(model, ds)
    with torch.no_grad():
        before = torch.sigmoid(split_outputs(model(x), 2)[0])
        low = torch.sigmoid(split_outputs(model(_step(model, "tog-vanishing", x, targets)), 2)[0])
        high = torch.sigmoid(split_outputs(model(_step(model, "tog-fabrication", x, targets)),
                                           2)[0])
    top = lambda p: p.flatten(1).amax(1)  # noqa: E731
    assert (top(low) < top(before)).all() and (low.mean() < before.mean())
    # fabrication pulls hardest on cells near the 0.3 threshold, not on the top cell, so the
    # top score rises on average, not on every image (under AVX2 kernels one image's fell)
    assert top(high).mean() > top(before).mean() and (high.mean() > before.mean())
    # a few more steps: confident cells (score >= 0.3) appear, or go
    count = lambda x: (torch.sigmoid(split_outputs(model(x), 2)[0]) >= 0.3).sum()  # noqa: E731
    with torch.no_grad():
        assert count(_step(model, "tog-fabrication", x, targets, 4)) > count(x)
        assert count(_step(model, "tog-vanishing", x, targets, 4)) < count(x)


@pytest.mark.parametrize("name", ["tog-mislabeling", "dag"])
def test_one_step_moves_another_class_up_against_the_true_one_at_each_centre(fitted, name):
    model, ds = fitted
    x, targets = _batch(model, ds)
    with torch.no_grad():
        z0 = split_outputs(model(x), 2)[0]
        z1 = split_outputs(model(_step(model, name, x, targets)), 2)[0]
    for i, (boxes, labels, _) in enumerate(targets):
        r, c = _centre(boxes[0].numpy())
        y = int(labels[0])
        gap = lambda z: z[i, 1 - y, r, c] - z[i, y, r, c]  # noqa: E731, B023
        assert gap(z1) > gap(z0), (name, i)


def _outputs(logits: torch.Tensor) -> torch.Tensor:
    """Raw CenterNet outputs with these class logits (N, C, h, w) and zero regressions."""
    n, _, h, w = logits.shape
    return torch.cat([logits, torch.zeros(n, 4, h, w)], dim=1)


def test_dag_is_a_hinge_over_the_truths_centre_region_that_stops_once_flipped():
    z = torch.full((2, 3, 8, 8), -3.0)
    z[:, 0, 2:5, 2:5] = 2.0  # class 0 around the truth's centre cell (3, 3)
    z[1, 2, 2:5, 2:5] = 2.5  # image 1: class 2 already above it there
    out = _outputs(z).requires_grad_(True)
    box = torch.tensor([[8.0, 8.0, 20.0, 20.0]])  # centre (14, 14) -> cell (3, 3)
    targets = [(box, torch.tensor([0])), (box, torch.tensor([0]))]
    value = dag(out, targets, 3)
    got = value.detach()
    assert float(got[0]) == pytest.approx(-5.0) and float(got[1]) == 0.0  # margin -3 - 2 at every cell
    value.sum().backward()
    assert out.grad is not None and out.grad[1].abs().sum() == 0  # flipped cells stop pulling
    assert out.grad[0, 0, 3, 3] < 0 < out.grad[0, 1:3, 3, 3].sum()
    # a difficult truth is not attacked; the whole image then gives nothing
    assert dag(_outputs(z), [(box, torch.tensor([0]), torch.tensor([True]))] * 2, 3).eq(0).all()
    # one class: the other logit is the confidence threshold's (logit 0.3 = -0.847)
    one = dag(_outputs(z[:, :1]), targets, 1)
    assert float(one[0]) == pytest.approx(-0.8473 - 2.0, abs=1e-3)


def test_mislabeling_aims_at_the_most_likely_other_class_and_keeps_the_box():
    z = torch.full((1, 3, 8, 8), -4.0)
    z[0, 0, 3, 3], z[0, 2, 3, 3], z[0, 1, 3, 3] = 3.0, 0.0, -1.0  # true 0, then 2, then 1
    out = _outputs(z).requires_grad_(True)
    box = torch.tensor([[8.0, 8.0, 20.0, 20.0]])
    value = tog_mislabeling(out, [(box, torch.tensor([0]))], 3)
    assert value.shape == (1,) and torch.isfinite(value).all()
    value.sum().backward()
    g = out.grad[0]
    assert g[0, 3, 3] < 0 and g[2, 3, 3] > 0  # down the true class, up class 2 at the centre
    assert g[1, 3, 3] < 0  # class 1, less likely than 2, is not the target: it goes down
    assert g[3:].abs().sum() == 0  # the box heads are left alone: the peak's cell keeps it
    # one class: nothing to mislabel; images with only difficult truths: nothing either
    assert tog_mislabeling(_outputs(z[:, :1]), [(box, torch.tensor([0]))], 1).eq(0).all()
    assert tog_mislabeling(_outputs(z), [(box, torch.tensor([0]), torch.tensor([True]))],
                           3).eq(0).all()


def test_vanishing_and_fabrication_ignore_targets_and_are_monotone_in_the_scores():
    z = torch.linspace(-6, 6, 2 * 2 * 16).reshape(2, 2, 4, 4)
    lower, higher = _outputs(z - 1), _outputs(z + 1)
    for fn in (tog_vanishing, tog_fabrication):
        a, b = fn(lower, None, 2), fn(higher, None, 2)
        assert a.shape == (2,)
        assert (fn(_outputs(z), [1, 2], 2) == fn(_outputs(z), None, 2)).all()
        assert (a > b).all() if fn is tog_vanishing else (a < b).all()
    # a saturated cell still has a gradient (no probability clamp)
    sat = _outputs(torch.full((1, 1, 2, 2), 20.0)).requires_grad_(True)
    tog_vanishing(sat, None, 1).sum().backward()
    assert sat.grad is not None and sat.grad[0, 0].abs().min() > 0.1 / 4


def test_losses_refuse_targets_that_are_not_one_tuple_per_image():
    out = _outputs(torch.zeros(2, 2, 4, 4))
    with pytest.raises(ConfigError, match="one \\(boxes, labels"):
        dag(out, [(torch.zeros(0, 4), torch.zeros(0))], 2)
    with pytest.raises(ConfigError, match="one \\(boxes, labels"):  # the loss's pair of lists
        dag(out, ([torch.zeros(1, 4)] * 2, [torch.zeros(1)] * 2), 2)
    with pytest.raises(ConfigError, match="differ in length"):
        tog_mislabeling(out, [(torch.zeros(1, 4), torch.zeros(2))] * 2, 2)


def _breakdown_case() -> tuple:
    """Truths: A (class 0), B (class 1), C (class 0), D (difficult, class 1). Clean: A, B, C
    and D found by their own classes, one false positive at E; a 0.1 ghost below the threshold.
    Attacked: A gone (lost), B seen as class 0 (flip), C kept, E still there (not new), F new
    (a ghost), a detection on D (not a ghost: difficult regions are no background)."""
    truth = np.array([[0, 0, 10, 10], [20, 0, 30, 10], [0, 20, 10, 30], [40, 40, 50, 50]], float)
    labels, difficult = np.array([0, 1, 0, 1]), np.array([False, False, False, True])
    e, f, d = [60, 0, 70, 10], [60, 40, 70, 50], [41, 40, 50, 50]
    clean = (np.array([[0, 0, 10, 10], [20, 1, 30, 10], [0, 20, 10, 30], d, e, f]),
             np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.1]), np.array([0, 1, 0, 1, 1, 0]))
    adv = (np.array([[1, 0, 10, 10], [20, 0, 30, 10], [0, 20, 10, 29], d, e, f]),
           np.array([0.2, 0.9, 0.8, 0.6, 0.4, 0.35]), np.array([0, 0, 0, 0, 1, 0]))
    return clean, adv, truth, labels, difficult


def test_breakdown_counts_a_lost_object_a_ghost_and_a_class_flip():
    clean, adv, truth, labels, difficult = _breakdown_case()
    got = damage_breakdown(clean, adv, truth, labels, difficult)
    assert got == {"objects": 3, "found_clean": 3, "found_adv": 2, "objects_lost": 1,
                   "class_flips": 1, "ghosts": 1, "clean_false_positives": 1,
                   "adv_false_positives": 2}
    # nothing changed: no damage; the difficult box counted as real: it becomes an object
    same = damage_breakdown(clean, clean, truth, labels, difficult)
    assert (same["objects_lost"], same["class_flips"], same["ghosts"]) == (0, 0, 0)
    assert damage_breakdown(clean, adv, truth, labels)["objects"] == 4
    # a stricter IoU loses the shifted boxes too
    assert damage_breakdown(clean, adv, truth, labels, difficult,
                            iou_threshold=0.95)["found_clean"] == 2
    np.testing.assert_allclose(box_iou(truth[:1], [[0, 0, 10, 5], [10, 10, 20, 20]]), [[0.5, 0]])


def test_attack_summary_reports_the_breakdown_from_stored_rows():
    clean, adv, truth, labels, difficult = _breakdown_case()
    images = np.zeros((2, 64, 80, 3), np.uint8)
    ds = DetectionDataset(images, [truth.astype(np.float32)] * 2, [labels] * 2, ("a", "b"), "toy",
                          "test", ("0", "1"), np.full((2, 2), 64), np.ones((2, 2)),
                          difficult=[difficult] * 2)
    rows_of = lambda d: [[*b, s, lab] for b, s, lab in zip(*d, strict=True)]  # noqa: E731
    rows = [{"dataset_index": 0, "clean_pred": rows_of(clean), "adv_pred": rows_of(adv),
             "clean_extra": 5.0, "adv_extra": 5.0},
            {"dataset_index": 1, "clean_pred": rows_of(clean), "adv_pred": rows_of(clean),
             "clean_extra": 5.0, "adv_extra": 5.0}]
    task = get_task("detection")
    s = task.attack_summary(rows, ds)
    assert (s["objects"], s["found_clean"], s["objects_lost"], s["class_flips"], s["ghosts"]) == \
        (6, 6, 1, 1, 1)
    assert s["ghosts_per_image"] == pytest.approx(0.5) and s["adv_map"] < s["clean_map"]
    text = task.describe_attack(s)
    assert "6 objects found: 1 lost, 1 class flips; 1 ghosts" in text and "mAP@0.5" in text
    assert "lost" not in task.describe_attack({"clean_map": 0.5, "adv_map": 0.1})


class _Fixed(Detector):
    """A detector whose predictions are given (the damage is then known by hand)."""

    def __init__(self, dets: list) -> None:
        super().__init__(torch.nn.Identity(), mean=[0.0], std=[1.0], class_names=("a", "b"))
        self.dets = dets

    def predict_tensor(self, x: torch.Tensor) -> list:
        return self.dets[:len(x)]


def test_image_damage_ignores_difficult_boxes_as_the_reported_map_does():
    found = (np.array([[0.0, 0.0, 10.0, 10.0]]), np.array([0.9]), np.array([0]))
    model = _Fixed([found])
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    labels = torch.tensor([0, 1])
    damage = get_task("detection").image_damage
    x = torch.zeros(1, 1, 32, 32)
    assert damage(model, x, [(boxes, labels, torch.tensor([False, True]))]).item() == \
        pytest.approx(0.0, abs=1e-12)
    assert damage(model, x, [(boxes, labels)]).item() == pytest.approx(0.5)  # all real: AP 1, 0
    ds = DetectionDataset(np.zeros((1, 32, 32, 1), np.uint8), [boxes.numpy()], [labels.numpy()],
                          ("a", "b"), "toy", "test", ("0",), np.full((1, 2), 32), np.ones((1, 2)),
                          difficult=[np.array([False, True])])
    targets = get_task("detection").attack_targets(ds, np.array([0]))
    assert [len(t) for t in targets] == [3]
    row = get_task("detection").attack_rows(model, ds, np.array([0]), x, x)[0]
    assert damage(model, x, targets).item() == pytest.approx(1 - row["clean_metric"])


def test_the_training_loss_takes_the_triples_and_ignores_the_flags(fitted):
    model, ds = fitted
    x, triples = _batch(model, ds)
    task = get_task("detection")
    with torch.no_grad():
        out = model(x)
        with_flags = task.attack_loss(model)(out, triples)
        without = task.attack_loss(model)(out, [t[:2] for t in triples])
    assert torch.equal(with_flags, without)


def test_the_protocol_ensemble_runs_every_member_and_never_does_less_damage(fitted):
    model, ds = fitted
    task = get_task("detection")
    settings = ProtocolSettings(attacks=("ensemble",), norm="linf", levels=(4 / 255,),
                                pgd_steps=2, ifgsm_steps=2, batch_images=4)
    settings.validate(task)
    attack = build_attack("ensemble", task, model, "linf", 4 / 255, settings)
    assert attack.labels[:2] == ["pgd", "ifgsm"]  # the training loss: TOG's untargeted
    for name in NAMES:  # one member on each detection loss, however the protocol runs it
        assert sum(label.endswith(f"-{name}") for label in attack.labels) == 1, name
    x, targets = _batch(model, ds, 3)
    out = attack(x, targets, keys=[0, 1, 2])
    damage = out.extras["damage"]
    for label, hurt in out.extras["damage_by_member"].items():
        assert (damage >= hurt - 1e-12).all(), label
    assert torch.allclose(task.image_damage(model, out.adversarial, targets).double(), damage)
    assert (out.perturbation_norms(x)["linf"] <= 4 / 255 + 1e-6).all()
    assert worst_case(task, model, "linf", 4 / 255, settings).labels == attack.labels


def test_evaluate_ensemble_on_a_detector_records_the_members_and_the_breakdown(tmp_path,
                                                                               capsys):
    """``evaluate --attack ensemble`` end to end on a saved (untrained) detector: the run names
    each detection member, its images are never better off than under PGD, and its summary
    carries the lost / flip / ghost counts."""
    from cli_util import run_json
    from test_detection import _voc

    from medrobust.data import load_dataset
    from medrobust.models import build_model, save_model
    from medrobust.store import Store

    boxes = {f"i{k}": [("RBC", 4 + k, 4, 20 + k, 18, 0), ("WBC", 30, 20, 56, 44, int(k == 3))]
             for k in range(6)}
    _voc(tmp_path / "voc", boxes, {"train": ["i0"], "val": ["i1"], "test": ["i2", "i3", "i4"]})
    ds = load_dataset("voc", "test", data_dir=tmp_path / "voc", size=32)
    torch.manual_seed(0)
    save_model(Detector(build_model("centernet", 3, 2, width=4), mean=[0.5] * 3, std=[0.25] * 3,
                        class_names=ds.class_names), tmp_path / "m",
               {"model": "centernet", "model_kwargs": {"width": 4}, "dataset": ds.spec})
    db = str(tmp_path / "s.db")
    out = run_json(capsys, "evaluate", "--model", str(tmp_path / "m"), "--attack", "pgd,ensemble",
                   "--linf", "8/255", "--steps", "2", "--ifgsm-steps", "2", "--store", db)
    cells = {c["attack"]: c for c in out["cells"]}
    with Store(db) as store:
        runs = {name: store.get_run(c["run_id"]) for name, c in cells.items()}
        rows = {name: {r["dataset_index"]: r["adv_metric"]
                       for r in store.rows("task_attack_results", run_id=c["run_id"])}
                for name, c in cells.items()}
    labels = [m["label"] for m in runs["ensemble"]["params"]["attack"]["members"]]
    for name in NAMES:
        assert any(label.endswith(f"-{name}") for label in labels), name
    assert rows["ensemble"].keys() == rows["pgd"].keys() and len(rows["pgd"]) == 3
    for i, value in rows["ensemble"].items():
        assert value <= rows["pgd"][i] + 1e-9
    summary = runs["ensemble"]["summary"]
    assert summary["objects"] == 5  # six true boxes, one difficult
    for key in ("objects_lost", "class_flips", "ghosts"):
        assert summary[key] >= 0 and summary[f"{key}_per_image"] == summary[key] / 3
    # the report gives the damage by kind beside mAP
    rep = run_json(capsys, "report", "--store", db, "--out", str(tmp_path / "rep"))
    html = Path(rep["report"]).read_text()
    assert "Ghost detections" in html and "Class flips" in html


def test_the_fast_image_map_is_pycocotools_number():
    """``image_map`` (NumPy, for the ensemble's Square member, thousands of calls per image)
    against pycocotools through ``MeanAveragePrecision`` on random images: crowd (difficult)
    truths, score ties, classes without truths, degenerate boxes and empty lists included."""
    from medrobust.metrics.detection import MeanAveragePrecision, image_map

    rng = np.random.default_rng(0)

    def boxes(n):
        xy = rng.uniform(0, 50, (n, 2))
        return np.concatenate([xy, xy + rng.uniform(2, 20, (n, 2))], 1)

    for trial in range(150):
        k, ng, nd = int(rng.integers(1, 4)), int(rng.integers(0, 6)), int(rng.integers(0, 15))
        tb, tl, td = boxes(ng), rng.integers(0, k, ng), rng.random(ng) < 0.2
        pb = boxes(nd)
        for i in range(nd):  # most detections near a truth, some degenerate after the noise
            if ng and rng.random() < 0.6:
                pb[i] = tb[rng.integers(0, ng)] + rng.normal(0, 2, 4)
        ps, pl = rng.random(nd), rng.integers(0, k, nd)
        if trial % 7 == 0:
            ps[: nd // 2] = 0.5
        ref = MeanAveragePrecision([str(c) for c in range(k)])
        ref.update([pb], [ps], [pl], [tb], [tl], [td])
        assert image_map(pb, ps, pl, tb, tl, td) == pytest.approx(ref.aggregate()["map"],
                                                                  abs=1e-9), trial
