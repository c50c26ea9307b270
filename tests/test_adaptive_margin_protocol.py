"""The adaptive-margin protocol (issue 22): which epoch is kept (``--keep``), the per-epoch margin
record and its warning, training on the bisected boundary point (``--refine-margins``), the
``--delta auto`` search (its grid, scores, choice and resume), and ``--clean-weight``."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from cli_util import run_cli, run_json
from test_landmarks import make_folder
from test_training_resume import killed_after_epoch

from medrobust.attacks.projection import flat_norm
from medrobust.data import load_dataset
from medrobust.errors import ConfigError
from medrobust.models import Classifier, build_model
from medrobust.tasks.robust import robust_summary
from medrobust.training import TrainConfig, train_classifier
from medrobust.training.loop import EpochEnd, Judgement, torch_shuffle, train_epochs
from medrobust.training.robust import AdaptiveMargin, LossRule, LossSpec, RobustConfig, margin_pgd
from medrobust.training.robust import search as search_module
from medrobust.training.robust.margins import MarginsNeverMoved
from medrobust.training.robust.objectives import TermScore
from medrobust.training.robust.search import FRACTIONS, SEARCH_FILE
from medrobust.training.robust.selection import ValAttack, selection_budget

pytestmark = pytest.mark.usefixtures("one_thread_module")


@pytest.fixture(scope="module")
def data():
    return tuple(load_dataset("synthetic", s, size=16, n=n, seed=3)
                 for s, n in (("train", 48), ("val", 16)))


CONFIG = TrainConfig(model="smallcnn", model_kwargs={"width": 4}, epochs=3, batch_size=24,
                     seed=5)
AM = RobustConfig("adaptive-margin", delta=0.1, steps=2)


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _set_rule(monkeypatch: pytest.MonkeyPatch, xi: float) -> None:
    """Calibration sets xi on the cross-entropy to ``xi`` (negative: every check fails)."""

    def calibrate(self, model, batches):
        self.rule = LossRule({"ce": xi})
        return self.rule.describe()

    monkeypatch.setattr(AdaptiveMargin, "calibrate", calibrate)


# --- which epoch is kept ------------------------------------------------------------------------


def _scripted_run(policy: str | None, clean: list[float], attacked: list[float]):
    """Three epochs of a linear model whose validation keys are scripted; the weights each
    epoch ended with, and the loop's result."""
    from medrobust.training.robust.selection import Selection

    torch.manual_seed(0)
    net = torch.nn.Linear(3, 1)
    x, y = torch.randn(8, 3), torch.randn(8, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    seen: list[dict[str, torch.Tensor]] = []
    attack = ValAttack(0.5, 1, "test", (1, 1, 3))
    selection = None if policy is None else Selection(policy, "scripted", attack)

    def review(end: EpochEnd) -> Judgement:
        seen.append(_weights(net))
        robust_key = (attacked[end.epoch - 1],) if end.attack else None
        return Judgement({"epoch": end.epoch, "attacked": end.attack},
                         (clean[end.epoch - 1],), {"epoch": end.epoch}, {}, robust_key)

    done = train_epochs(net, net, 8, epochs=3, batch_size=4, optimizer=opt,
                        shuffle=torch_shuffle(torch.Generator().manual_seed(0)),
                        batch_loss=lambda i: ((net(x[i]) - y[i]) ** 2).mean(), review=review,
                        desc="t", selection=selection)
    return net, seen, done


@pytest.mark.parametrize(("policy", "kept"), [(None, 2), ("best-clean", 2), ("final", 3),
                                              ("best-robust", 1)])
def test_keep_policy_keeps_its_epoch_and_records_why(policy, kept) -> None:
    """Clean keys peak at epoch 2, attacked keys at epoch 1: each policy keeps its own epoch's
    weights, and a robust run's last row records which and why."""
    net, seen, done = _scripted_run(policy, [0.5, 0.9, 0.7], [0.8, 0.1, 0.3])
    assert done.best_epoch == kept
    for k, v in net.state_dict().items():
        assert torch.equal(v, seen[kept - 1][k]), k
    # the attacked validation runs every epoch under best-robust, else on the final one only
    attacked = [r["attacked"] for r in done.history]
    assert attacked == ([False] * 3 if policy is None else
                        [True] * 3 if policy == "best-robust" else [False, False, True])
    if policy is None:  # standard training records nothing new
        assert done.kept is None and "kept" not in done.history[-1]
        return
    record = done.history[-1]["kept"]
    assert record == done.kept and record["policy"] == policy and record["epoch"] == kept
    assert record["best_clean_epoch"] == 2 and record["clean_key"] == [[0.5, 0.9, 0.7][kept - 1]]
    assert f"--keep {policy}" in record["why"] and record["attack"]["eps"] == 0.5


def test_robust_training_keeps_the_final_epoch_by_default(data) -> None:
    train, val = data
    final = train_classifier(train, val, CONFIG, robust=RobustConfig("vat", eps=0.3, steps=2))
    clean = train_classifier(train, val, CONFIG, robust=RobustConfig(
        "vat", eps=0.3, steps=2, keep="best-clean"))
    assert final.best_epoch == 3 and final.kept["policy"] == "final"
    # best-clean: the epoch whose validation key (AUC, then lower loss) is highest
    keys = [(r["val_auc"], -r["val_loss"]) for r in clean.history]
    assert clean.best_epoch == 1 + max(range(3), key=lambda i: (keys[i], -i))
    assert clean.kept["best_clean_epoch"] == clean.best_epoch
    # both record the final epoch's validation under the cheap attack, robust numbers that
    # cannot beat the clean ones on the same images by much
    row = final.history[-1]
    assert row["val_attacked_accuracy"] <= row["val_accuracy"] + 1e-9
    assert final.kept["attack"]["steps"] == 10 and final.kept["attack"]["eps"] == 0.3


def test_best_robust_keeps_the_best_attacked_epoch_and_resumes(data, tmp_path,
                                                               monkeypatch) -> None:
    train, val = data
    robust = RobustConfig("vat", eps=0.3, steps=2, keep="best-robust", select_eps=0.5)
    whole = train_classifier(train, val, CONFIG, robust=robust, state_dir=tmp_path / "a")
    keys = [(r["val_attacked_auc"], -r["val_attacked_loss"]) for r in whole.history]
    assert whole.best_epoch == 1 + max(range(3), key=lambda i: (keys[i], -i))
    assert whole.kept["robust_key"] == list(keys[whole.best_epoch - 1])
    assert whole.kept["attack"]["eps"] == 0.5 and whole.kept["attack"]["budget_from"] == \
        "--select-eps"
    killed_after_epoch(monkeypatch, lambda: train_classifier(
        train, val, CONFIG, robust=robust, state_dir=tmp_path / "b"), epoch=2)
    again = train_classifier(train, val, CONFIG, robust=robust, state_dir=tmp_path / "b")
    assert again.kept == whole.kept and again.best_epoch == whole.best_epoch
    for k, v in whole.classifier.model.state_dict().items():
        assert torch.equal(v, again.classifier.model.state_dict()[k]), k


# --- the margin record ----------------------------------------------------------------------------


def test_margin_record_counts_every_sample_each_epoch(data) -> None:
    train, val = data
    res = train_classifier(train, val, CONFIG, robust=RobustConfig(
        "adaptive-margin", delta=0.1, steps=2, max_margin=0.25))
    n = len(train)
    for row in res.history:
        m = row["margins"]
        assert m["grew"] + m["shrank"] + m["stayed"] == n
        assert m["correct"] + m["failed"] == m["drawn"] == n
        assert sum(m["d_histogram"]["counts"]) == n and sum(m["counts"]) == n
        assert m["min"] <= m["median"] <= m["max"] <= 0.25 + 1e-12
        assert (m["beyond_delta"] > 0) == (m["max"] > 0.1 * (1 + 1e-9))
        assert m["d_histogram"]["counts"][0] == n - m["beyond_delta"] or m["max"] >= 0.15
    # the fixed D bins: the same edges every epoch, so epochs compare bin by bin
    assert len({tuple(r["margins"]["d_histogram"]["lower_edges"]) for r in res.history}) == 1


def test_margins_that_never_move_warn_once_and_are_recorded(data, monkeypatch) -> None:
    train, val = data
    _set_rule(monkeypatch, -1.0)  # cross-entropy is never negative: every check fails
    with pytest.warns(MarginsNeverMoved, match="never moved beyond D = 0.1 in 3 epoch"):
        stuck = train_classifier(train, val, CONFIG, robust=AM)
    assert all(r["margins"]["max"] == 0.1 and r["margins"]["grew"] == 0 for r in stuck.history)
    record = robust_summary(AM, stuck.history, None, (3, 16, 16))
    assert record["margins_moved_beyond_delta"] is False
    _set_rule(monkeypatch, 1e9)  # every check holds: margins grow by D each epoch
    with warnings.catch_warnings():
        warnings.simplefilter("error", MarginsNeverMoved)
        moved = train_classifier(train, val, CONFIG, robust=AM)
    assert moved.history[-1]["margins"]["min"] == pytest.approx(0.4)
    assert robust_summary(AM, moved.history, None)["margins_moved_beyond_delta"] is True


# --- boundary-point training ------------------------------------------------------------------


def _classifier() -> Classifier:
    torch.manual_seed(0)
    return Classifier(build_model("smallcnn", 3, 2, width=4), mean=[0.5] * 3, std=[0.25] * 3,
                      class_names=("a", "b"))


def test_refinement_trains_on_the_boundary_point() -> None:
    clf = _classifier().eval()
    g = torch.Generator().manual_seed(1)
    x = 0.2 + 0.6 * torch.rand(8, 3, 16, 16, generator=g)
    y = torch.randint(0, 2, (8,), generator=g)
    spec = LossSpec(terms=lambda out, t: {"ce": torch.nn.functional.cross_entropy(
        out, t, reduction="none"), "total": torch.nn.functional.cross_entropy(
        out, t, reduction="none")})
    with torch.no_grad():
        clean = torch.nn.functional.cross_entropy(clf(x), y, reduction="none")
    rule = LossRule({"ce": float(clean.max()) + 1e-3})  # all correct clean, noise breaks some
    eps = torch.full((8,), 2.0)
    kw = dict(delta=0.5, alpha=4.0, steps=10, seed=3, keys=list(range(8)))
    plain = margin_pgd(clf, x, TermScore(spec, y, rule), eps, **kw)
    refined = margin_pgd(clf, x, TermScore(spec, y, rule), eps, refine=True, **kw)
    failed = ~refined.always_correct
    assert failed.any() and (~failed).any()
    assert torch.equal(plain.noisy, plain.adversarial)  # without refinement: the final iterate
    assert torch.equal(refined.adversarial, plain.adversarial)
    assert torch.equal(refined.noisy[~failed], refined.adversarial[~failed])
    assert not torch.equal(refined.noisy[failed], refined.adversarial[failed])
    # the trained point's norm is the recorded one, inside the final iterate's
    trained = flat_norm(refined.noisy - x, "l2")
    final = flat_norm(refined.adversarial - x, "l2")
    assert torch.allclose(trained, refined.norms, atol=1e-5)
    assert (trained[failed] <= final[failed] + 1e-5).all()
    assert refined.noisy.min() >= 0 and refined.noisy.max() <= 1
    # and the boundary point is still correct under the rule
    with torch.no_grad():
        _, ok = TermScore(spec, y, rule)(clf(refined.noisy))
    assert ok[failed].all()


def test_landmark_refinement_changes_what_is_trained(tmp_path) -> None:
    """The authors' landmark code trains on the bisected point: with refinement on, the weights
    after one epoch differ from refinement off on the same seed (the noisy loss moved), while
    only failed samples can differ."""
    from medrobust.training.landmarks import train_landmark_model

    make_folder(tmp_path / "lm", n=10, h=24, w=20)
    train, val = (load_dataset("landmarks", s, data_dir=tmp_path / "lm", size=24)
                  for s in ("train", "val"))
    out = {}
    for refine in (False, True):
        model, hist = train_landmark_model(
            train, val, epochs=1, batch_size=4, width=2, augment=False,
            robust=RobustConfig("adaptive-margin", delta=0.5, steps=3, xi="mean", refine=refine))
        out[refine] = (_weights(model.model), hist[-1]["margins"])
    assert out[True][1]["failed"] > 0  # some sample was bisected
    assert any(not torch.equal(v, out[True][0][k]) for k, v in out[False][0].items())


# --- the delta search -----------------------------------------------------------------------------


SEARCH = RobustConfig("adaptive-margin", delta="auto", steps=2, delta_search_epochs=2,
                      select_eps=0.8)


def test_delta_search_records_the_grid_and_picks_the_best_score(data, tmp_path) -> None:
    train, val = data
    cfg = TrainConfig(model="smallcnn", model_kwargs={"width": 4}, epochs=2, batch_size=24,
                      seed=5)
    res = train_classifier(train, val, cfg, robust=SEARCH, state_dir=tmp_path)
    record = res.history[-1]["delta_search"]
    assert record["grid"] == pytest.approx([0.8 * f for f in FRACTIONS])
    assert record["budget"] == {"l2": 0.8, "from": "--select-eps"} and record["epochs"] == 2
    cands = record["candidates"]
    assert [c["delta"] for c in cands] == record["grid"]
    for c in cands:
        assert c["score"] == pytest.approx((c["clean"] + c["attacked"]) / 2)
        assert c["epochs"] == 2
    scores = [c["score"] for c in cands]
    assert record["chosen"] == record["grid"][int(np.argmax(scores))]
    # the full run trained with the chosen D, and the record is on disk for a resume
    assert all(r["margins"]["delta"] == record["chosen"] for r in res.history)
    saved = json.loads((tmp_path / SEARCH_FILE).read_text())
    assert saved["chosen"] == record["chosen"] and saved["candidates"] == cands
    assert not (tmp_path / search_module.SEARCH_DIR).exists()  # candidate states cleaned up
    summary = robust_summary(SEARCH, res.history, tmp_path, (3, 16, 16))
    assert summary["delta"] == record["chosen"] and summary["delta_search"]["grid"]
    assert summary["delta_search_file"] == SEARCH_FILE and summary["kept"]["policy"] == "final"


def test_delta_search_resumes_after_a_kill(data, tmp_path, monkeypatch) -> None:
    train, val = data
    cfg = TrainConfig(model="smallcnn", model_kwargs={"width": 4}, epochs=2, batch_size=24,
                      seed=5)
    whole = train_classifier(train, val, cfg, robust=SEARCH, state_dir=tmp_path / "a")

    # kill 1: inside the first candidate, after its first epoch's state
    killed_after_epoch(monkeypatch, lambda: train_classifier(
        train, val, cfg, robust=SEARCH, state_dir=tmp_path / "b"), epoch=1)
    assert (tmp_path / "b" / search_module.SEARCH_DIR / "0").is_dir()
    # kill 2: right after the second candidate is recorded
    save = search_module.save_record

    def stop(state_dir, record):
        save(state_dir, record)
        if len(record["candidates"]) == 2 and record["chosen"] is None:
            raise KeyboardInterrupt

    monkeypatch.setattr(search_module, "save_record", stop)
    with pytest.raises(KeyboardInterrupt):
        train_classifier(train, val, cfg, robust=SEARCH, state_dir=tmp_path / "b")
    monkeypatch.setattr(search_module, "save_record", save)
    # the same command continues: three candidates left, then the full run (a fresh start
    # calibrates xi, a resumed one does not)
    calls: list[int] = []
    calibrate = AdaptiveMargin.calibrate
    monkeypatch.setattr(AdaptiveMargin, "calibrate",
                        lambda self, m, b: calls.append(1) or calibrate(self, m, b))
    again = train_classifier(train, val, cfg, robust=SEARCH, state_dir=tmp_path / "b")
    assert len(calls) == 3 + 1
    assert again.history[-1]["delta_search"] == whole.history[-1]["delta_search"]
    for k, v in whole.classifier.model.state_dict().items():
        assert torch.equal(v, again.classifier.model.state_dict()[k]), k
    # a search record of other settings is refused, not mixed in
    other = RobustConfig("adaptive-margin", delta="auto", steps=3, delta_search_epochs=2,
                         select_eps=0.8)
    with pytest.raises(Exception, match="other settings"):
        train_classifier(train, val, cfg, robust=other, state_dir=tmp_path / "b")


def test_selection_budget_defaults() -> None:
    shape = (1, 28, 28)
    assert selection_budget(RobustConfig("vat", eps=0.4), shape)[0] == 0.4
    assert selection_budget(RobustConfig("adaptive-margin", delta=0.1, max_margin=0.7),
                            shape)[0] == 0.7
    eps, source = selection_budget(RobustConfig("adaptive-margin", delta=0.1), shape)
    assert eps == pytest.approx(2 / 255 * 28) and "2 grey levels" in source


# --- options ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("args", "message"), [
    (["--robust", "adaptive-margin", "--delta", "0.1", "--clean-weight", "0.5"],
     "--clean-weight applies to --robust vat, not adaptive-margin"),
    (["--robust", "teat", "--eps", "0.5", "--clean-weight", "0.5"],
     "--clean-weight applies to --robust vat, not teat"),
    (["--robust", "vat", "--eps", "0.5", "--clean-weight", "1.5"], "--clean-weight must be in"),
    (["--keep", "final"], "--keep applies to --robust"),
    (["--robust", "adaptive-margin", "--delta", "0.1", "--delta-search-epochs", "2"],
     "--delta-search-epochs applies to --delta auto only"),
    (["--robust", "vat", "--eps", "0.5", "--delta-search-epochs", "2"],
     "--delta-search-epochs applies to --robust adaptive-margin, not vat"),
    (["--robust", "vat", "--eps", "0.5", "--select-eps", "-1"], "--select-eps must be a "
     "positive"),
])
def test_protocol_options_are_refused_where_they_do_not_apply(tmp_path, capsys, args,
                                                               message) -> None:
    code, _, err = run_cli(capsys, "train", "--dataset", "synthetic", "--size", "16", *args,
                           "--out", str(tmp_path / "m"), "--store", str(tmp_path / "s.db"))
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_clean_weight_reaches_vat(data) -> None:
    train, val = data
    cfg = TrainConfig(model="smallcnn", model_kwargs={"width": 4}, epochs=1, batch_size=24,
                      seed=5)
    plain = train_classifier(train, val, cfg, robust=RobustConfig("vat", eps=0.3, steps=2))
    mixed = train_classifier(train, val, cfg, robust=RobustConfig("vat", eps=0.3, steps=2,
                                                                  vat_clean_weight=0.5))
    assert any(not torch.equal(v, mixed.classifier.model.state_dict()[k])
               for k, v in plain.classifier.model.state_dict().items())
    with pytest.raises(ConfigError, match="--clean-weight applies to --robust vat only"):
        RobustConfig("adaptive-margin", delta=0.1, vat_clean_weight=0.5).validate()


# --- --delta auto from the CLI, every task --------------------------------------------------------


def _task_data(task: str, root) -> list[str]:
    if task == "classification":
        from PIL import Image

        rng = np.random.default_rng(0)
        for c, (name, level) in enumerate((("dark", 70), ("light", 180))):
            (root / "cls" / name).mkdir(parents=True)
            for i in range(10):
                pixels = np.clip(level + rng.normal(0, 30, (16, 16, 3)), 0, 255)
                Image.fromarray(pixels.astype(np.uint8)).save(root / "cls" / name / f"{c}{i}.png")
        return ["--dataset", "folder", "--data-dir", str(root / "cls"), "--size", "16",
                "--width", "4"]
    if task == "segmentation":
        from test_segmentation import make_folder as seg_folder

        seg_folder(root / "seg", 12, [(24, 24)], colour=False)
        return ["--task", "segmentation", "--dataset", "segfolder", "--data-dir",
                str(root / "seg"), "--size", "16"]
    if task == "landmarks":
        make_folder(root / "lm", n=12, h=24, w=20)
        return ["--task", "landmarks", "--dataset", "landmarks", "--data-dir", str(root / "lm"),
                "--size", "24", "--width", "2"]
    from test_detection import _voc

    boxes = {f"i{k}": [("RBC", 4 + k, 4, 20 + k, 18, 0), ("WBC", 30, 20, 56, 44, 0)]
             for k in range(8)}
    _voc(root / "voc", boxes, {"train": [f"i{k}" for k in range(5)], "val": ["i5", "i6"],
                               "test": ["i7"]})
    return ["--task", "detection", "--dataset", "voc", "--data-dir", str(root / "voc"),
            "--size", "32", "--width", "4"]


@pytest.mark.parametrize("task", ["classification", "segmentation", "landmarks", "detection"])
def test_delta_auto_from_the_cli_on_every_task(tmp_path, capsys, task) -> None:
    common = [*_task_data(task, tmp_path), "--store", str(tmp_path / "s.db")]
    run_json(capsys, "train", *common, "--epochs", "1", "--out", str(tmp_path / "std"))
    out = run_json(capsys, "train", *common, "--epochs", "2", "--robust", "adaptive-margin",
                   "--delta", "auto", "--delta-search-epochs", "1", "--keep", "best-robust",
                   "--xi-from", str(tmp_path / "std"), "--out", str(tmp_path / "am"))
    robust = out["robust"]
    search = robust["delta_search"]
    assert len(search["candidates"]) == len(FRACTIONS) == len(search["grid"])
    assert robust["delta"] == search["chosen"] in search["grid"]
    assert robust["kept"]["policy"] == "best-robust" and robust["kept"]["robust_key"] is not None
    assert out["best_epoch"] == robust["kept"]["epoch"]
    meta = json.loads((tmp_path / "am" / "meta.json").read_text())
    assert meta["robust"]["delta_search_file"] == SEARCH_FILE
    assert (tmp_path / "am" / SEARCH_FILE).is_file()
    assert not (tmp_path / "am" / "train_state.pt").exists()
