"""APGD, APGD-T, Square and the AutoAttack-style ensemble: budgets, queries, seeds, batches,
strength against PGD, gradient masking and 2-class heads."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from medrobust.attacks import (
    APGD,
    APGDT,
    PGD,
    AttackEnsemble,
    Square,
    cross_entropy,
    dlr_loss,
    dlr_targeted_loss,
    margin_loss,
    misclassified,
)
from medrobust.attacks.apgd import checkpoints
from medrobust.attacks.square import block, keyed_uniforms, p_schedule
from medrobust.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread_module")


class RowLinear(nn.Module):
    """A linear classifier computed row by row (multiply and sum, no matrix product), so an
    image's logits and gradient are bit-identical alone and inside any batch: the property the
    alone-vs-batch tests need from the model to test it of the attack."""

    def __init__(self, k: int = 5, d: int = 3 * 8 * 8, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = nn.Parameter(torch.randn(k, d, generator=g) * 0.1)
        self.b = nn.Parameter(torch.zeros(k))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.flatten(1)[:, None, :] * self.w).sum(-1) + self.b


class Quantised(nn.Module):
    """A defended model whose input filter has no useful gradient: ``round`` has derivative 0,
    so gradient attacks see a flat loss (gradient masking) while the decision still moves."""

    def __init__(self, model: nn.Module, levels: int = 8, straight_through: bool = False) -> None:
        super().__init__()
        self.model, self.levels, self.straight_through = model, levels, straight_through

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = torch.round(x * self.levels) / self.levels
        if self.straight_through:  # BPDA: the filter forward, the identity backward
            q = x + (q - x).detach()
        return self.model(q)


@pytest.fixture
def images() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(8, 3, 8, 8, generator=g)
    x[0] = 0.0  # corners of the box: clipping must hold
    x[1] = 1.0
    return x


@pytest.fixture
def row_model() -> RowLinear:
    return RowLinear().eval()


def _labels(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(1)


def _test_tensors(ds) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.from_numpy(ds.images).permute(0, 3, 1, 2).float() / 255.0
    return x, torch.from_numpy(ds.labels).long()


ATTACKS = {
    "apgd-ce": lambda m, **kw: APGD(m, steps=12, **kw),
    "apgd-dlr": lambda m, **kw: APGD(m, steps=12, loss="dlr", **kw),
    "apgd-t": lambda m, **kw: APGDT(m, steps=6, n_target_classes=2, **kw),
    "square": lambda m, **kw: Square(m, max_queries=120, **kw),
}


# -- losses and schedules -------------------------------------------------------------------------

def test_dlr_values_and_invariance():
    z = torch.tensor([[3.0, 1.0, 0.0, -1.0], [0.0, 2.0, 1.0, 5.0]])
    y = torch.tensor([0, 1])
    want = torch.tensor([(1 - 3) / (3 - 0), (5 - 2) / (5 - 1)])
    assert torch.allclose(dlr_loss(z, y), want, atol=1e-6)
    # the point of DLR: shifting and rescaling the logits changes nothing
    assert torch.allclose(dlr_loss(7.0 * z - 3.0, y), want, atol=1e-5)
    t = torch.tensor([2, 0])
    want_t = torch.tensor([(0 - 3) / (3 - 0.5 * (0 - 1)), (0 - 2) / (5 - 0.5 * (1 + 0))])
    assert torch.allclose(dlr_targeted_loss(z, y, t), want_t, atol=1e-6)
    # margin: positive exactly when misclassified; a sigmoid head's logit is signed by the label
    assert torch.equal(margin_loss(z, y) > 0, misclassified(z, y))
    assert torch.allclose(margin_loss(torch.tensor([[2.0], [2.0]]), torch.tensor([1, 0])),
                          torch.tensor([-2.0, 2.0]))


def test_dlr_refuses_two_classes():
    with pytest.raises(ConfigError, match="at least 3 classes"):
        dlr_loss(torch.zeros(2, 2), torch.tensor([0, 1]))
    with pytest.raises(ConfigError, match="at least 3 classes"):
        dlr_targeted_loss(torch.zeros(2, 1), torch.tensor([0, 1]), torch.tensor([1, 0]))


def test_apgd_checkpoints_follow_the_paper():
    assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert checkpoints(1) == [1]
    assert all(1 <= c <= 7 for c in checkpoints(7))


def test_apgd_halves_its_step_to_settle_on_an_interior_maximum():
    """The loss peaks at a point c inside the ball. Steps of a fixed 2*eps bounce between
    corners around it (measured: ~0.6 eps away after 100 steps without the halving rule); the
    checkpoints' halving and restarts from the best point close in on it."""

    class Bowl(nn.Module):
        def __init__(self, c: torch.Tensor) -> None:
            super().__init__()
            self.c = c

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            d = (x - self.c).flatten(1).pow(2).sum(1)
            return torch.stack([torch.zeros_like(d), -1000 * d], 1)  # CE(label 0) peaks at c

    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(4, 1, 4, 4, generator=g) * 0.5 + 0.25
    eps = 0.05
    c = x0 + 0.6 * eps * (torch.rand(x0.shape, generator=g) * 2 - 1)
    res = APGD(Bowl(c), eps=eps, steps=100)(x0, torch.zeros(4, dtype=torch.long))
    assert float((res.adversarial - c).abs().max()) < 0.1 * eps


def test_square_p_schedule_and_blocks():
    assert p_schedule(0.8, 0, 10000) == 0.8
    assert p_schedule(0.8, 11, 10000) == 0.4
    assert p_schedule(0.8, 1, 100) == 0.8 / 4  # rescaled: 1 of 100 is 100 of 10,000
    assert p_schedule(0.8, 9999, 10000) == 0.8 / 512
    b = block(7)
    assert b.shape == (7, 7) and math.isclose(float((b ** 2).sum()), 1.0)
    assert (b[:3] >= 0).all() and (b[3:] <= 0).all()
    # counter-based streams: one row depends on its own base only
    bases = np.array([5, 9, 11], dtype=np.uint64)
    u = keyed_uniforms(bases, 3, 10)
    assert np.array_equal(u[1], keyed_uniforms(bases[1:2], 3, 10)[0])
    assert ((u >= 0) & (u < 1)).all() and not np.array_equal(u, keyed_uniforms(bases, 4, 10))


# -- budgets ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", list(ATTACKS))
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_per_sample_budgets_and_box_hold_exactly(kind, norm, images, row_model):
    eps = [0.0, 2 / 255, 8 / 255, 0.05, 0.5, 3.0, 0.3, 1e-3] if norm == "l2" else \
        [0.0, 1 / 255, 2 / 255, 8 / 255, 0.1, 0.5, 0.03, 1e-3]
    x = images.clone()
    labels = _labels(row_model, images)
    res = ATTACKS[kind](row_model, norm=norm, eps=eps, seed=3)(images, labels)
    adv = res.adversarial
    assert torch.equal(images, x), "input was mutated"
    assert adv.dtype == torch.float32 and adv.shape == images.shape
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
    size = res.perturbation_norms(images)[norm]
    e32 = torch.tensor(eps, dtype=torch.float32).double()
    assert bool((size <= e32).all()), (size - e32).tolist()
    assert torch.equal(adv[0], images[0])  # eps = 0
    assert float(size[4]) > 0.2 * eps[4]  # a real attack moved the others
    # success is the truth about the returned images
    assert torch.equal(res.success, misclassified(row_model(adv), labels))


@pytest.mark.parametrize("kind", ["apgd-ce", "square"])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_dark_images_keep_every_success_through_the_ensembles_judge(kind, norm, row_model):
    # Mostly dark pixels (as in many medical images) pushed up by eps: their float32 change
    # can round down to eps while the float64 one the judge measures is just above it.
    x = torch.rand(8, 3, 8, 8, generator=torch.Generator().manual_seed(4)) ** 4
    y = _labels(row_model, x)
    eps = 8 / 255 if norm == "linf" else 0.5
    member = ATTACKS[kind](row_model, norm=norm, eps=eps, seed=2)
    alone = member(x, y)
    assert bool(alone.success.any())
    ens = AttackEnsemble(row_model, [member], norm=norm, eps=eps)(x, y)
    assert ens.rejected == {member.label: 0}
    assert torch.equal(ens.success, alone.success)


def test_numpy_uint8_input_gives_a_torch_result(row_model):
    g = np.random.default_rng(0)
    arr = g.integers(0, 256, size=(3, 8, 8, 3), dtype=np.uint8)
    before = arr.copy()
    x = torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255.0
    labels = _labels(row_model, x)
    for attack in (APGD(row_model, eps=0.02, steps=4), Square(row_model, eps=0.02,
                                                              max_queries=20)):
        res = attack(arr, labels.numpy())
        assert np.array_equal(arr, before)
        assert res.adversarial.shape == (3, 3, 8, 8)
        assert bool((res.perturbation_norms(x)["linf"] <= torch.tensor(0.02)).all())


# -- seeds and batches ------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", list(ATTACKS))
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_seeded_and_the_same_alone_or_in_a_batch(kind, norm, images, row_model):
    eps = [0.3, 0.2, 0.4, 0.0, 0.25, 0.3, 0.2, 0.35] if norm == "l2" else \
        [0.01, 0.02, 0.015, 0.0, 0.03, 0.02, 0.01, 0.02]
    labels = _labels(row_model, images)
    keys = list(range(40, 48))
    make = ATTACKS[kind]
    a = make(row_model, norm=norm, eps=eps, seed=5)(images, labels, keys=keys)
    b = make(row_model, norm=norm, eps=eps, seed=5)(images, labels, keys=keys)
    c = make(row_model, norm=norm, eps=eps, seed=6)(images, labels, keys=keys)
    assert torch.equal(a.adversarial, b.adversarial) and torch.equal(a.success, b.success)
    assert not torch.equal(a.adversarial, c.adversarial)
    for i in (2, 4, 7):
        alone = make(row_model, norm=norm, eps=eps[i], seed=5)(images[i:i + 1], labels[i:i + 1],
                                                             keys=[keys[i]])
        assert torch.equal(alone.adversarial[0], a.adversarial[i]), i
        assert bool(alone.success[0]) == bool(a.success[i])
        for field in ("queries", "steps"):
            got = getattr(a, field)
            if got is not None:
                assert int(getattr(alone, field)[0]) == int(got[i])
    # a smaller batch_size splits the work without changing any image
    d = make(row_model, norm=norm, eps=eps, seed=5, batch_size=3)(images, labels, keys=keys)
    assert torch.equal(d.adversarial, a.adversarial)


# -- strength ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("norm,eps", [("linf", 1 / 255), ("l2", 0.1)])
def test_apgd_is_at_least_as_strong_as_pgd_with_equal_steps(norm, eps, tiny_classifier,
                                                          tiny_synthetic):
    x, y = _test_tensors(tiny_synthetic[2])
    pgd = PGD(tiny_classifier, norm=norm, eps=eps, steps=20, early_stop=misclassified)(x, y)
    apgd = APGD(tiny_classifier, norm=norm, eps=eps, steps=20)(x, y)
    assert 0 < float(apgd.success.float().mean()) < 1  # a budget where the question is open
    assert int(apgd.success.sum()) >= int(pgd.success.sum())
    # where both leave the image correctly classified, APGD climbed the loss at least as high
    both = ~apgd.success & ~pgd.success
    with torch.no_grad():
        la = cross_entropy(tiny_classifier(apgd.adversarial), y)[both]
        lp = cross_entropy(tiny_classifier(pgd.adversarial), y)[both]
    assert float(la.mean()) >= float(lp.mean())
    assert float((la >= lp - 1e-4).float().mean()) >= 0.9


def test_square_queries_never_exceed_the_budget(tiny_classifier, tiny_synthetic):
    x, y = _test_tensors(tiny_synthetic[2])
    x, y = x[:30], y[:30]
    with torch.no_grad():
        wrong_clean = misclassified(tiny_classifier(x), y)
    eps = torch.full((30,), 2 / 255)
    eps[-1] = 0.0
    res = Square(tiny_classifier, eps=eps, max_queries=40, seed=1)(x, y)
    assert int(res.queries.max()) <= 40
    assert bool((res.queries[wrong_clean] == 1).all())  # only the clean check
    assert int(res.queries[-1]) == 1 and torch.equal(res.adversarial[-1], x[-1])
    # the unfooled spent it all; the fooled stopped at their success
    todo = ~wrong_clean & ~res.success
    todo[-1] = False
    assert bool((res.queries[todo] == 40).all())
    with torch.no_grad():
        assert torch.equal(res.success, misclassified(tiny_classifier(res.adversarial), y))
    assert bool(res.success[~wrong_clean].any())  # it does fool some
    one = Square(tiny_classifier, eps=2 / 255, max_queries=1)(x, y)
    assert bool((one.queries == 1).all()) and torch.equal(one.adversarial, x)


# -- the ensemble -----------------------------------------------------------------------------------

def _members(model: nn.Module, eps: float) -> list:
    return [APGD(model, eps=eps, steps=10), APGDT(model, eps=eps, steps=5, n_target_classes=2),
            Square(model, eps=eps, max_queries=150)]


class _Spy:
    """An ensemble member that records the keys of the images it is handed and passes the
    wrapped attack's result on."""

    def __init__(self, attack) -> None:
        self.attack, self.keys = attack, []
        self.label = getattr(attack, "label", attack.name)

    def __call__(self, x: torch.Tensor, labels: torch.Tensor, keys: list[int]):
        self.keys.append(list(keys))
        return self.attack(x, labels, keys=keys)


def test_ensemble_beats_gradient_masking_and_is_per_image_the_union(images, row_model):
    """Checked against the members run alone, not against the ensemble's own bookkeeping.

    The model is batch-invariant and the members draw per-image keyed streams, so a member
    run alone on all images gives each image what it gets inside the ensemble; the ensemble's
    images are re-scored by the model here, not taken from its ``success``.
    """
    model = Quantised(row_model).eval()
    bpda = Quantised(row_model, straight_through=True).eval()
    x = torch.cat([images, torch.rand(8, 3, 8, 8, generator=torch.Generator().manual_seed(2))])
    n = x.shape[0]
    y = _labels(model, x)
    y[[3, 9]] = (y[[3, 9]] + 1) % 5  # two images the model gets wrong before any attack
    eps = 0.04
    members = [*_members(model, eps), PGD(bpda, eps=eps, steps=10)]
    spies = [_Spy(m) for m in members]
    ens = AttackEnsemble(model, spies, eps=eps)(x, y)
    names = ["apgd-ce", "apgd-t-dlr", "square", "pgd"]
    alone = [m(x, y) for m in members]
    with torch.no_grad():
        fooled_alone = [misclassified(model(r.adversarial), y) for r in alone]
        ens_wrong = misclassified(model(ens.adversarial), y)
    # gradient masking is real here: APGD alone is blinded, Square and BPDA-PGD are not
    assert float(fooled_alone[2].float().mean()) > float(fooled_alone[0].float().mean())

    # who breaks each image: the clean check, else the first member that breaks it alone
    first: list[int | None] = []  # -1 for clean, else the member's index
    for i in range(n):
        hits = [k for k in range(len(members)) if bool(fooled_alone[k][i])]
        first.append(-1 if i in (3, 9) else hits[0] if hits else None)
    assert ens.fooled_by == [None if f is None else "clean" if f == -1 else names[f]
                             for f in first]
    assert 0 < first.count(None) < n - 2  # some images survive, some members break others
    assert len({f for f in first if f is not None and f >= 0}) >= 2

    # what is reported broken is broken: re-scored, within budget, the member's own image
    assert torch.equal(ens_wrong, ens.success)
    assert bool((ens.perturbation_norms(x)["linf"] <= torch.tensor(eps).double()).all())
    for i, f in enumerate(first):
        expect = x[i] if f is None or f == -1 else alone[f].adversarial[i]
        assert torch.equal(ens.adversarial[i], expect), (i, f)

    # a member is handed only the images still robust, and an image's cost is what the
    # members that attacked it spent alone
    for k, spy in enumerate(spies):
        still = [i for i, f in enumerate(first) if f is None or f >= k]
        assert spy.keys == ([still] if still else [])
    attacked = [[k for k in range(len(members)) if first[i] is None or first[i] >= k]
                if first[i] != -1 else [] for i in range(n)]
    for field in ("queries", "steps"):
        want = [sum(int(getattr(alone[k], field)[i]) for k in ks
                    if getattr(alone[k], field) is not None) for i, ks in enumerate(attacked)]
        assert getattr(ens, field).tolist() == want, field

    # the accuracy after each member, from the members run alone
    acc = ens.extras["robust_accuracy"]
    assert list(acc) == ["clean", *names]
    for k, name in enumerate(["clean", *names]):
        assert acc[name] == pytest.approx(
            sum(f is None or f >= k for f in first) / n), name


def test_ensemble_on_a_quantised_trained_model(tiny_classifier, tiny_synthetic):
    x, y = _test_tensors(tiny_synthetic[2])
    model = Quantised(tiny_classifier, levels=16).eval()
    eps = 2 / 255
    members = _members(model, eps)
    with pytest.warns(UserWarning, match="margin"):  # APGD-T on a 2-class model
        ens = AttackEnsemble(model, members, eps=eps)(x, y)
    robust = 1 - float(ens.success.float().mean())
    assert robust < ens.robust_accuracy["apgd-ce"]  # Square finds what gradients cannot
    with torch.no_grad():  # what it reports broken is broken, re-scored here
        assert torch.equal(misclassified(model(ens.adversarial), y), ens.success)
    for m in members:
        with pytest.warns(UserWarning, match="margin") if isinstance(m, APGDT) else \
                _no_warning():
            adv = m(x, y).adversarial
        with torch.no_grad():
            alone = 1 - float(misclassified(model(adv), y).float().mean())
        assert robust <= alone + 1e-9, (m, robust, alone)
    assert ens.extras["fooled_by"].count("clean") == int((~(_labels(model, x) == y)).sum())


class _no_warning:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_ensemble_judges_members_on_its_own_budget(images, row_model):
    y = _labels(row_model, images)

    def cheat(x, labels):  # misclassifies by leaving the budget: must count for nothing
        return 1.0 - x

    ens = AttackEnsemble(row_model, [cheat], eps=0.01)(images, y)
    assert not bool(ens.success.any()) and ens.rejected["cheat"] > 0
    assert torch.equal(ens.adversarial, images) and ens.queries is None

    seen = []

    def spy(x, labels):  # records what a later member is given
        seen.append(x.shape[0])
        return x.clone()

    ens = AttackEnsemble(row_model, [APGD(row_model, eps=0.05, steps=5), spy], eps=0.05)(
        images, y)
    assert 0 < int(ens.success.sum()) < 8
    assert seen == [8 - int(ens.success.sum())]  # only the images still robust
    assert ens.robust_accuracy["spy"] == ens.robust_accuracy["apgd-ce"]


def test_ensemble_default_members_and_names(images, row_model):
    y = _labels(row_model, images)
    ens = AttackEnsemble(row_model, eps=0.02, steps=5, max_queries=30, n_target_classes=2,
                         extra=[APGD(row_model, eps=0.02, steps=3)])
    assert ens.names == ["apgd-ce", "apgd-t-dlr", "square", "apgd-ce-2"]
    res = ens(images, y)
    assert res.steps is not None and res.queries is not None
    assert set(res.seconds) == set(ens.names)
    assert ens.params()["members"][2]["max_queries"] == 30


# -- 2-class and sigmoid heads --------------------------------------------------------------------

def test_targeted_dlr_on_two_classes_warns_or_refuses(tiny_classifier, tiny_synthetic):
    x, y = _test_tensors(tiny_synthetic[2])
    x, y = x[:6], y[:6]
    with pytest.warns(UserWarning, match="2 classes.*margin.*other class"):
        res = APGDT(tiny_classifier, eps=2 / 255, steps=3)(x, y)
    assert res.loss_used == ["margin"] * 6
    with pytest.raises(ConfigError, match="needs at least 3 classes"):
        APGDT(tiny_classifier, eps=2 / 255, steps=3, dlr_fallback="error")(x, y)
    with pytest.raises(ConfigError, match="needs at least 3 classes"):
        APGD(tiny_classifier, loss="dlr", steps=3, dlr_fallback="error")(x, y)
    # cross-entropy needs no fallback and says nothing
    assert APGD(tiny_classifier, eps=2 / 255, steps=3)(x, y).loss_used == ["ce"] * 6


def test_sigmoid_head(bright_pixel_classifier):
    x = torch.full((2, 3, 6, 6), 0.2)
    x[1, 0, 2, 2] = 0.6  # positive: brightest red 0.6 > 0.5
    y = torch.tensor([0, 1])
    with pytest.warns(UserWarning, match="margin"):
        res = APGDT(bright_pixel_classifier, eps=0.35, steps=5)(x, y)
    assert bool(res.success.all())
    sq = Square(bright_pixel_classifier, eps=0.35, max_queries=50)(x, y)
    assert bool(sq.success[0]) and int(sq.queries.max()) <= 50


# -- parameters -----------------------------------------------------------------------------------

@pytest.mark.parametrize("build,needle", [
    (lambda m: APGD(m, eps=-0.1), "eps"),
    (lambda m: APGD(m, eps=2.0), "exceeds the image range"),
    (lambda m: APGD(m, steps=0), "steps"),
    (lambda m: APGD(m, restarts=0), "restarts"),
    (lambda m: APGD(m, loss="hinge"), "loss"),
    (lambda m: APGD(m, norm="l1"), "norm"),
    (lambda m: APGD(m, rho=1.5), "rho"),
    (lambda m: APGD(m, dlr_fallback="ignore"), "dlr_fallback"),
    (lambda m: APGDT(m, n_target_classes=0), "n_target_classes"),
    (lambda m: Square(m, max_queries=0), "max_queries"),
    (lambda m: Square(m, p_init=0.0), "p_init"),
    (lambda m: Square(m, norm="l0"), "norm"),
    (lambda m: AttackEnsemble(m, []), "at least one attack"),
    (lambda m: AttackEnsemble(m, [3]), "members"),
])
def test_bad_parameters_are_config_errors(build, needle, row_model):
    with pytest.raises(ConfigError, match=needle):
        build(row_model)


def test_bad_run_arguments(images, row_model):
    y = _labels(row_model, images)
    for attack in (APGD(row_model, steps=2), Square(row_model, max_queries=3),
                   AttackEnsemble(row_model, [APGD(row_model, steps=2)])):
        with pytest.raises(ConfigError, match="labels"):
            attack(images, y[:3])
        with pytest.raises(ConfigError, match="keys"):
            attack(images, y, keys=[1, 2])
        with pytest.raises(ConfigError, match="unknown options"):
            attack(images, y, targets=y)
    with pytest.raises(ConfigError, match="exceeds the image range"):
        APGD(row_model, norm="l2", eps=20.0)(images, y)


def test_a_model_without_any_gradient_path_stalls_apgd_but_not_square(images, row_model):
    class Detached(nn.Module):  # a filter run outside autograd: no gradient reaches the input
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return row_model(x.detach())

    model = Detached()
    y = _labels(model, images)
    apgd = APGD(model, eps=0.05, steps=4, seed=1)(images, y)
    sq = Square(model, eps=0.05, max_queries=100, seed=1)(images, y)
    assert int(sq.success.sum()) > int(apgd.success.sum())
    # per-image budgets reach the ensemble's judge too
    eps = torch.tensor([0.0, 0.05, 0.05, 0.05, 0.0, 0.05, 0.05, 0.05])
    ens = AttackEnsemble(model, [APGD(model, eps=eps, steps=4, seed=1),
                                 Square(model, eps=eps, max_queries=100, seed=1)],
                         eps=eps)(images, y)
    assert not bool(ens.success[0]) and not bool(ens.success[4])
    assert int(ens.success.sum()) >= int(sq.success[eps > 0].sum())
