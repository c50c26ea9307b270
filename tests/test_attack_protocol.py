"""``medrobust evaluate --attack``: the attacked-evaluation protocol on every task, and restarts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from cli_util import run_cli, run_json
from test_report_tasks import _checkpoints

from medrobust.attacks import PGD
from medrobust.attacks.restarts import Restarts
from medrobust.campaigns.task_attack import TASK_ATTACK_TABLE
from medrobust.data import load_dataset
from medrobust.models import Classifier, build_model, save_model
from medrobust.store import Store
from medrobust.tasks import get_task

pytestmark = pytest.mark.usefixtures("one_thread_module")

LEVELS = (0.1, 0.5)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return _checkpoints(tmp_path_factory.mktemp("protocol"))


@pytest.fixture(scope="module")
def split_classifier(tmp_path_factory) -> Path:
    """An untrained SmallCNN whose head bias puts half of the first 8 test images on each side
    of its decision boundary. Untrained as it is, it would predict one class for every image
    and no budget would break any image it gets right, leaving nothing to check."""
    torch.manual_seed(0)
    syn = load_dataset("synthetic", "test", size=16, n=20, seed=3)
    clf = Classifier(build_model("smallcnn", 3, 2, width=4), mean=[0.5] * 3, std=[0.25] * 3,
                     class_names=("normal", "mitosis")).eval()
    with torch.no_grad():
        z = clf(clf.to_tensor(syn.images[:8]))
        gap = (z[:, 1] - z[:, 0]).sort().values
        clf.model.head[-1].bias[1] -= float(gap[3] + gap[4]) / 2
    path = tmp_path_factory.mktemp("split") / "m_clf"
    save_model(clf, path, {"model": "smallcnn", "model_kwargs": {"width": 4},
                           "dataset": syn.spec})
    return path


def _args(checkpoints, task: str) -> list[str]:
    model, extra = checkpoints[task]
    extra = [a for a in extra if a not in ("--task", "segmentation")]
    if "--limit" not in extra:
        extra += ["--limit", "4"]
    return ["evaluate", "--model", str(model), *extra]


@pytest.mark.parametrize("task", ["classification", "segmentation", "landmarks", "detection"])
def test_protocol_table_budgets_and_resume(checkpoints, task, tmp_path, capsys):
    db = str(tmp_path / "s.db")
    cmd = [*_args(checkpoints, task), "--attack", "pgd,ifgsm", "--l2", ",".join(map(str, LEVELS)),
           "--steps", "3", "--ifgsm-steps", "2", "--store", db]
    first = run_json(capsys, *cmd)
    head = get_task(task).headline
    assert first["metric"] == head and first["task"] == task
    assert [(c["attack"], c["eps"]) for c in first["cells"]] == [
        (a, e) for a in ("pgd", "ifgsm") for e in LEVELS]
    limit = int(cmd[cmd.index("--limit") + 1])
    assert first["clean"] is not None and first["images"] == limit
    with Store(db) as store:
        for cell in first["cells"]:
            rows = store.rows(TASK_ATTACK_TABLE.name, run_id=cell["run_id"])
            assert len(rows) == first["images"]
            assert all(r["l2"] <= cell["eps"] + 1e-6 for r in rows), "L2 budget broken"
            # every cell attacked the same images, so the clean metric is the same everywhere
            assert cell["clean"] == pytest.approx(first["clean"])
    means = [c["attacked"] for c in first["cells"]]
    assert first["average_attacked"] == pytest.approx(sum(means) / len(means))
    again = run_json(capsys, *cmd)
    assert again["computed_now"] == 0 and again["resumed"]
    assert again["cells"] == first["cells"]


def test_protocol_refuses_what_it_cannot_do(checkpoints, tmp_path, capsys):
    db = str(tmp_path / "s.db")
    lm = _args(checkpoints, "landmarks")
    code, _, err = run_cli(capsys, *lm, "--attack", "apgd-ce", "--store", db)
    assert code == 2 and "apgd-ce needs class logits" in err
    code, _, err = run_cli(capsys, *lm, "--attack", "pgd", "--l2", "1", "--linf", "2/255",
                           "--store", db)
    assert code == 2 and "--l2 or --linf" in err
    code, _, err = run_cli(capsys, *lm, "--l2", "1", "--store", db)
    assert code == 2 and "--attack" in err
    code, _, err = run_cli(capsys, *lm, "--attack", "pgd", "--l2", "0,1", "--store", db)
    assert code == 2 and "positive" in err


def test_restarts_keep_the_worst_start_per_image():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 6 * 6, 3)).eval()
    x = torch.rand(5, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 0, 1])
    loss = get_task("classification").attack_loss(
        type("M", (), {"head": "softmax"})())  # the task's per-sample loss on logits
    base = PGD(model, loss=loss, norm="l2", eps=0.3, steps=2, seed=4)
    result = Restarts(base, restarts=3)(x, y)
    singles = []
    for r in range(3):
        single = PGD(model, loss=loss, norm="l2", eps=0.3, steps=2, seed=4 + r)(x, y)
        with torch.no_grad():
            singles.append(loss(model(single.adversarial), y))
    with torch.no_grad():
        kept = loss(model(result.adversarial), y)
    assert torch.allclose(kept, torch.stack(singles).amax(0))
    assert result.steps.tolist() == [6] * 5
    norms = result.perturbation_norms(x)["l2"]
    assert bool((norms <= 0.3 + 1e-6).all())


def test_ensemble_cell_is_the_per_image_union_of_its_members(split_classifier, tmp_path,
                                                            capsys):
    """AutoAttack style: an image survives the ensemble only if it survives every member.

    Comparing the cells' means (ensemble <= each member) would hold by construction; this
    checks each image's stored row instead, scored by the task on the image the ensemble
    returned: it is wrong exactly where the clean image is or where a member run alone (same
    seed and keys) breaks it, it keeps the float32 budget the attacks run at, and wherever the
    ensemble reports an image robust it is the clean image itself.
    """
    db = str(tmp_path / "s.db")
    members = ("pgd", "apgd-ce", "apgd-t", "square")
    levels = (1 / 255, 4 / 255, 16 / 255)
    out = run_json(capsys, "evaluate", "--model", str(split_classifier), "--limit", "8",
                   "--attack", ",".join((*members, "ensemble")), "--linf", "1/255,4/255,16/255",
                   "--steps", "3", "--queries", "20", "--store", db)
    with Store(db) as store:
        rows = {(c["attack"], c["eps"]): {r["dataset_index"]: r for r in store.rows(
            TASK_ATTACK_TABLE.name, run_id=c["run_id"])} for c in out["cells"]}
    some_survive = False
    for eps in levels:
        ens = rows[("ensemble", eps)]
        assert len(ens) == 8
        wrong_clean = {i for i, r in ens.items() if r["clean_metric"] == 0.0}
        broken = {i for i, r in ens.items() if r["adv_metric"] == 0.0}
        alone = {i for m in members for i, r in rows[(m, eps)].items() if r["adv_metric"] == 0.0}
        assert broken == wrong_clean | alone, (eps, broken, wrong_clean, alone)
        for r in ens.values():
            assert r["linf"] <= float(np.float32(eps))
            if r["adv_metric"] == 1.0:  # robust: the clean image comes back untouched
                assert r["l2"] == 0.0 and r["adv_pred"] == r["clean_pred"]
        some_survive |= len(broken) < 8
        # the budget breaks some of the images the model gets right: the union is not empty
        assert broken - wrong_clean
    assert some_survive


def test_restarts_keep_the_extras_of_the_restart_each_image_keeps():
    """An image's per-image extras come from the same restart as its adversarial image."""
    from medrobust.attacks.base import Attack
    from medrobust.attacks.result import AttackResult

    class Nudge(Attack):
        """Raises pixel 0 of image i by 0.01 * seed when (i + seed) is even; tags the seed."""

        loss = staticmethod(lambda out, y: out.flatten(1).sum(1))

        def params(self) -> dict:
            return {"attack": "nudge", "seed": self.seed}

        def run(self, images, labels, keys=None, **kwargs) -> AttackResult:
            adv = images.clone()
            for i in range(adv.shape[0]):
                if (i + self.seed) % 2 == 0:
                    adv[i].view(-1)[0] += 0.01 * self.seed
            n = adv.shape[0]
            return AttackResult(adv, extras={"seed": torch.full((n,), self.seed),
                                             "tag": [self.seed] * n})

    model = torch.nn.Flatten()
    x = torch.full((4, 1, 2, 2), 0.5)
    result = Restarts(Nudge(model, seed=1), restarts=3)(x, torch.zeros(4))
    # seeds 1, 2, 3: image i gains from seeds with (i + seed) even; the largest such seed wins
    expect = [2, 3, 2, 3]
    assert result.seed.tolist() == expect and result.tag == expect


def test_an_l2_budget_beyond_the_images_is_refused_before_any_run(checkpoints, tmp_path, capsys):
    """Every attack checks its budget against the image size before the protocol opens a run,
    APGD and Square too (they have no check of their own)."""
    from pathlib import Path

    db = tmp_path / "s.db"
    for attack in ("apgd-ce", "square", "pgd-restarts"):
        code, _, err = run_cli(capsys, *_args(checkpoints, "classification"), "--attack", attack,
                               "--l2", "50", "--store", str(db))
        assert code == 2 and "exceeds the image range" in err, (attack, err)
    if Path(db).is_file():
        with Store(db) as store:
            assert store.runs() == []
