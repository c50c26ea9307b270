"""Landmark attacks of issue 21: the CosPGD-weighted landmark loss and the targeted landmark
shift (ATI-FGSM's setting, Yao et al. MICCAI 2020): ``--target shift:DX,DY[@L1,...]`` moves the
chosen landmarks and holds the rest; early stop and success agree on one tolerance."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from cli_util import assert_one_error_line, run_cli, run_json
from test_landmarks import make_folder

from medrobust.attacks.landmark_goals import (
    goal_tensor,
    never_done,
    parse_shift,
    reaches_goal,
    tolerance_px,
)
from medrobust.attacks.pgd import PGD
from medrobust.data.landmarks import load_landmarks
from medrobust.errors import ConfigError
from medrobust.models.landmark_codec import default_radius, encode
from medrobust.models.landmark_unet import LandmarkModel, landmark_unet
from medrobust.store import Store
from medrobust.tasks import get_task
from medrobust.tasks.landmarks import attack_rows, attack_success, cospgd_weights

pytestmark = pytest.mark.usefixtures("one_thread_module")

TASK = get_task("landmarks")
NAMES = ("L1", "L2", "L3")


def _outputs_at(points: torch.Tensor, size: tuple[int, int], radius: float) -> torch.Tensor:
    """Outputs a perfect model gives for (N,K,2) ``points``: heat logits and offsets encoded
    there (decoding them returns the points)."""
    heat, offsets, _ = encode(points, size, radius)
    return torch.cat([20.0 * heat - 10.0, offsets], dim=1)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A tiny landmark U-Net fitted to 4 images (16x16, pixel size 1 mm: tolerance 2 px), with
    the heatmap radius the command line gives a model of that size (the early stop decodes
    with it)."""
    root = tmp_path_factory.mktemp("lm") / "data"
    make_folder(root, n=4, h=16, w=16, pixel_size=1.0)
    ds = load_landmarks(root, "train", size=(16, 16), val_fraction=0.0, test_fraction=0.0)
    torch.manual_seed(0)
    model = LandmarkModel(landmark_unet(1, 3, width=4), [0.15], [0.2], 3,
                          default_radius((16, 16)))
    x = model.to_tensor(ds.images)
    truth = torch.from_numpy(ds.landmarks)
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    model.train()
    for _ in range(250):  # 100 steps sufficed on AVX-512 kernels, not on AVX2 ones
        opt.zero_grad()
        TASK.loss_terms(model, model(x), truth)["total"].mean().backward()
        opt.step()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    clean = model.predict_tensor(x)
    assert float((clean - truth).norm(dim=-1).max()) < 1.0  # fitted: every landmark within 1 px
    return model, ds, x, truth, clean


# ---------------------------------------------------------------- CosPGD

def test_cospgd_loss_is_per_image_finite_and_differentiable():
    torch.manual_seed(0)
    model = LandmarkModel(landmark_unet(1, 2, width=2), [0.4], [0.2], 2, 3.0)
    loss = TASK.ensemble_losses["cospgd"](model)
    assert "soft-argmax" in TASK.ensemble_losses
    x = torch.rand(3, 1, 24, 20, requires_grad=True)
    truth = torch.tensor([[[5.0, 6.0], [12.0, 15.0]]]).repeat(3, 1, 1)
    value = loss(model(x), truth)
    assert value.shape == (3,) and bool(torch.isfinite(value).all()) and bool((value > 0).all())
    value.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and float(x.grad.abs().sum()) > 0


def test_cospgd_weighs_a_landmark_already_off_less_than_one_still_right():
    """Landmark 1's heatmap sits near its truth (not exactly), landmark 2's 8 px away: the
    cosine weight keeps the first and all but drops the second, so the gradient goes to the
    landmark still found, where the unweighted training loss pulls on both alike."""
    h = w = 24
    radius = 3.0
    truth = torch.tensor([[[6.0, 6.0], [16.0, 16.0]]])
    seen = truth + torch.tensor([[[0.5, 0.0], [8.0, 0.0]]])  # where each heatmap sits
    out = _outputs_at(seen, (h, w), radius) * 0.5  # softer: not at the loss's minimum
    weights = cospgd_weights(out, truth, radius)
    assert weights.shape == (1, 2)
    assert float(weights[0, 0]) > 0.8 and float(weights[0, 1]) < 0.1

    model = LandmarkModel(landmark_unet(1, 2, width=2), [0.4], [0.2], 2, radius)

    def grad_share(loss_fn) -> tuple[float, float]:
        o = out.clone().requires_grad_(True)
        loss_fn(o, truth).sum().backward()
        g = o.grad[0].abs()
        return float(g[[0, 2, 4]].sum()), float(g[[1, 3, 5]].sum())  # landmark 1, landmark 2

    right, off = grad_share(TASK.ensemble_losses["cospgd"](model))
    plain_right, plain_off = grad_share(TASK.attack_loss(model))
    assert off < 0.2 * right
    # the unweighted training loss pulls on both alike: the weight is what moves the effort
    assert off / right < 0.2 * (plain_off / plain_right)


# ---------------------------------------------------------------- the shift and its goal

@pytest.mark.parametrize("text,dx,dy,moved", [
    ("shift:3,-2", 3.0, -2.0, (0, 1, 2)),
    ("shift:3,-2@1,3", 3.0, -2.0, (0, 2)),
    (" SHIFT: 0.5 , 0 @ l2 ", 0.5, 0.0, (1,)),
    ("shift:-1e1,4@3,L1", -10.0, 4.0, (0, 2)),
])
def test_the_shift_parser_reads_numbers_and_names(text, dx, dy, moved):
    shift = parse_shift(text, NAMES)
    assert (shift.dx, shift.dy, shift.moved) == (dx, dy, moved)


@pytest.mark.parametrize("text,needle", [
    ("next", "is a classifier's target (the default)"),
    ("up:5", "is not a landmark shift"),
    ("shift:3", "needs two numbers DX,DY"),
    ("shift:3,x@1", "needs two numbers DX,DY"),
    ("shift:1,2,3", "needs two numbers DX,DY"),
    ("shift:inf,0", "needs finite DX and DY"),
    ("shift:0,0@1", "moves nothing"),
    ("shift:1,0@", "names no landmark after '@'"),
    ("shift:1,0@4", "landmark '4' is not one of the 3 landmarks"),
    ("shift:1,0@0", "landmark '0' is not one of the 3 landmarks"),
    ("shift:1,0@nose", "landmark 'nose' is not one of the 3 landmarks"),
    ("shift:1,0@2,L2", "names landmark 'L2' twice"),
])
def test_the_shift_parser_refuses_bad_text_in_one_line(text, needle):
    with pytest.raises(ConfigError) as info:
        parse_shift(text, NAMES)
    message = str(info.value)
    assert needle in message and "\n" not in message


def test_the_goal_moves_exactly_the_chosen_landmarks_and_holds_the_rest(tmp_path):
    make_folder(tmp_path / "lm", n=6, h=32, w=40)  # 0.5 mm pixels, resized to 24x20
    ds = load_landmarks(tmp_path / "lm", "train", size=(24, 20), val_fraction=0.0,
                        test_fraction=0.0)
    before = ds.landmarks.copy()
    targets = TASK.goals.choose("shift:2,-1.5@1,L3", ds, [0, 2, 5])
    assert sorted(targets) == [0, 2, 5] and np.array_equal(ds.landmarks, before)
    json.dumps(targets)  # a run records them as JSON
    for i, t in targets.items():
        goal = np.asarray(t["goal"])
        np.testing.assert_allclose(goal[[0, 2]], ds.landmarks[i][[0, 2]] + [2.0, -1.5], atol=1e-4)
        np.testing.assert_allclose(goal[1], ds.landmarks[i][1], atol=1e-4)
        assert t["landmarks"] == [1, 3] and t["shift"] == [2.0, -1.5]
        # SDR@2 mm: 0.5 mm pixels scaled by (20/40, 24/32), the coarser axis decides
        assert t["tolerance_px"] == pytest.approx(2.0 * 0.5 / 0.5, abs=1e-4)
        assert t["tolerance"] == "2 mm"
    goal = TASK.goals.goal([targets[i] for i in (0, 2, 5)])
    assert goal.shape == (3, 3, 3)
    np.testing.assert_allclose(goal[..., :2].numpy(), [targets[i]["goal"] for i in (0, 2, 5)],
                               atol=1e-5)
    assert torch.allclose(goal[..., 2], torch.full((3, 3), 2.0))
    assert tolerance_px((0.5, 0.75), None) == 2.0  # no pixel size: 2 input pixels
    with pytest.raises(ConfigError) as info:
        TASK.goals.choose("shift:0,-30@2", ds, [0, 1])
    message = str(info.value)
    assert "off the 20x24 image (2 of 2 images)" in message and "landmark 2" in message
    assert "\n" not in message


# ---------------------------------------------------------------- early stop and success

def test_early_stop_and_success_agree_on_the_tolerance():
    """Outputs that decode to known points: reached exactly when every landmark is within the
    tolerance of its goal (moved ones of their target, held ones of their truth), by the early
    stop on the outputs and by ``success`` on the stored row alike."""
    size, radius = (24, 24), 3.0
    truth = np.array([[6.0, 6.0], [16.0, 10.0], [10.0, 18.0]])
    target = {"goal": (truth + np.array([[3.0, 0.0], [0.0, 0.0], [0.0, 0.0]])).tolist(),
              "tolerance_px": 1.5, "landmarks": [1], "shift": [3.0, 0.0]}
    goal = goal_tensor([target])
    stop = reaches_goal(radius)
    cases = {  # landmark 1's prediction offset from its goal, a held landmark's from its truth
        "on target": ([0.0, 0.0], [0.0, 0.0], True),
        "just inside": ([1.4, 0.0], [0.0, -1.4], True),
        "moved one short": ([-1.7, 0.0], [0.0, 0.0], False),
        "held one dragged": ([0.0, 0.0], [1.2, 1.2], False),
        "not moved at all": ([-3.0, 0.0], [0.0, 0.0], False),
    }
    for name, (off_moved, off_held, expected) in cases.items():
        pred = np.asarray(target["goal"]) + np.array([off_moved, off_held, [0.0, 0.0]])
        out = _outputs_at(torch.tensor(pred[None], dtype=torch.float32), size, radius)
        row = {"adv_pred": np.round(pred, 2).tolist(), "adv_extra": 0.0}
        assert bool(stop(out, goal)[0]) is expected, name
        assert attack_success(row, target) is expected, name
    out = _outputs_at(torch.tensor(truth[None], dtype=torch.float32), size, radius)
    assert not bool(never_done(out, torch.tensor(truth[None])).any())  # untargeted: no finish
    assert attack_success({"adv_extra": 0.0}, None) and not attack_success({"adv_extra": 0.5},
                                                                           None)


def test_targeted_pgd_moves_the_chosen_landmark_to_its_goal_and_holds_the_rest(fitted):
    """On a fitted model, PGD towards ``shift:2.5,0@1`` (the training loss against the goal's
    heatmaps and offsets, minimised) brings landmark 1 closer to its target than it was and
    than untargeted PGD does, while the held landmarks move less than it; early stop freezes
    the images it reports reached, and ``success`` on their rows agrees."""
    model, ds, x, truth, clean = fitted
    idx = list(range(len(ds)))
    targets = TASK.goals.choose("shift:2.5,0@1", ds, idx)
    assert all(t["tolerance_px"] == pytest.approx(2.0) for t in targets.values())
    goal = TASK.goals.goal([targets[i] for i in idx])
    loss = TASK.attack_loss(model)
    settings = {"norm": "l2", "eps": 3.0, "steps": 40, "seed": 0}
    aimed = PGD(model, loss=loss, targeted=True, **settings)(x, goal).adversarial
    away = PGD(model, loss=loss, **settings)(x, truth).adversarial
    p_aimed, p_away = model.predict_tensor(aimed), model.predict_tensor(away)
    g = goal[..., :2]
    to_goal = lambda p: (p[:, 0] - g[:, 0]).norm(dim=-1).mean()  # noqa: E731
    assert to_goal(p_aimed) < 0.6 * to_goal(clean)
    assert to_goal(p_aimed) < to_goal(p_away)
    moved = (p_aimed - clean).norm(dim=-1)
    assert moved[:, 1:].mean() < 0.5 * moved[:, 0].mean()
    assert moved[:, 1:].mean() < 0.5 * (p_away - clean)[:, 1:].norm(dim=-1).mean()

    early = PGD(model, loss=loss, targeted=True, early_stop=TASK.goals.early_stop(True),
                **settings)
    result = early(x, goal)
    rows = attack_rows(model, ds, np.asarray(idx), x, result.adversarial)
    success = [TASK.goals.success(rows[j], targets[i]) for j, i in enumerate(idx)]
    assert result.success is not None and result.steps is not None
    assert success == result.success.tolist() and any(success)
    assert all(bool(s) for s, n in zip(success, result.steps.tolist(), strict=True)
               if n < settings["steps"])  # frozen early only once reached


# ---------------------------------------------------------------- the command line

def test_attack_pgd_targeted_shift_on_a_landmark_checkpoint(tmp_path, capsys):
    make_folder(tmp_path / "lm", n=16, h=24, w=20)
    db, ck = str(tmp_path / "s.db"), str(tmp_path / "m")
    run_json(capsys, "train", "--task", "landmarks", "--dataset", "landmarks", "--data-dir",
             str(tmp_path / "lm"), "--size", "24", "--epochs", "2", "--width", "2", "--out", ck,
             "--store", db)
    args = ["attack", "pgd", "--model", ck, "--split", "test", "--norm", "l2", "--eps", "2",
            "--steps", "3", "--store", db, "--targeted"]
    out = run_json(capsys, *args, "--target", "shift:5,0@1", "--early-stop")
    assert out["task"] == "landmarks" and out["images"] >= 1
    with Store(db) as store:
        rows = store.rows("task_attack_results", run_id=out["run_id"])
        run = store.get_run(out["run_id"])
    ds = load_landmarks(tmp_path / "lm", "test", size=24)
    assert len(rows) == out["images"] and run["params"]["attack"]["targeted"]
    for r in rows:
        t, truth = r["target"], ds.landmarks[r["dataset_index"]]
        assert t["landmarks"] == [1] and t["shift"] == [5.0, 0.0]
        moved = truth + np.array([[5.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
        np.testing.assert_allclose(t["goal"], moved, atol=1e-4)
        assert t["tolerance_px"] == pytest.approx(4.0)  # 2 mm of 0.5 mm pixels at scale 1
        far = np.linalg.norm(np.asarray(r["adv_pred"]) - np.asarray(t["goal"]), axis=-1)
        assert r["success"] == int(bool((far <= 4.0).all()))
    assert out["success_rate"] == pytest.approx(np.mean([r["success"] for r in rows]))
    assert np.isfinite(out["adv_goal_error_px"]) and np.isfinite(out["clean_goal_error_px"])
    for target, needle in (("shift:5,0@4", "landmark '4' is not one of the 3 landmarks"),
                           ("shift:40,0", "off the 24x24 image"),
                           ("up:5", "is not a landmark shift")):
        code, _, err = run_cli(capsys, *args, "--target", target)
        assert_one_error_line(code, err, needle)
    code, _, err = run_cli(capsys, *args)  # the classifiers' default target, 'next'
    assert_one_error_line(code, err, "--target 'next' is a classifier's target (the default): "
                                     "a landmark target is shift:DX,DY")


def test_untargeted_early_stop_on_landmarks_is_refused(tmp_path, capsys):
    """An untargeted landmark attack never stops early, so --early-stop without --targeted
    would be silently ignored: one line refuses it."""
    make_folder(tmp_path / "lm", n=8, h=32, w=32)
    ck, db = str(tmp_path / "m"), str(tmp_path / "s.db")
    run_json(capsys, "train", "--task", "landmarks", "--dataset", "landmarks", "--data-dir",
             str(tmp_path / "lm"), "--size", "32", "--epochs", "1", "--width", "2", "--out", ck,
             "--store", db)
    code, _, err = run_cli(capsys, "attack", "pgd", "--model", ck, "--norm", "l2", "--eps", "1",
                           "--steps", "2", "--early-stop", "--store", db)
    assert code == 2 and "--early-stop on landmarks models needs --targeted" in err
