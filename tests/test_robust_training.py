"""Robust training (VAT, TEAT, adaptive margins): the margin rule, xi calibration, the inner
attack's budgets, VAT's adversary, TEAT's moving average, determinism and resuming."""

from __future__ import annotations

import copy
import itertools
import json
import math

import numpy as np
import pytest
import torch
from cli_util import run_cli, run_json
from scipy.stats import norm
from test_landmarks import make_folder
from test_training_resume import killed_after_epoch

from medrobust.attacks import PGD
from medrobust.attacks.projection import flat_norm
from medrobust.data import load_dataset
from medrobust.errors import ConfigError
from medrobust.models import Classifier, build_model
from medrobust.tasks import get_task
from medrobust.training import TrainConfig, train_classifier
from medrobust.training.robust import (
    VAT,
    DiceRule,
    LossRule,
    LossSpec,
    Margins,
    RobustConfig,
    TemporalEnsemble,
    attack_seed,
    calibrate_xi,
    hard_dice,
    huber_location_scale,
    margin_pgd,
    rms_255,
    sigmoid_ramp,
    threshold,
)
from medrobust.training.robust.objectives import MARGINS_FILE, TermScore

pytestmark = pytest.mark.usefixtures("one_thread_module")


def _classifier(seed: int = 0, channels: int = 3) -> Classifier:
    torch.manual_seed(seed)
    net = build_model("smallcnn", channels, 2, width=4)
    return Classifier(net, mean=[0.5] * channels, std=[0.25] * channels,
                      class_names=("a", "b"))


def _batch(n: int = 6, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 16, 16, generator=g), torch.randint(0, 2, (n,), generator=g)


def _spec(clf: Classifier) -> LossSpec:
    task = get_task("classification")
    return LossSpec(terms=lambda out, y: task.loss_terms(clf, out, y))


# --- margins -------------------------------------------------------------------------------


def test_margin_rule_grows_shrinks_floors_and_caps() -> None:
    m = Margins(5, delta=0.5, max_margin=1.6)
    assert m.values.tolist() == [0.5] * 5
    m.record(torch.tensor([0, 1, 2, 3]), torch.tensor([0.5, 0.2, 0.5, 0.1]),
             torch.tensor([True, False, True, False]))
    summary = m.end_epoch()
    # correct: +D; wrong: max((E + ||d||) / 2, D) -> (0.5 + 0.2) / 2 = 0.35 floors at D = 0.5
    assert m.values.tolist() == pytest.approx([1.0, 0.5, 1.0, 0.5, 0.5])  # 4: not drawn
    # grew/shrank/stayed count values; the failed ones were already at the floor, so stayed
    assert (summary["grew"], summary["shrank"], summary["stayed"]) == (2, 0, 3)
    assert (summary["correct"], summary["failed"], summary["drawn"]) == (2, 2, 4)
    assert sum(summary["counts"]) == 5 and summary["max"] == pytest.approx(1.0)
    # fixed bins in units of D: three margins at D in [1, 1.5), two at 2 D in [2, 3)
    assert summary["d_histogram"]["counts"][:4] == [3, 0, 2, 0]
    assert sum(summary["d_histogram"]["counts"]) == 5 and summary["beyond_delta"] == 2
    # a wrong sample with a margin above D shrinks towards the noise it achieved
    m.record(torch.tensor([2]), torch.tensor([0.8]), torch.tensor([False]))
    summary = m.end_epoch()
    assert float(m.values[2]) == pytest.approx(0.9)
    assert (summary["grew"], summary["shrank"], summary["stayed"]) == (0, 1, 4)
    # two draws in one epoch: E_new = ((E + a) / 2 + b) / 2, correctness ANDed
    m.record(torch.tensor([0]), torch.tensor([1.0]), torch.tensor([True]))
    m.record(torch.tensor([0]), torch.tensor([0.6]), torch.tensor([False]))
    m.end_epoch()
    assert float(m.values[0]) == pytest.approx(((1.0 + 1.0) / 2 + 0.6) / 2)
    # growth is capped at max_margin
    for _ in range(3):
        m.record(torch.tensor([1]), torch.tensor([0.5]), torch.tensor([True]))
        m.end_epoch()
    assert float(m.values[1]) == pytest.approx(1.6)


def test_margins_refuse_duplicates_and_round_trip(tmp_path) -> None:
    m = Margins(3, delta=0.25)
    with pytest.raises(ConfigError):
        m.record(torch.tensor([1, 1]), torch.ones(2), torch.ones(2, dtype=torch.bool))
    m.record(torch.tensor([0, 2]), torch.tensor([0.1, 0.3]), torch.tensor([True, False]))
    m.end_epoch()
    back = Margins.load(m.save(tmp_path / "m.safetensors"))
    assert torch.equal(back.values, m.values) and back.delta == 0.25
    assert back.max_margin is None
    fresh = Margins(3, delta=0.25)
    fresh.load_state_dict(m.state_dict())
    assert torch.equal(fresh.values, m.values)


# --- xi --------------------------------------------------------------------------------------


def test_xi_mean_and_mean_plus_two_std() -> None:
    v = np.array([1.0, 2.0, 3.0, 4.0])
    assert threshold(v, "mean") == pytest.approx(2.5)
    assert threshold(v, "mean+2std") == pytest.approx(2.5 + 2 * math.sqrt(1.25))
    xi = calibrate_xi({"a": v, "b": 2 * v, "total": 3 * v}, "mean")
    assert xi == pytest.approx({"a": 2.5, "b": 5.0})  # total is not thresholded
    with pytest.raises(ConfigError):
        threshold(v, "median")


def test_huber_solves_its_equations_and_resists_outliers() -> None:
    rng = np.random.default_rng(0)
    v = np.concatenate([rng.normal(2.0, 0.5, 4000), np.full(200, 40.0)])
    loc, scale = huber_location_scale(v)
    c = 1.5
    z = np.clip((v - loc) / scale, -c, c)
    inside = 2 * norm.cdf(c) - 1
    gamma = inside + c ** 2 * (1 - inside) - 2 * c * norm.pdf(c)
    assert abs(z.mean()) < 1e-6                    # location equation
    assert (z ** 2).mean() == pytest.approx(gamma, rel=1e-5)  # scale equation (proposal 2)
    assert abs(loc - 2.0) < 0.1 and abs(scale - 0.5) < 0.1 and v.mean() > 3.5
    assert threshold(v, "huber") == pytest.approx(loc + 3 * scale)
    assert huber_location_scale(np.full(5, 3.0)) == (3.0, 0.0)


def test_rules_loss_vector_and_dice() -> None:
    rule = LossRule({"a": 1.0, "b": 2.0})
    terms = {"a": torch.tensor([0.5, 1.5, 0.5]), "b": torch.tensor([1.0, 1.0, 3.0])}
    assert rule(None, None, terms).tolist() == [True, False, False]  # every term must hold
    masks = torch.zeros(3, 4, 4, dtype=torch.long)
    masks[0, :2, :2] = 1
    masks[1, :2, :2] = 2
    logits = torch.zeros(3, 3, 4, 4)
    logits[:, 0] = 1.0
    logits[0, 1, :2, :] = 5.0   # predicts 8 px of class 1 where 4 are true: Dice 2*4/12
    logits[1, 2, :2, :2] = 5.0  # exact
    d = hard_dice(logits, masks)
    assert d.tolist() == pytest.approx([8 / 12, 1.0, 0.0])
    ok = DiceRule(0.6)(logits, masks.unsqueeze(1).float(), {})
    assert ok.tolist() == [True, True, False]  # no foreground: a failure


def test_budget_scales() -> None:
    assert rms_255(1.0, (1, 16, 16)) == pytest.approx(255 / 16)
    assert RobustConfig("vat", eps=0.5).inner_steps == 20
    assert RobustConfig("teat", eps=0.5).inner_steps == 10
    for bad in (RobustConfig("vat"), RobustConfig("adaptive-margin"),
                RobustConfig("vat", eps=-1.0), RobustConfig("adaptive-margin", delta=0.1, eps=1.0),
                RobustConfig("none", delta=0.1), RobustConfig("fgsm")):
        with pytest.raises(ConfigError):
            bad.validate()


# --- the inner attacks -------------------------------------------------------------------------


def test_margin_pgd_respects_each_samples_budget_and_batching() -> None:
    clf = _classifier()
    x, y = _batch(6)
    x_before = x.clone()
    eps = torch.tensor([0.0, 0.05, 0.3, 1.0, 2.5, 0.7])
    always = LossRule({"ce": 1e9})
    score = TermScore(_spec(clf), y, always)
    res = margin_pgd(clf, x, score, eps, delta=0.2, alpha=4.0, steps=5, seed=3,
                     keys=range(10, 16))
    assert torch.equal(x, x_before)  # inputs never mutated
    norms = flat_norm(res.adversarial - x, "l2")
    assert bool((norms <= eps).all()) and torch.equal(res.adversarial[0], x[0])
    assert res.adversarial.min() >= 0 and res.adversarial.max() <= 1
    assert torch.allclose(res.norms, norms)
    assert bool((norms[3:] > 0.5 * eps[3:]).all())  # the attack moves out towards its margin
    assert res.always_correct.all() and res.checks == 6 and not clf.training
    # the same samples split over two batches: the same attack (eval mode, random starts keyed
    # by dataset index, not by batch position). Equal to float rounding only: the CPU picks
    # other convolution kernels for a batch of 2 than of 6 (AVX2 rounds differently from
    # AVX-512), and L2 steps carry those 1e-7 differences without amplifying them. A start
    # drawn by batch position instead of key would differ by the whole radius.
    parts = [margin_pgd(clf, x[s], TermScore(_spec(clf), y[s], always), eps[s], delta=0.2,
                        alpha=4.0, steps=5, seed=3, keys=[10 + i for i in range(6)][s])
             for s in (slice(0, 2), slice(2, 6))]
    torch.testing.assert_close(torch.cat([p.adversarial for p in parts]), res.adversarial,
                               rtol=0, atol=1e-5)
    # the rule (ce < 1e9) holds for every sample whatever the rounding: each part says so too
    assert all(bool(p.always_correct.all()) and p.checks == 6 for p in parts)


def test_margin_pgd_failures_and_refinement() -> None:
    clf = _classifier()
    x, y = _batch(4)
    eps = torch.full((4,), 2.0)
    terms = get_task("classification").loss_terms(clf, clf(x), y)["ce"].detach()
    xi = float(terms.max()) + 1e-3  # every clean sample is correct, a strong attack breaks some
    res = margin_pgd(clf, x, TermScore(_spec(clf), y, LossRule({"ce": xi})), eps, delta=0.5,
                     alpha=4.0, steps=10, seed=0, keys=range(4))
    ref = margin_pgd(clf, x, TermScore(_spec(clf), y, LossRule({"ce": xi})), eps, delta=0.5,
                     alpha=4.0, steps=10, seed=0, keys=range(4), refine=True)
    assert torch.equal(res.always_correct, ref.always_correct)
    assert torch.equal(res.adversarial, ref.adversarial)  # refinement only measures the margin
    bad = ~res.always_correct
    assert bool(bad.any()), "the test needs an attack that breaks a sample"
    assert bool((ref.norms[bad] <= res.norms[bad] + 1e-6).all())
    never = margin_pgd(clf, x, TermScore(_spec(clf), y, LossRule({"ce": -1.0})), eps,
                       delta=0.5, alpha=4.0, steps=3, seed=0, keys=range(4))
    assert not never.always_correct.any()


def test_vat_adversary_is_medrobust_pgd() -> None:
    clf = _classifier()
    x, y = _batch(5)
    idx = torch.tensor([7, 3, 11, 0, 4])
    config = RobustConfig("vat", eps=0.8, steps=6, alpha=4.0).validate()
    vat = VAT(_spec(clf), config, n_train=20, epochs=5, seed=9)
    vat.begin_epoch(3)
    adv = vat.adversarial(clf, x, y, idx)
    ref = PGD(clf, loss=get_task("classification").attack_loss(clf), norm="l2", eps=0.8,
              step=4.0 * 0.8 / 6, steps=6, random_start=True, seed=attack_seed(9, 3))(
        x, y, keys=idx.tolist()).adversarial
    assert torch.equal(adv, ref)
    other = PGD(clf, loss=get_task("classification").attack_loss(clf), norm="l2", eps=0.8,
                step=4.0 * 0.8 / 6, steps=6, seed=attack_seed(9, 4))(x, y, keys=idx.tolist())
    assert not torch.equal(adv, other.adversarial)  # a new epoch draws new random starts
    loss, _ = vat.loss(clf.train(), x, y, idx)
    loss.backward()
    assert any(p.grad is not None for p in clf.parameters())


# --- TEAT ---------------------------------------------------------------------------------------


def test_teat_moving_average_penalty_and_ramp() -> None:
    ens = TemporalEnsemble(4, momentum=0.9)
    a, b = torch.randn(2, 3), torch.randn(2, 3)
    idx = torch.tensor([2, 0])
    assert float(ens.penalty(idx, [a]).abs().sum()) == 0  # no history yet: no penalty
    ens.update(idx, [a])
    ens.update(idx, [b])
    expected = 0.9 * (0.1 * a.softmax(1)) + 0.1 * b.softmax(1)
    assert torch.allclose(ens.stores[0][[2, 0]], expected)
    (soft,) = ens.targets(idx, [a])
    assert soft is not None and torch.allclose(soft, expected / expected.sum(1, keepdim=True))
    gap = ((a.softmax(1) - soft) ** 2).mean(1)
    assert torch.allclose(ens.penalty(idx, [a]), gap)
    mixed = ens.penalty(torch.tensor([2, 1]), [a])  # sample 1 has no history
    assert float(mixed[1]) == 0 and float(mixed[0]) == pytest.approx(float(gap[0]))
    ramp = [sigmoid_ramp(e, 10) for e in range(1, 11)]
    assert ramp[:5] == [0.0] * 5 and ramp[5] == pytest.approx(math.exp(-5))
    assert ramp[7:] == [1.0] * 3 and all(p <= q for p, q in itertools.pairwise(ramp))


def test_teat_averages_train_mode_outputs_of_an_eval_mode_attack() -> None:
    """TEAT's inner attack runs the network in eval mode (running batch-norm statistics, left
    untouched), and the caller's train mode is back for the training pass whose softmax the
    temporal ensemble averages and the loss is taken of. Checked on a batch-norm network
    against a copy run by hand, through the ensemble, the loss and the running statistics: an
    attack in train mode, or a network left in eval after it, changes each of them."""
    from medrobust.training.robust import TEAT

    torch.manual_seed(0)
    # no dropout: batch norm is then the only difference between the modes, and no RNG is drawn
    clf = Classifier(build_model("smallcnn", 3, 2, width=4, dropout=0.0), mean=[0.5] * 3,
                     std=[0.25] * 3, class_names=("a", "b"))
    ref = copy.deepcopy(clf)
    spec = _spec(clf)
    teat = TEAT(spec, RobustConfig("teat", eps=1.0, steps=3).validate(), n_train=12, epochs=2,
                seed=4)
    teat.begin_epoch(2)  # the ramp is on: with history, attack and loss include the penalty
    assert teat.weight > 0
    store = torch.zeros(12, 2)  # the ensemble, kept by hand
    # the third batch revisits the first one's samples, so their soft labels are in play
    for seed, idx in ((1, torch.arange(6)), (2, torch.arange(6, 12)), (3, torch.arange(6))):
        x, y = _batch(6, seed=seed)
        ref.eval()
        adv = teat.adversarial(ref, x, y, idx)  # the attack as an eval-mode network makes it
        with torch.no_grad():
            before, eval_out = ref(x), ref(adv)
        loss, _ = teat.loss(clf.train(), x, y, idx)
        out = ref.train()(adv)  # the one training pass: batch statistics, running ones updated
        p = out.softmax(1)
        old = store[idx]
        soft = old / old.sum(1, keepdim=True).clamp_min(1e-30)
        penalty = (old.sum(1) > 0).float() * (p - soft).square().mean(1)
        want = spec.batch_loss(out, y)[0] + teat.weight * penalty.mean()
        assert float(loss.detach()) == pytest.approx(float(want.detach()), rel=1e-5)
        store[idx] = 0.9 * old + 0.1 * p.detach()
        assert torch.allclose(teat.ensemble.stores[0], store, atol=1e-6)
        assert not torch.allclose(p, eval_out.softmax(1), atol=1e-3), "modes must differ here"
        for (name, a), b in zip(clf.model.state_dict().items(),
                                ref.model.state_dict().values(), strict=True):
            assert torch.allclose(a, b, atol=1e-6), name  # running stats: one update per batch
        with torch.no_grad():
            assert not torch.allclose(ref.eval()(x), before, atol=1e-4)  # ... which moved them


# --- whole trainings ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_data():
    return tuple(load_dataset("synthetic", s, size=16, n=n, seed=3)
                 for s, n in (("train", 96), ("val", 32)))


CONFIG = TrainConfig(model="smallcnn", model_kwargs={"width": 4}, epochs=3, batch_size=32,
                     seed=5)


def _weights(result) -> dict[str, torch.Tensor]:
    return result.classifier.model.state_dict()


def test_adaptive_margin_training_is_deterministic(small_data) -> None:
    train, val = small_data
    robust = RobustConfig("adaptive-margin", delta=0.1, steps=4, max_margin=1.0)
    one = train_classifier(train, val, CONFIG, robust=robust)
    two = train_classifier(train, val, CONFIG, robust=robust)
    for k, v in _weights(one).items():
        assert torch.equal(v, _weights(two)[k]), k
    assert torch.equal(one.objective.margins.values, two.objective.margins.values)
    rows = [r["margins"] for r in one.history]
    assert len(rows) == 3 and all(sum(r["counts"]) == len(train) for r in rows)
    assert rows[-1]["max"] <= 1.0 and rows[0]["drawn"] == len(train)
    assert one.history[0]["rule"]["rule"] == "loss" and "ce" in one.history[0]["rule"]["xi"]


def test_resume_after_a_stop_gives_the_same_weights(small_data, tmp_path, monkeypatch) -> None:
    train, val = small_data
    robust = RobustConfig("adaptive-margin", delta=0.1, steps=3, refine=True)
    whole = train_classifier(train, val, CONFIG, robust=robust, state_dir=tmp_path / "a")
    killed_after_epoch(monkeypatch, lambda: train_classifier(  # the kill, after epoch 2's state
        train, val, CONFIG, robust=robust, state_dir=tmp_path / "b"), epoch=2)
    resumed = train_classifier(train, val, CONFIG, robust=robust, state_dir=tmp_path / "b")
    for k, v in _weights(whole).items():
        assert torch.equal(v, _weights(resumed)[k]), k
    assert torch.equal(whole.objective.margins.values, resumed.objective.margins.values)
    assert [r["margins"] for r in whole.history] == [r["margins"] for r in resumed.history]
    assert resumed.best_epoch == whole.best_epoch
    assert (tmp_path / "b" / MARGINS_FILE).is_file()
    # a state written by other settings is refused, not mixed in
    with pytest.raises(Exception, match="other settings"):
        train_classifier(train, val, CONFIG, robust=RobustConfig("vat", eps=0.5),
                         state_dir=tmp_path / "b")


def test_vat_and_teat_train_and_differ_from_standard(small_data) -> None:
    train, val = small_data
    cfg = TrainConfig(model="smallcnn", model_kwargs={"width": 4}, epochs=2, batch_size=48,
                      seed=5)
    std = train_classifier(train, val, cfg)
    for robust in (RobustConfig("vat", eps=0.5, steps=3), RobustConfig("teat", eps=0.5, steps=2)):
        res = train_classifier(train, val, cfg, robust=robust)
        assert all(np.isfinite(r["train_loss"]) for r in res.history)
        assert any(not torch.equal(v, _weights(std)[k]) for k, v in _weights(res).items())
    # 2 epochs: the ramp starts with epoch 2 (half the epochs done) at exp(-5) of the weight
    assert res.history[-1]["teat_weight"] == pytest.approx(300 * math.exp(-5))


def test_segmentation_adaptive_margin_uses_the_dice_rule(tmp_path) -> None:
    from test_segmentation import make_folder as seg_folder

    from medrobust.training.segmentation import SegTrainConfig, train_segmenter

    root = seg_folder(tmp_path / "seg", 12, [(24, 24)], colour=False)
    train, val = (load_dataset("segfolder", s, data_dir=root, size=16, seed=1)
                  for s in ("train", "val"))
    cfg = SegTrainConfig(model_kwargs={"channels": (4, 8), "strides": (2,)}, epochs=2,
                         batch_size=4)
    res = train_segmenter(train, val, cfg, robust=RobustConfig(
        "adaptive-margin", delta=0.3, steps=3), state_dir=tmp_path / "out")
    rule = res.history[-1]["rule"]
    assert rule["rule"] == "dice" and 0 < rule["threshold"] <= 1
    assert (tmp_path / "out" / MARGINS_FILE).is_file()


def test_detection_robust_training_resumes(tmp_path, monkeypatch) -> None:
    from test_detection import _toy_dataset

    from medrobust.training.detection import train_detector

    train, val = _toy_dataset(12, 0), _toy_dataset(4, 1)
    kw = dict(epochs=2, batch_size=6, seed=0, width=4, robust=RobustConfig(
        "adaptive-margin", delta=0.5, steps=2))
    net, hist = train_detector(train, val, state_dir=tmp_path / "a", **kw)
    xi = hist["robust"]["rule"]["xi"]
    assert set(xi) == {"heatmap", "size", "offset"}  # three thresholds, all must hold
    assert hist["epochs"][-1]["margins"]["drawn"] == 12
    killed_after_epoch(
        monkeypatch, lambda: train_detector(train, val, state_dir=tmp_path / "b", **kw))
    again, hist2 = train_detector(train, val, state_dir=tmp_path / "b", **kw)
    for k, v in net.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k
    assert hist2["epochs"][-1]["margins"] == hist["epochs"][-1]["margins"]


@pytest.mark.parametrize("method", ["vat", "teat"])
def test_robust_detector_training_updates_batch_norm(monkeypatch, method) -> None:
    """Robust steps train the network in train mode (batch statistics, running averages
    updated), although the inner attack runs in eval mode in between: the detector wrapper's
    flag, which the attack restores, must not put the network back in eval."""
    from test_detection import _toy_dataset

    from medrobust.training import detection

    seen: list[bool] = []
    forward = detection.Detector.forward

    def spy(self, x):
        if torch.is_grad_enabled():  # attack and training passes; validation runs without
            seen.append(self.model.training)
        return forward(self, x)

    monkeypatch.setattr(detection.Detector, "forward", spy)
    train, val = _toy_dataset(12, 0), _toy_dataset(4, 1)
    detection.train_detector(train, val, epochs=1, batch_size=6, seed=0, width=4,
                             robust=RobustConfig(method, eps=0.5, steps=2))
    # each of the two batches: two eval-mode attack steps, then the train-mode training pass;
    # then the final epoch's cheap validation attack (PGD-10, one batch of 4), in eval mode
    assert seen == [False, False, True] * 2 + [False] * 10


def test_landmarks_adaptive_margin_from_the_cli(tmp_path, capsys) -> None:
    make_folder(tmp_path / "lm", n=12, h=24, w=20)
    common = ["--task", "landmarks", "--dataset", "landmarks", "--data-dir",
              str(tmp_path / "lm"), "--size", "24", "--width", "2", "--store",
              str(tmp_path / "s.db")]
    run_json(capsys, "train", *common, "--epochs", "1", "--out", str(tmp_path / "std"))
    out = run_json(capsys, "train", *common, "--epochs", "2", "--robust", "adaptive-margin",
                   "--delta", "0.2", "--xi", "huber", "--xi-from", str(tmp_path / "std"),
                   "--out", str(tmp_path / "am"))
    robust = out["robust"]
    assert robust["method"] == "adaptive-margin" and robust["margins_file"] == MARGINS_FILE
    assert set(robust["rule"]["xi"]) == {"heatmap", "offset"}
    meta = json.loads((tmp_path / "am" / "meta.json").read_text())
    assert meta["robust"]["margins"]["counts"] and (tmp_path / "am" / MARGINS_FILE).is_file()
    scales = meta["robust"]["scales"]
    assert scales["delta"]["rms_255"] == pytest.approx(rms_255(0.2, scales["image_shape"]))
    assert not (tmp_path / "am" / "train_state.pt").exists()  # cleared once saved
    assert Margins.load(tmp_path / "am" / MARGINS_FILE).values.shape == (out["sizes"]["train"],)


@pytest.mark.parametrize(("args", "message"), [
    (["--robust", "vat"], "needs --eps"),
    (["--robust", "adaptive-margin", "--delta", "0.1"], "needs --xi-from"),
    (["--robust", "teat", "--eps", "-2"], "positive L2 budget"),
    (["--eps", "0.5"], "--eps applies to --robust vat and teat"),
])
def test_bad_robust_options_give_one_line(tmp_path, capsys, args, message) -> None:
    code, _, err = run_cli(capsys, "train", "--dataset", "synthetic", "--size", "16", *args,
                           "--out", str(tmp_path / "m"), "--store", str(tmp_path / "s.db"))
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(("robust", "passes"), [
    (RobustConfig("vat", eps=0.5, steps=4), 4 + 1),                  # attack steps + training
    (RobustConfig("teat", eps=0.5, steps=3), 3 + 1),
    (RobustConfig("adaptive-margin", delta=0.1, steps=4), 4 + 1 + 2),  # + final check, L0, L1
])
def test_inner_attack_costs_no_recomputation(robust, passes) -> None:
    """Forward passes per batch: the bound of steps (+1 check) + the training passes."""
    from medrobust.training.robust import build_objective

    clf = _classifier()
    x, y = _batch(4)
    objective = build_objective(robust, _spec(clf), n_train=4, epochs=1, seed=0)
    if robust.method == "adaptive-margin":
        objective.rule = LossRule({"ce": 10.0})
    objective.begin_epoch(1)
    calls = []
    handle = clf.model.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        objective.loss(clf.train(), x, y, torch.arange(4))
    finally:
        handle.remove()
    assert len(calls) == passes


def test_landmark_training_resumes_with_teat(tmp_path, monkeypatch) -> None:
    from medrobust.training.landmarks import train_landmark_model

    make_folder(tmp_path / "lm", n=10, h=24, w=20)
    train, val = (load_dataset("landmarks", s, data_dir=tmp_path / "lm", size=24)
                  for s in ("train", "val"))
    kw = dict(epochs=3, batch_size=4, width=2, robust=RobustConfig("teat", eps=0.5, steps=2))
    model, hist = train_landmark_model(train, val, state_dir=tmp_path / "a", **kw)
    killed_after_epoch(
        monkeypatch, lambda: train_landmark_model(train, val, state_dir=tmp_path / "b", **kw),
        epoch=2)
    again, hist2 = train_landmark_model(train, val, state_dir=tmp_path / "b", **kw)
    for k, v in model.model.state_dict().items():
        assert torch.equal(v, again.model.state_dict()[k]), k
    assert [r["val_mre"] for r in hist] == [r["val_mre"] for r in hist2]


def test_fine_tuning_builds_the_network_of_its_starting_checkpoint(tmp_path, capsys) -> None:
    """--xi-from without --width fine-tunes the checkpoint's own network; a different one is a
    clear one-line error, not PyTorch's list of mismatched tensors."""
    common = ["--dataset", "synthetic", "--size", "16", "--store", str(tmp_path / "s.db")]
    run_json(capsys, "train", *common, "--epochs", "1", "--width", "4",
             "--out", str(tmp_path / "std"))
    out = run_json(capsys, "train", *common, "--epochs", "1", "--robust", "vat", "--eps", "0.1",
                   "--xi-from", str(tmp_path / "std"), "--out", str(tmp_path / "vat"))
    assert out["checkpoint"].endswith("vat")
    meta = json.loads((tmp_path / "vat" / "meta.json").read_text())
    assert meta["model_kwargs"] == {"width": 4}
    code, _, err = run_cli(capsys, "train", *common, "--epochs", "1", "--width", "8",
                           "--robust", "vat", "--eps", "0.1", "--xi-from", str(tmp_path / "std"),
                           "--out", str(tmp_path / "vat8"))
    assert code == 2 and "holds another network" in err and len(err.strip().splitlines()) == 1


def test_a_robust_checkpoint_names_the_model_it_started_from(tmp_path, capsys) -> None:
    common = ["--dataset", "synthetic", "--size", "16", "--width", "4",
              "--store", str(tmp_path / "s.db")]
    run_json(capsys, "train", *common, "--epochs", "1", "--out", str(tmp_path / "std"))
    run_json(capsys, "train", *common, "--epochs", "1", "--robust", "vat", "--eps", "0.1",
             "--xi-from", str(tmp_path / "std"), "--out", str(tmp_path / "vat"))
    meta = json.loads((tmp_path / "vat" / "meta.json").read_text())
    assert meta["robust"]["started_from"] == str((tmp_path / "std").resolve())
