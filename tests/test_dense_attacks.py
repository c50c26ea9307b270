"""APGD and Square for tasks without class logits (issue 21): DenseAPGD on any per-sample loss,
DenseSquare on the task metric, their place in the dense worst-case ensemble and in the
protocol. On a small conv segmenter trained for a second on generated blobs."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medrobust.attacks.apgd import APGD, apgd_ascent, apgd_start, checkpoints
from medrobust.attacks.dense_apgd import DenseAPGD
from medrobust.attacks.dense_square import DenseSquare
from medrobust.attacks.pgd import PGD
from medrobust.attacks.square import Square
from medrobust.attacks.worst_case import WorstCase
from medrobust.campaigns.protocol_attacks import (
    ProtocolSettings,
    build_attack,
    ensemble_shares,
    protocol_recipe,
    worst_case,
)
from medrobust.campaigns.recipes import build_attack as rebuild
from medrobust.campaigns.recipes import check_recipe
from medrobust.errors import ConfigError
from medrobust.models.segmenter import Segmenter
from medrobust.tasks import get_task

pytestmark = pytest.mark.usefixtures("one_thread_module")
SEG = get_task("segmentation")


def blobs(seed: int, n: int, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Faint disks on a noisy background (float [0,1] (n,1,size,size)) and their masks."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images, masks = [], []
    for _ in range(n):
        mask = np.zeros((size, size), bool)
        for _ in range(rng.integers(1, 3)):
            cy, cx = rng.integers(3, size - 3, 2)
            mask |= (yy - cy) ** 2 + (xx - cx) ** 2 <= rng.integers(2, 5) ** 2
        images.append(np.clip(rng.normal(0.35, 0.08, (size, size)) + 0.3 * mask, 0, 1))
        masks.append(mask)
    return (torch.tensor(np.stack(images), dtype=torch.float32).unsqueeze(1),
            torch.tensor(np.stack(masks)).long())


def small_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                         nn.ReLU(), nn.Conv2d(8, 2, 1))


@pytest.fixture(scope="module")
def segmenter(one_thread_module) -> Segmenter:
    with torch.random.fork_rng():
        net = small_net()
        x, y = blobs(1, 32)
        opt = torch.optim.Adam(net.parameters(), 0.02)
        for _ in range(60):
            opt.zero_grad()
            F.cross_entropy(net(x), y).backward()
            opt.step()
    return Segmenter(net.eval(), mean=[0.0], std=[1.0], class_names=("bg", "fg"))


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    return blobs(2, 6)


def _apgd(model, norm, eps, **kw):
    return DenseAPGD(model, loss=SEG.attack_loss(model), norm=norm, eps=eps, **kw)


def _square(model, norm, eps, **kw):
    return DenseSquare(model, SEG.image_damage, norm=norm, eps=eps, **kw)


# --- budgets, seeds, batches ------------------------------------------------------------------
@pytest.mark.parametrize("norm,eps", [("linf", [4 / 255, 0.0, 8 / 255, 1 / 255, 4 / 255,
                                                16 / 255]),
                                      ("l2", [0.5, 0.0, 1.0, 0.1, 2.0, 0.5])])
@pytest.mark.parametrize("build", [_apgd, _square], ids=["apgd", "square"])
def test_budgets_hold_exactly_on_the_returned_images(segmenter, data, build, norm, eps):
    x, y = data
    before = x.clone()
    out = build(segmenter, norm, eps, **({"steps": 8} if build is _apgd else
                                          {"max_queries": 30}))(x, y)
    assert torch.equal(x, before)  # inputs never mutated
    size = out.perturbation_norms(x)[norm]
    radius = torch.tensor(eps, dtype=torch.float32).double()  # the float32 radius, in float64
    assert torch.all(size <= radius)
    assert float(size[2]) > 0.5 * float(radius[2])  # it did move where it could
    assert torch.equal(out.adversarial[1], x[1])  # eps 0: unchanged
    assert out.adversarial.min() >= 0 and out.adversarial.max() <= 1


@pytest.mark.parametrize("build", [_apgd, _square], ids=["apgd", "square"])
def test_seeds_reproduce_and_an_image_alone_matches_its_batch(segmenter, data, build):
    x, y = data
    kw = {"steps": 10} if build is _apgd else {"max_queries": 40}
    keys = [7, 3, 11, 5, 2, 9]
    first = build(segmenter, "l2", 0.5, seed=4, batch_size=4, **kw)(x, y, keys=keys)
    again = build(segmenter, "l2", 0.5, seed=4, batch_size=4, **kw)(x, y, keys=keys)
    other = build(segmenter, "l2", 0.5, seed=5, batch_size=4, **kw)(x, y, keys=keys)
    assert torch.equal(first.adversarial, again.adversarial)
    assert not torch.allclose(first.adversarial, other.adversarial)
    for i in (0, 4):  # alone with its key, or at another place of another batch split
        alone = build(segmenter, "l2", 0.5, seed=4, **kw)(x[i:i + 1], y[i:i + 1],
                                                          keys=[keys[i]])
        torch.testing.assert_close(alone.adversarial[0], first.adversarial[i], atol=1e-5,
                                   rtol=0)


# --- DenseAPGD ----------------------------------------------------------------------------------
def test_dense_apgd_climbs_its_loss_higher_than_pgd_with_the_same_steps(segmenter, data):
    x, y = data
    loss = SEG.attack_loss(segmenter)
    apgd = DenseAPGD(segmenter, loss=loss, norm="l2", eps=1.0, steps=20, seed=1)(x, y)
    pgd = PGD(segmenter, loss=loss, norm="l2", eps=1.0, steps=20, step=5 * 1.0 / 20,
              seed=1)(x, y)
    with torch.no_grad():
        la, lp = loss(segmenter(apgd.adversarial), y), loss(segmenter(pgd.adversarial), y)
        start = loss(segmenter(apgd_start(x, torch.full((6,), 1.0), "l2", 1, range(6), (0,))), y)
    # most images, and clearly on average (PGD's fixed step wins an image now and then)
    assert int((la >= lp - 1e-6).sum()) >= 4 and float(la.mean()) > float(lp.mean()) + 0.02
    assert torch.all(la > start)  # the best point beats the start on every image
    torch.testing.assert_close(apgd.loss, la, atol=1e-5, rtol=1e-5)  # the loss it reports
    assert apgd.success is None and torch.all(apgd.steps == 20)  # no early stop


def test_dense_apgd_restarts_keep_each_images_best_run(segmenter, data):
    """Restart 0 is the single run (same stream); a second restart can only raise the loss."""
    x, y = data
    one = _apgd(segmenter, "l2", 1.0, steps=6, seed=2)(x, y)
    attack = _apgd(segmenter, "l2", 1.0, steps=6, restarts=2, seed=2)
    two = attack(x, y)
    assert torch.all(two.loss >= one.loss - 1e-6) and torch.all(two.steps == 12)
    assert bool((two.loss > one.loss + 1e-6).any())
    assert attack.params()["restarts"] == 2


def test_the_ascent_returns_each_images_highest_loss_of_every_point_it_tried():
    """The shared APGD loop, on a loss with many local maxima: the point returned is the
    best of all evaluated, per image, and its loss is that maximum (not the last iterate's:
    100 steps end after the last checkpoint, 99, so nothing restarts from the best there)."""
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(4, 1, 5, 5, generator=g)
    freq = torch.rand(4, 1, 5, 5, generator=g) * 40
    seen: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def evaluate(x, idx):
        xg = x.detach().requires_grad_(True)
        loss = torch.sin(freq[idx] * xg).flatten(1).sum(1)
        (grad,) = torch.autograd.grad(loss.sum(), xg)
        seen.append((idx.clone(), x.detach().clone(), loss.detach()))
        return loss.detach(), grad, None

    eps = torch.full((4,), 0.1)
    run = apgd_ascent(evaluate, x0, eps, apgd_start(x0, eps, "linf", 0, range(4), (0,)),
                      "linf", 100)
    best = torch.full((4,), -torch.inf)
    for idx, _, loss in seen:
        best[idx] = torch.maximum(best[idx], loss)
    assert torch.equal(run.loss, best) and torch.all(run.taken == 100)
    assert bool((seen[-1][2] < best).any())  # somewhere the last iterate is not the best
    for idx, x, loss in seen:
        for j, i in enumerate(idx.tolist()):
            if loss[j] == best[i]:
                assert torch.equal(run.best[i], x[j])
                break


def test_dense_apgd_halves_its_step_to_settle_on_a_maximum_inside_the_ball():
    """Maximise -||x - c||^2 with c inside the Linf ball: the first step (2 eps) overshoots,
    and only the halvings at the checkpoints bring the iterate to c."""
    c = torch.full((3, 1, 4, 4), 0.5) + torch.tensor([0.03, -0.05, 0.0]).view(3, 1, 1, 1)
    x0 = torch.full((3, 1, 4, 4), 0.5)

    def loss(outputs, target):
        return -(outputs - target).pow(2).flatten(1).sum(1)

    out = DenseAPGD(nn.Identity(), loss=loss, norm="linf", eps=0.1, steps=100)(x0, c)
    assert (out.adversarial - c).abs().max() < 0.2 / 2 ** 5  # at least 5 halvings
    assert len(checkpoints(100)) == 8


def test_dense_apgd_hands_ragged_targets_to_the_loss_image_by_image():
    """A detector's targets are one entry per image: each image climbs towards its own."""
    x0 = torch.full((3, 1, 2, 2), 0.5)
    targets = [(torch.tensor(0.8), "a"), (torch.tensor(0.2), "b"), (torch.tensor(0.7), "c")]

    def loss(outputs, target):
        goal = torch.stack([t for t, _ in target]).view(-1, 1, 1, 1)
        return -(outputs - goal).pow(2).flatten(1).sum(1)

    out = DenseAPGD(nn.Identity(), loss=loss, norm="linf", eps=0.2, steps=30, batch_size=2)(
        x0, targets)
    torch.testing.assert_close(out.adversarial.flatten(1).mean(1),
                               torch.tensor([0.7, 0.3, 0.7]), atol=1e-3, rtol=0)


def test_dense_apgd_refuses_a_loss_that_is_not_per_image(segmenter, data):
    x, y = data
    with pytest.raises(ConfigError, match="one value per image"):
        DenseAPGD(segmenter, loss=lambda o, t: o.mean(), norm="l2", eps=0.5, steps=2)(x, y)
    with pytest.raises(ConfigError, match="steps"):
        DenseAPGD(segmenter, norm="l2", eps=0.5, steps=0)


# --- DenseSquare --------------------------------------------------------------------------------
class Counting(nn.Module):
    """A network that counts the images it sees and quantises its input: it has no useful
    gradient, and it refuses to run where gradients are on."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net, self.images = net, 0

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        assert not torch.is_grad_enabled()
        self.images += z.shape[0]
        return self.net(torch.round(z * 255) / 255)


def test_square_needs_no_gradient_and_keeps_to_its_query_budget(segmenter, data):
    x, y = data
    counting = Counting(segmenter.model)
    model = Segmenter(counting, mean=[0.0], std=[1.0], class_names=("bg", "fg"))
    eps = [0.5, 0.0, 1.0, 1.0, 0.5, 1.0]
    out = DenseSquare(model, SEG.image_damage, norm="l2", eps=eps, max_queries=25,
                      batch_size=4, seed=3)(x, y)
    assert out.queries.tolist() == [25, 1, 25, 25, 25, 25]  # eps 0: the clean query only
    assert counting.images == int(out.queries.sum())  # every forward pass is counted
    clean = SEG.image_damage(model, x, y).double()
    after = SEG.image_damage(model, out.adversarial, y).double()
    torch.testing.assert_close(out.damage, after)
    assert torch.all(out.damage >= clean)  # the clean image is a candidate: never better
    assert float((out.damage - clean).sum()) > 0  # and it found damage somewhere


def test_square_only_climbs_from_its_start(segmenter, data):
    """Two queries are the clean image and the start (which does not depend on the budget):
    a longer search from the same streams ends at least as high on every image."""
    x, y = data
    two = _square(segmenter, "linf", 8 / 255, max_queries=2, seed=2)(x, y)
    many = _square(segmenter, "linf", 8 / 255, max_queries=60, seed=2)(x, y)
    clean = SEG.image_damage(segmenter, x, y).double()
    assert torch.all(two.damage >= clean) and torch.all(many.damage >= two.damage - 1e-12)
    assert float((many.damage - two.damage).sum()) > 0
    with pytest.raises(ConfigError, match="max_queries"):
        _square(segmenter, "linf", 8 / 255, max_queries=0)


# --- the ensemble and the protocol --------------------------------------------------------------
def test_the_dense_ensemble_is_at_least_as_damaging_as_each_member_alone(segmenter, data):
    x, y = data
    settings = ProtocolSettings(pgd_steps=8, ifgsm_steps=2, batch_images=4)
    ens = worst_case(SEG, segmenter, "l2", 0.5, settings)
    assert ens.labels == ["pgd", "ifgsm", "apgd-masked-ce", "apgd-js", "apgd-masked-margin",
                          "apgd-cosine-ce", "square"]
    assert [getattr(m, "steps", None) for m in ens.members][:3] == [8, 2, 2]
    assert ens.members[-1].max_queries == 8
    keys = [4, 5, 6, 7, 8, 9]
    out = ens(x, y, keys=keys)
    fresh = worst_case(SEG, segmenter, "l2", 0.5, settings)
    for label, member in zip(fresh.labels, fresh.members, strict=True):
        alone = SEG.image_damage(segmenter, member(x, y, keys=keys).adversarial, y).double()
        assert torch.all(out.damage >= alone - 1e-12), label
        torch.testing.assert_close(out.damage_by_member[label], alone)
    assert torch.all(out.perturbation_norms(x)["l2"] <= torch.tensor(0.5).double())


def test_the_dense_ensemble_costs_about_three_pgd_runs():
    """The shares in ``worst_case``'s docstring, in PGD steps per image: PGD S, IFGSM 10, APGD
    about S over all losses, Square S queries; with a query costing between a third of a step
    and a whole one (measured: 0.3-0.6, detection under 1), 2.3-3.3x PGD's steps for any
    number of extra losses."""
    for steps in (100, 200):
        for losses in range(7):
            each, queries = ensemble_shares(steps, losses)
            assert queries == steps and abs(max(losses, 1) * each - steps) <= max(losses, 1)
            members = 2 + max(losses, 1) + 1
            gradient = steps + 10 + max(losses, 1) * (each + 1) + members / 3
            assert 2.3 * steps <= gradient + queries / 3 and gradient + queries <= 3.3 * steps
    # a task with no other loss runs APGD on its training loss with all of the APGD share
    bare = worst_case(dataclasses.replace(SEG, ensemble_losses={}), nn.Identity(), "l2", 1.0,
                      ProtocolSettings())
    assert bare.labels == ["pgd", "ifgsm", "apgd", "square"] and bare.members[2].steps == 100
    assert bare.members[2].params()["loss"] == "segmentation_loss"


def test_the_protocol_runs_apgd_and_square_on_segmentation_and_refuses_them_elsewhere(
        segmenter):
    settings = ProtocolSettings(attacks=("pgd", "apgd", "square", "ensemble"), pgd_steps=7,
                                square_queries=33)
    settings.validate(SEG)
    apgd = build_attack("apgd", SEG, segmenter, "l2", 0.5, settings)
    square = build_attack("square", SEG, segmenter, "l2", 0.5, settings)
    assert isinstance(apgd, DenseAPGD) and apgd.steps == 7
    assert apgd.params()["loss"] == "segmentation_loss"
    assert isinstance(square, DenseSquare) and square.max_queries == 33
    assert isinstance(build_attack("ensemble", SEG, segmenter, "l2", 0.5, settings), WorstCase)
    # a Ray worker rebuilds each from its recipe, to the same parameters
    for name in ("apgd", "square", "ensemble"):
        attack = build_attack(name, SEG, segmenter, "l2", 0.5, settings)
        recipe = protocol_recipe(name, SEG, "l2", 0.5, settings)
        assert rebuild(segmenter, recipe).params() == attack.params()
        check_recipe(attack, recipe)
    # classifiers keep their own: APGD-CE / APGD-T and the margin Square
    clf = get_task("classification")
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    assert type(build_attack("square", clf, net, "linf", 0.03, settings)) is Square
    assert type(build_attack("apgd-ce", clf, net, "linf", 0.03, settings)) is APGD
    with pytest.raises(ConfigError, match="apgd-ce or apgd-t") as err:
        ProtocolSettings(attacks=("apgd",)).validate(clf)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="apgd-t needs class logits"):
        ProtocolSettings(attacks=("apgd-t",)).validate(SEG)
    # a task without a per-image metric: APGD on its loss, but no Square or ensemble
    plain = dataclasses.replace(SEG, name="plain", image_damage=None)
    ProtocolSettings(attacks=("pgd", "apgd")).validate(plain)
    for name in ("square", "ensemble"):
        with pytest.raises(ConfigError, match=f"{name} needs class logits or a per-image") as err:
            ProtocolSettings(attacks=(name,)).validate(plain)
        assert "\n" not in str(err.value)
        with pytest.raises(ConfigError, match="per-image"):
            build_attack(name, plain, segmenter, "l2", 0.5, settings)


def test_evaluate_protocol_records_apgd_and_square_cells_on_a_segmenter(segmenter, tmp_path):
    """Through the campaign: one cell each, a row per image, budgets within eps, and Square
    spends no gradient steps."""
    from PIL import Image

    from medrobust.campaigns.attack_protocol import run_attack_protocol
    from medrobust.data import load_dataset
    from medrobust.store import Store

    x, y = blobs(3, 4)
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(4):
        Image.fromarray((x[i, 0].numpy() * 255).round().astype(np.uint8)).save(
            root / "images" / f"im{i}.png")
        Image.fromarray((y[i].numpy() * 255).astype(np.uint8)).save(root / "masks" / f"im{i}.png")
    ds = load_dataset("segfolder", "train", data_dir=root, size=16, val_fraction=0.0,
                      test_fraction=0.0)
    settings = ProtocolSettings(attacks=("apgd", "square"), levels=(0.5,), pgd_steps=4,
                                square_queries=10, batch_images=3)
    with Store(str(tmp_path / "s.db")) as store:
        out = run_attack_protocol(store, SEG, segmenter, {"model": "tiny"}, ds, range(4),
                                  settings, show_progress=False)
        cells = {c["attack"]: c for c in out.summary["cells"]}
        assert set(cells) == {"apgd", "square"}
        for name, cell in cells.items():
            rows = store.rows("task_attack_results", run_id=cell["run_id"])
            assert len(rows) == 4 and all(r["l2"] <= 0.5 + 1e-6 for r in rows), name
            assert all(r["adv_metric"] <= r["clean_metric"] + 1e-9 for r in rows) or \
                name == "apgd"  # Square never returns an image the metric likes better
            assert all((r["steps"] is None) == (name == "square") for r in rows)
