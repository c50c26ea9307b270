"""One house for every task: the PixelModel base, the task registry, load_model, and the CLI's
train/evaluate path for landmarks and detection."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from cli_util import run_cli, run_json
from test_detection import _voc
from test_landmarks import make_folder

from medrobust.models import Classifier, PixelModel, build_model, load_model, save_model
from medrobust.models.detector import Detector
from medrobust.models.landmark_unet import LandmarkModel, landmark_unet
from medrobust.models.segmenter import Segmenter
from medrobust.tasks import TASKS, get_task


def test_every_wrapper_is_a_pixel_model_and_every_task_is_registered():
    assert set(TASKS) == {"classification", "segmentation", "landmarks", "detection"}
    for task in TASKS.values():
        assert issubclass(task.wrapper, PixelModel) and task.wrapper.task == task.name
        assert task.loss_terms is not None
    assert {Classifier, Segmenter, LandmarkModel, Detector} == {t.wrapper for t in TASKS.values()}


def test_pixel_model_refuses_bad_normalisation():
    from medrobust.errors import ConfigError

    with pytest.raises(ConfigError, match="std must be positive"):
        Classifier(build_model("smallcnn", 3, 2, width=4), mean=[0.5] * 3, std=[0.2, 0.0, 0.2],
                   class_names=("a", "b"))
    with pytest.raises(ConfigError, match="one value per channel"):
        LandmarkModel(landmark_unet(1, 2, width=2), [0.5], [0.2, 0.2], 2, 3.0)


@pytest.mark.parametrize("task", ["landmarks", "detection"])
def test_checkpoint_round_trip_through_load_model(tmp_path, task):
    torch.manual_seed(0)
    if task == "landmarks":
        model = LandmarkModel(build_model("landmark_unet", 1, 3, width=2), [0.4], [0.2], 3, 4.0)
        meta = {"model": "landmark_unet", "model_kwargs": {"width": 2}}
        x = torch.rand(2, 1, 24, 20)
    else:
        model = Detector(build_model("centernet", 3, 2, width=4), mean=[0.5] * 3, std=[0.25] * 3,
                         class_names=("RBC", "WBC"))
        meta = {"model": "centernet", "model_kwargs": {"width": 4}}
        x = torch.rand(2, 3, 32, 32)
    save_model(model, tmp_path / "m", meta)
    saved = json.loads((tmp_path / "m" / "meta.json").read_text())
    assert saved["task"] == task
    back = load_model(tmp_path / "m")
    assert type(back) is type(model)
    with torch.no_grad():
        assert torch.equal(back(x), model(x))


def test_a_classifier_loader_names_the_task_it_was_given(tmp_path):
    from medrobust.errors import CheckpointError
    from medrobust.models import load_classifier

    model = LandmarkModel(build_model("landmark_unet", 1, 3, width=2), [0.4], [0.2], 3, 4.0)
    save_model(model, tmp_path / "m", {"model": "landmark_unet", "model_kwargs": {"width": 2}})
    with pytest.raises(CheckpointError, match="holds a landmarks model"):
        load_classifier(tmp_path / "m")


def test_task_options_refuse_unknown_names():
    from medrobust.errors import ConfigError

    with pytest.raises(ConfigError, match="takes no option"):
        get_task("detection").check_options({"heatmap_loss": "bce"})
    assert get_task("landmarks").check_options({"epochs": 3})["epochs"] == 3


@pytest.mark.parametrize("task", ["landmarks", "detection"])
def test_loss_terms_are_per_sample_and_differentiable(task):
    torch.manual_seed(0)
    if task == "landmarks":
        model = LandmarkModel(build_model("landmark_unet", 1, 2, width=2), [0.4], [0.2], 2, 3.0)
        x = torch.rand(3, 1, 24, 20, requires_grad=True)
        target = torch.tensor([[[5.0, 6.0], [12.0, 15.0]]]).repeat(3, 1, 1)
    else:
        model = Detector(build_model("centernet", 3, 2, width=4), mean=[0.5] * 3, std=[0.25] * 3,
                         class_names=("a", "b"))
        x = torch.rand(3, 3, 32, 32, requires_grad=True)
        target = ([torch.tensor([[4.0, 4.0, 20.0, 18.0]])] * 3, [torch.tensor([1])] * 3)
    terms = get_task(task).loss_terms(model, model(x), target)
    assert len(terms) >= 2 and all(t.shape == (3,) for t in terms.values())
    sum(t.sum() for t in terms.values()).backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0


def test_train_and_evaluate_landmarks_from_the_cli(tmp_path, capsys, one_thread):
    make_folder(tmp_path / "lm", n=16, h=24, w=20)
    out = run_json(capsys, "train", "--task", "landmarks", "--dataset", "landmarks",
                   "--data-dir", str(tmp_path / "lm"), "--size", "24", "--epochs", "2",
                   "--width", "2", "--out", str(tmp_path / "m"), "--store",
                   str(tmp_path / "s.db"))
    assert out["task"] == "landmarks" and out["test"]["unit"] == "mm"
    assert out["epochs_run"] == 2 and np.isfinite(out["test"]["mre"])
    again = run_json(capsys, "evaluate", "--model", str(tmp_path / "m"), "--store",
                     str(tmp_path / "s.db"))
    assert again["mre"] == pytest.approx(out["test"]["mre"])  # the same model, the same data
    code, _, err = run_cli(capsys, "train", "--task", "landmarks", "--dataset", "landmarks",
                           "--data-dir", str(tmp_path / "lm"), "--model", "smallcnn", "--out",
                           str(tmp_path / "m2"), "--store", str(tmp_path / "s.db"))
    assert code == 2 and "does not apply to landmarks training" in err
    _attack_resumes(capsys, tmp_path, "landmarks", ("clean_mre", "adv_mre"))


def _attack_resumes(capsys, tmp_path, task: str, keys: tuple[str, str]) -> None:
    """attack pgd on a landmark model or detector: per-image rows, a summary that says how the
    task metric moved, a rerun that resumes with nothing left, one line for foreign options."""
    from medrobust.store import Store

    args = ["attack", "pgd", "--model", str(tmp_path / "m"), "--split", "test", "--norm", "l2",
            "--eps", "2", "--steps", "3", "--store", str(tmp_path / "a.db")]
    out = run_json(capsys, *args)
    assert out["task"] == task and out["images"] >= 1 and out["table"] == "task_attack_results"
    assert all(np.isfinite(out[k]) for k in keys)
    with Store(tmp_path / "a.db") as store:
        rows = store.rows("task_attack_results", run_id=out["run_id"])
    assert len(rows) == out["images"] and all(r["l2"] <= 2 + 1e-5 for r in rows)
    assert all(r["adv_loss"] >= r["clean_loss"] for r in rows)  # PGD raised the task's loss
    again = run_json(capsys, *args)
    assert again["resumed"] and again["attacked_now"] == 0 and again[keys[1]] == out[keys[1]]
    code, _, err = run_cli(capsys, *args, "--targeted")
    # landmarks take targets of their own (shift:DX,DY), detection none
    expected = "is a classifier's target" if task == "landmarks" else \
        f"--targeted does not apply to {task} models"
    assert code == 2 and expected in err


def test_train_and_evaluate_detection_from_the_cli(tmp_path, capsys, one_thread):
    boxes = {f"i{k}": [("RBC", 4 + k, 4, 20 + k, 18, 0), ("WBC", 30, 20, 56, 44, 0)]
             for k in range(8)}
    _voc(tmp_path / "voc", boxes, {"train": [f"i{k}" for k in range(5)], "val": ["i5", "i6"],
                                   "test": ["i7"]})
    out = run_json(capsys, "train", "--task", "detection", "--dataset", "voc", "--data-dir",
                   str(tmp_path / "voc"), "--size", "32", "--epochs", "1", "--width", "4",
                   "--out", str(tmp_path / "m"), "--store", str(tmp_path / "s.db"))
    assert out["task"] == "detection" and 0.0 <= out["test"]["map"] <= 1.0
    assert set(out["test"]["per_class"]) == {"RBC", "WBC"}
    again = run_json(capsys, "evaluate", "--model", str(tmp_path / "m"), "--store",
                     str(tmp_path / "s.db"))
    assert again["map"] == pytest.approx(out["test"]["map"])
    code, _, err = run_cli(capsys, "train", "--task", "detection", "--dataset", "landmarks",
                           "--data-dir", str(tmp_path / "voc"), "--out", str(tmp_path / "m3"),
                           "--store", str(tmp_path / "s.db"))
    assert code == 2 and "detection trains on bccd-detection, voc" in err
    _attack_resumes(capsys, tmp_path, "detection", ("clean_map", "adv_map"))


def _landmark_model() -> LandmarkModel:
    torch.manual_seed(0)
    return LandmarkModel(build_model("landmark_unet", 1, 2, width=2), [0.4], [0.2], 2, 3.0)


def _detector() -> Detector:
    torch.manual_seed(0)
    return Detector(build_model("centernet", 3, 2, width=4), mean=[0.5] * 3, std=[0.25] * 3,
                    class_names=("a", "b"))


@pytest.mark.parametrize("task", ["landmarks", "detection"])
@pytest.mark.parametrize("norm,eps", [("l2", 0.5), ("linf", 4 / 255)])
def test_pgd_through_the_task_loss_holds_its_budget_and_raises_the_loss(task, norm, eps,
                                                                         one_thread):
    """Gradient attacks on every task: PGD maximises the task's training objective; budgets hold
    exactly; the same seed gives the same images, alone or in a batch."""
    from medrobust.attacks import PGD

    g = torch.Generator().manual_seed(3)
    if task == "landmarks":
        model, x = _landmark_model(), torch.rand(3, 1, 24, 20, generator=g)
        targets = torch.tensor([[[5.0, 6.0], [12.0, 15.0]]]).repeat(3, 1, 1)
    else:
        model, x = _detector(), torch.rand(3, 3, 32, 32, generator=g)
        targets = [(torch.tensor([[4.0, 4.0, 20.0, 18.0]]), torch.tensor([1]))] * 3
    loss = get_task(task).attack_loss(model)
    attack = PGD(model, loss=loss, norm=norm, eps=eps, steps=5, seed=1)
    adv = attack(x, targets).adversarial
    delta = (adv - x).flatten(1)
    size = delta.norm(dim=1) if norm == "l2" else delta.abs().amax(dim=1)
    assert bool((size <= eps + 1e-6).all()) and float(adv.min()) >= 0 and float(adv.max()) <= 1
    with torch.no_grad():
        assert bool((loss(model(adv), targets) > loss(model(x), targets)).all())
    assert torch.equal(attack(x, targets).adversarial, adv)
    alone = attack(x[1:2], targets[1:2], keys=[1]).adversarial
    assert torch.allclose(alone, adv[1:2], atol=1e-6)


def test_landmark_attack_loss_is_the_heatmap_loss_it_was_trained_with(tmp_path):
    """A model trained with the Dice heatmap loss is attacked through Dice, also after a
    checkpoint round trip."""
    from medrobust.training.landmark_loss import LandmarkLoss

    torch.manual_seed(0)
    model = LandmarkModel(build_model("landmark_unet", 1, 2, width=2), [0.4], [0.2], 2, 3.0,
                          heatmap_loss="dice", heatmap_weight=0.5)
    save_model(model, tmp_path / "m", {"model": "landmark_unet", "model_kwargs": {"width": 2}})
    back = load_model(tmp_path / "m")
    assert (back.heatmap_loss, back.heatmap_weight) == ("dice", 0.5)
    x = torch.rand(2, 1, 24, 20)
    pts = torch.tensor([[[5.0, 6.0], [12.0, 15.0]], [[8.0, 4.0], [10.0, 18.0]]])
    from medrobust.models.landmark_codec import encode

    with torch.no_grad():
        out = back(x)
        got = get_task("landmarks").loss_terms(back, out, pts)["total"]
        heat, offsets, mask = encode(pts, tuple(out.shape[-2:]), back.radius)
        dice = LandmarkLoss("dice", 0.5)(out, heat, offsets, mask)["total"]
        bce = LandmarkLoss("bce", 2.0)(out, heat, offsets, mask)["total"]
    assert torch.allclose(got, dice) and not torch.allclose(got, bce)


def test_the_report_shows_a_registered_task_from_its_task_report(tmp_path):
    """A new task names its title, order and metrics once, in its ``TaskReport``; the report's
    budget curves and their section then show it with no edit to ``report/``."""
    import dataclasses

    from medrobust.errors import ConfigError
    from medrobust.models.loading import LOADERS
    from medrobust.report.context import ReportContext
    from medrobust.report.task_section import budget_curves, budget_section
    from medrobust.store import Store
    from medrobust.tasks import CurveMetric, TaskReport, get_task, register_task, unregister_task

    toy = dataclasses.replace(get_task("landmarks"), name="toy-regression", report=TaskReport(
        9, "Toy regression: absolute error", "error",
        (CurveMetric("err", "absolute error", (("clean_err", "adv_err"),), upper=None),)),
        lower_is_better=True, load=LOADERS["landmarks"])
    register_task(toy)
    try:
        with pytest.raises(ConfigError, match="already registered"):
            register_task(toy)
        with Store(tmp_path / "s.db") as store:
            for eps, err in ((0.5, 0.3), (1.0, 0.7)):
                rid, _ = store.start_run("attack pgd", {"task": "toy-regression", "attack": {
                    "attack": "pgd", "norm": "l2", "eps": eps, "steps": 10}},
                    model={"dir": str(tmp_path / "m")})
                store.finish_run(rid, "completed", {"images": 4, "clean_err": 0.1,
                                                    "adv_err": err})
            ctx = ReportContext(store=store, out_dir=tmp_path, runs=store.runs())
            (curve,) = budget_curves(ctx)
            assert curve.task == "toy-regression" and curve.metric == "err"
            assert [(p.eps, p.value, p.clean) for p in curve.points] == [(0.5, 0.3, 0.1),
                                                                         (1.0, 0.7, 0.1)]
            section = budget_section(ctx)
            assert section is not None
            assert [s.title for s in section.subsections] == ["Toy regression: absolute error"]
    finally:
        unregister_task("toy-regression")


def test_the_report_says_when_an_attack_did_not_hurt(tmp_path):
    """An attack that left the MRE lower than without it is flagged as a failed attack, and a
    curve whose attacks all hurt is not (issue 24, item 7)."""
    from medrobust.report.blocks import Note
    from medrobust.report.context import ReportContext
    from medrobust.report.task_section import budget_section
    from medrobust.store import Store

    def section(adv: tuple[float, float]):
        with Store(tmp_path / f"s{adv[0]}.db") as store:
            for eps, value in zip((0.5, 1.0), adv, strict=True):
                rid, _ = store.start_run("attack pgd", {"task": "landmarks", "attack": {
                    "attack": "pgd", "norm": "l2", "eps": eps, "steps": 10}},
                    model={"dir": str(tmp_path / "m")})
                store.finish_run(rid, "completed", {"images": 4, "unit": "mm",
                                                    "clean_mre": 78.9, "adv_mre": value,
                                                    "clean_sdr_2": 0.0, "adv_sdr_2": 0.0})
            ctx = ReportContext(store=store, out_dir=tmp_path, runs=store.runs())
            (sub,) = budget_section(ctx).subsections
            return [b for b in sub.blocks if isinstance(b, Note)]

    (note,) = section((69.9, 80.0))
    assert note.level == "warning" and "did not hurt in 1 run(s)" in note.text
    assert "run 1 (" in note.text and "without attack" in note.text and "run 2" not in note.text
    assert section((80.0, 90.0)) == []
