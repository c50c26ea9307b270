"""The worst-case ensemble for tasks without class logits (issue 21, first step): per image never
weaker than any member run alone, budgets exact, seeds reproducible, and `evaluate --attack
ensemble` on a segmentation model through the protocol, never above PGD's Dice on any image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from cli_util import run_cli, run_json
from test_segmentation import make_folder

from medrobust.attacks.pgd import PGD
from medrobust.attacks.worst_case import WorstCase
from medrobust.data import load_dataset
from medrobust.errors import ConfigError
from medrobust.store import Store
from medrobust.tasks import get_task
from medrobust.training.segmentation import SegTrainConfig, train_segmenter


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory):
    root = make_folder(tmp_path_factory.mktemp("blobs") / "data", 40, [(32, 32)], colour=False,
                       seed=5)
    opts = {"data_dir": root, "size": 32, "val_fraction": 0.2, "test_fraction": 0.2}
    tr, va, te = (load_dataset("segfolder", s, **opts) for s in ("train", "val", "test"))
    cfg = SegTrainConfig(model_kwargs={"channels": (8, 16), "strides": (2,)}, epochs=3,
                         batch_size=8, lr=1e-2, seed=0)
    return train_segmenter(tr, va, cfg).segmenter, te, root


def _members(model, eps: float):
    task = get_task("segmentation")
    losses = task.ensemble_losses
    return [PGD(model, loss=task.attack_loss(model), norm="l2", eps=eps, steps=5, seed=1),
            PGD(model, loss=losses["masked-ce"](model), norm="l2", eps=eps, steps=5, seed=1),
            PGD(model, loss=losses["js"](model), norm="l2", eps=eps, steps=5, seed=1)]


def test_the_worst_case_is_never_weaker_than_a_member_on_any_image(segmenter):
    model, te, _ = segmenter
    task = get_task("segmentation")
    x = model.to_tensor(te.images[:6])
    y = torch.from_numpy(te.masks[:6].astype(np.int64))
    keys = list(range(6))
    ens = WorstCase(model, _members(model, 1.0), task.image_damage,
                    labels=["pgd", "masked-ce", "js"])
    out = ens(x, y, keys=keys)
    for member, label in zip(_members(model, 1.0), ("pgd", "masked-ce", "js"), strict=True):
        alone = member(x, y, keys=keys).adversarial  # the same member, run by itself
        hurt = task.image_damage(model, alone, y).double()
        assert torch.all(out.damage >= hurt - 1e-12), label
        assert torch.allclose(out.damage_by_member[label], hurt)
    # the returned image is the winner's, unchanged, so its budget holds exactly
    assert torch.all(out.perturbation_norms(x)["l2"] <= 1.0 + 1e-6)
    assert torch.allclose(task.image_damage(model, out.adversarial, y).double(), out.damage)
    assert set(out.member) <= {"pgd", "masked-ce", "js"}
    again = WorstCase(model, _members(model, 1.0), task.image_damage,
                      labels=["pgd", "masked-ce", "js"])(x, y, keys=keys)
    assert torch.equal(again.adversarial, out.adversarial)  # same seeds, same images


def test_worst_case_refuses_mixed_norms_and_duplicate_labels(segmenter):
    model, _, _ = segmenter
    task = get_task("segmentation")
    a = PGD(model, loss=task.attack_loss(model), norm="l2", eps=1.0)
    b = PGD(model, loss=task.attack_loss(model), norm="linf", eps=4 / 255)
    with pytest.raises(ConfigError, match="one norm"):
        WorstCase(model, [a, b], task.image_damage)
    with pytest.raises(ConfigError, match="distinct labels"):
        WorstCase(model, [a, a], task.image_damage, labels=["x", "x"])


def test_evaluate_ensemble_on_a_segmenter_beats_pgd_per_image(segmenter, tmp_path, capsys):
    _, _, root = segmenter
    db, ck = str(tmp_path / "s.db"), str(tmp_path / "unet")
    run_json(capsys, "train", "--task", "segmentation", "--dataset", "segfolder", "--data-dir",
             str(root), "--size", "32", "--epochs", "2", "--batch-size", "8", "--out", ck,
             "--store", db)
    out = run_json(capsys, "evaluate", "--model", ck, "--attack", "pgd,ensemble", "--l2", "1",
                   "--steps", "4", "--ifgsm-steps", "2", "--limit", "6", "--store", db)
    cells = {c["attack"]: c for c in out["cells"]}
    assert set(cells) == {"pgd", "ensemble"}
    with Store(db) as store:
        rows = {name: {r["dataset_index"]: r["adv_metric"]
                       for r in store.rows("task_attack_results", run_id=c["run_id"])}
                for name, c in cells.items()}
    assert rows["ensemble"].keys() == rows["pgd"].keys() and len(rows["pgd"]) == 6
    for i, dice in rows["ensemble"].items():  # the ensemble holds PGD itself: never better
        assert dice <= rows["pgd"][i] + 1e-9
    assert cells["ensemble"]["attacked"] <= cells["pgd"]["attacked"]
    # each image records every member's damage and the one kept: the kept one is the worst,
    # and the run's summary counts them and carries the black-box (masking) check
    with Store(db) as store:
        run = store.get_run(cells["ensemble"]["run_id"])
        ens_rows = store.rows("task_attack_results", run_id=run["id"])
    for r in ens_rows:
        damage = r["members"]["damage"]
        assert damage[r["members"]["kept"]] == max(damage.values())
        assert 1 - r["adv_metric"] == pytest.approx(max(damage.values()), abs=1e-6)
    members = run["summary"]["members"]
    assert "pgd" in members and "square" in members
    assert sum(m["kept"] for m in members.values()) == len(ens_rows)
    check = run["summary"]["gradient_masking"]
    assert check["flagged"] == (check["black_box_damage"] > check["best_gradient_damage"])
    from medrobust.campaigns.task_attack import member_summary

    fake = [{"members": {"damage": {"pgd": 0.1, "square": 0.5}, "kept": "square"}}] * 3
    assert member_summary(fake)["gradient_masking"]["flagged"]  # black box beat the gradient
    rep = run_json(capsys, "report", "--store", db, "--out", str(tmp_path / "rep"))
    html = Path(rep["report"]).read_text()
    assert "Worst-case ensembles: which attack each model fell to" in html
    assert run["summary"]["ensemble_damage"] >= max(m["mean_damage"] for m in members.values())
    code, _, err = run_cli(capsys, "evaluate", "--model", ck, "--attack", "apgd-t", "--l2", "1",
                           "--store", db)
    assert code == 2 and "apgd-t needs class logits" in err


def test_the_landmark_surrogate_measures_where_the_heatmap_mass_sits():
    """Landmarks' extra ensemble loss: about 0 when each heatmap peaks on its landmark, the
    distance when it peaks elsewhere, per image, and differentiable (PGD can climb it)."""
    loss = get_task("landmarks").ensemble_losses["soft-argmax"](None)
    k, h, w = 2, 16, 16
    truth = torch.tensor([[[3.0, 4.0], [10.0, 12.0]], [[3.0, 4.0], [10.0, 12.0]]])
    out = torch.full((2, 3 * k, h, w), -30.0)
    for j, (x, y) in enumerate(truth[0].tolist()):
        out[0, j, int(y), int(x)] = 30.0  # image 0: peaks on the truth
        out[1, j, int(y), int(x) + 5] = 30.0  # image 1: 5 px to the right
    out.requires_grad_(True)
    value = loss(out, truth)
    got = value.detach()
    assert got[0] < 1e-3 and float(got[1]) == pytest.approx(5.0, abs=1e-3)
    value.sum().backward()
    assert out.grad is not None and torch.isfinite(out.grad).all()


def test_evaluate_ensemble_on_a_landmark_model_is_never_below_pgds_error(tmp_path, capsys):
    """The landmark ensemble (PGD, IFGSM and PGD on the soft-argmax surrogate) through the
    protocol: per image its radial error is at least PGD's."""
    from test_landmarks import make_folder as landmark_folder

    landmark_folder(tmp_path / "lm", n=16, h=24, w=20)
    db, ck = str(tmp_path / "s.db"), str(tmp_path / "m")
    run_json(capsys, "train", "--task", "landmarks", "--dataset", "landmarks", "--data-dir",
             str(tmp_path / "lm"), "--size", "24", "--epochs", "2", "--width", "2", "--out", ck,
             "--store", db)
    out = run_json(capsys, "evaluate", "--model", ck, "--attack", "pgd,ensemble", "--l2", "1",
                   "--steps", "3", "--ifgsm-steps", "2", "--limit", "3", "--store", db)
    cells = {c["attack"]: c for c in out["cells"]}
    with Store(db) as store:
        rows = {name: {r["dataset_index"]: r["adv_metric"]
                       for r in store.rows("task_attack_results", run_id=c["run_id"])}
                for name, c in cells.items()}
    assert rows["ensemble"].keys() == rows["pgd"].keys()
    for i, mre in rows["ensemble"].items():
        assert mre >= rows["pgd"][i] - 1e-9


def test_a_killed_ensemble_resumes_to_the_uninterrupted_rows(segmenter, tmp_path, monkeypatch):
    """The dense ensemble through the protocol, killed after its first batch of images: the
    rows already computed are kept, the same call resumes the rest, and every image's row
    equals an uninterrupted run's (each member keyed per image, the worst chosen afterwards)."""
    from medrobust.campaigns.attack_protocol import run_attack_protocol
    from medrobust.campaigns.protocol_attacks import ProtocolSettings

    model, test, _ = segmenter
    task = get_task("segmentation")
    settings = ProtocolSettings(attacks=("ensemble",), levels=(1.0,), pgd_steps=4,
                                ifgsm_steps=2, batch_images=2, seed=3)
    info = {"dir": "", "model": "unet"}

    def run(store: Store) -> tuple[object, dict[int, dict]]:
        out = run_attack_protocol(store, task, model, info, test, list(range(6)), settings,
                                  show_progress=False)
        return out, {r["dataset_index"]: r for r in store.rows(
            "task_attack_results", run_id=out.summary["cells"][0]["run_id"])}

    with Store(tmp_path / "whole.db") as store:
        _, whole = run(store)
    calls = {"n": 0}
    original = WorstCase.run

    def dies(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    with Store(tmp_path / "cut.db") as store:
        monkeypatch.setattr(WorstCase, "run", dies)
        with pytest.raises(KeyboardInterrupt):
            run(store)
        assert len(store.rows("task_attack_results")) == 2  # the first batch is kept
        monkeypatch.setattr(WorstCase, "run", original)
        again, rows = run(store)
    assert again.resumed and again.computed_now == 4
    assert rows.keys() == whole.keys()
    for i, r in rows.items():
        assert r["adv_metric"] == pytest.approx(whole[i]["adv_metric"], abs=1e-6)
        assert r["members"]["kept"] == whole[i]["members"]["kept"]


def test_member_curves_group_runs_by_model_and_budget():
    from medrobust.report.ensemble_section import _curves, member_figure

    def run(i: int, eps: float, damage: dict[str, float], kept: float) -> dict:
        return {"id": i, "params": {"attack": {"eps": eps, "norm": "l2"}},
                "model": {"dir": "/m/unet", "model": "unet"},
                "summary": {"members": {k: {"mean_damage": v, "kept": 1}
                                        for k, v in damage.items()},
                            "ensemble_damage": kept}}

    runs = [run(1, 2.0, {"pgd": 0.5, "square": 0.2}, 0.6),
            run(2, 1.0, {"pgd": 0.3, "square": 0.1}, 0.35)]
    curves = _curves(runs)
    ((label, norm), points), = curves.items()
    assert norm == "l2" and [eps for eps, _ in points] == [1.0, 2.0]  # sorted by budget
    fig = member_figure(points, label, norm)
    lines = fig.axes[0].get_lines()
    assert len(lines) == 3 and list(lines[-1].get_ydata()) == [0.35, 0.6]
