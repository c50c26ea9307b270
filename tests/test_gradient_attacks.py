"""PGD and IFGSM: loss values, exact budgets, eps = 0, determinism, early stop, targeted goals."""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch import nn

from medrobust.attacks import IFGSM, PGD, cross_entropy, dice_loss, misclassified
from medrobust.attacks.criteria import foreground_iou, mask_iou_at_least
from medrobust.attacks.losses import DiceLoss
from medrobust.attacks.projection import enforce_budget, random_start
from medrobust.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread_module")


def linear_classifier(seed: int = 0, k: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, k))
    return model.eval()


class ThresholdSegmenter(nn.Module):
    """Foreground where a 3x3-smoothed intensity exceeds 0.5: reachable, known behaviour."""

    def __init__(self) -> None:
        super().__init__()
        self.smooth = nn.Conv2d(1, 1, 3, padding=1, bias=False)
        nn.init.constant_(self.smooth.weight, 1 / 9)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fg = 10 * (self.smooth(x) - 0.5)
        return torch.cat([torch.zeros_like(fg), fg], dim=1)


@pytest.fixture
def images() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(6, 3, 8, 8, generator=g)
    x[0] = 0.0  # corners of the box: clipping must hold
    x[1] = 1.0
    return x


# -- losses ---------------------------------------------------------------------------------------

def test_cross_entropy_classification_values():
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0], [0.0, 3.0]])
    got = cross_entropy(logits, torch.tensor([0, 1, 0]))
    want = torch.tensor([math.log(1 + math.exp(-2)), math.log(2), math.log(1 + math.exp(3))])
    assert got.shape == (3,)
    assert torch.allclose(got, want, atol=1e-6)


def test_cross_entropy_sigmoid_head_is_binary_ce():
    got = cross_entropy(torch.tensor([[0.0], [2.0]]), torch.tensor([1, 0]))
    assert torch.allclose(got, torch.tensor([math.log(2), math.log(1 + math.exp(2))]), atol=1e-6)


def test_cross_entropy_segmentation_is_per_image_pixel_mean():
    logits = torch.zeros(2, 2, 1, 2)
    logits[0, 1, 0, 0] = 2.0  # image 0, pixel 0 favours class 1
    target = torch.tensor([[[1, 0]], [[0, 0]]])
    got = cross_entropy(logits, target)
    p0 = math.log(1 + math.exp(-2))  # pixel 0: target 1, logit gap +2
    assert torch.allclose(got, torch.tensor([(p0 + math.log(2)) / 2, math.log(2)]), atol=1e-6)


def test_dice_loss_matches_hand_computation():
    logits = torch.zeros(1, 2, 1, 4)
    logits[0, 1] = torch.tensor([[10.0, 10.0, -10.0, 0.0]])
    target = torch.tensor([[[1, 0, 0, 0]]])
    p1 = torch.softmax(logits, dim=1)[0, 1, 0]
    p0 = 1 - p1
    t1 = torch.tensor([1.0, 0, 0, 0])
    t0 = 1 - t1
    smooth = 1e-5

    def d(p: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return 1 - (2 * (p * t).sum() + smooth) / (p.sum() + t.sum() + smooth)

    both = (d(p0, t0) + d(p1, t1)) / 2
    assert torch.allclose(dice_loss(logits, target), both.reshape(1), atol=1e-5)
    fg = DiceLoss(include_background=False)(logits, target)
    assert torch.allclose(fg, d(p1, t1).reshape(1), atol=1e-5)


def test_dice_loss_is_zero_for_a_perfect_prediction_and_one_for_the_opposite():
    target = torch.tensor([[[1, 0], [0, 1]]])
    perfect = torch.stack([(1 - target) * 50.0, target * 50.0], dim=1).float()
    assert float(dice_loss(perfect, target)) < 1e-4
    assert float(DiceLoss(False)(-perfect, target)) > 0.99


def test_loss_shape_mismatch_is_a_config_error():
    with pytest.raises(ConfigError):
        cross_entropy(torch.zeros(2, 2, 4, 4), torch.zeros(2, 3, 4, dtype=torch.long))


def test_foreground_iou():
    a = torch.tensor([[[1, 1, 0, 0]], [[0, 0, 0, 0]], [[1, 0, 0, 0]]])
    b = torch.tensor([[[1, 0, 0, 0]], [[0, 0, 0, 0]], [[0, 1, 0, 0]]])
    assert foreground_iou(a, b).tolist() == [0.5, 1.0, 0.0]
    multi = foreground_iou(torch.tensor([[[1, 2, 2, 0]]]), torch.tensor([[[1, 2, 0, 0]]]))
    assert multi.tolist() == [pytest.approx((1.0 + 0.5) / 2)]


# -- budgets ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("cls", [PGD, IFGSM])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_per_sample_budgets_and_box_hold_exactly(cls, norm, images):
    eps = [0.0, 2 / 255, 8 / 255, 0.05, 0.5, 3.0] if norm == "l2" else \
        [0.0, 1 / 255, 2 / 255, 8 / 255, 0.1, 0.5]
    x = images.clone()
    att = cls(linear_classifier(), norm=norm, eps=eps, steps=7, seed=3)
    adv = att(images, torch.tensor([0, 1, 2, 0, 1, 2])).adversarial
    assert torch.equal(images, x), "input was mutated"
    assert adv.dtype == torch.float32 and adv.shape == images.shape
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
    d = (adv - images).reshape(6, -1)
    size = d.abs().amax(dim=1) if norm == "linf" else d.norm(dim=1)
    e32 = torch.tensor(eps, dtype=torch.float32)
    assert bool((size <= e32).all()), (size - e32).tolist()
    assert torch.equal(adv[0], images[0])  # eps = 0 for this image
    assert float(size[4]) > 0.5 * eps[4]  # a real attack moved the others


@pytest.mark.parametrize("cls", [PGD, IFGSM])
def test_eps_zero_returns_the_input_exactly(cls, images):
    adv = cls(linear_classifier(), eps=0.0, steps=5)(images, torch.zeros(6, dtype=torch.long)).adversarial
    assert torch.equal(adv, images) and adv is not images


def test_enforce_budget_never_overshoots_after_rounding():
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(4, 1, 32, 32, generator=g)
    far = torch.rand(4, 1, 32, 32, generator=g)
    eps = torch.tensor([1e-7, 1e-3, 0.1, 0.3])
    for norm in ("linf", "l2"):
        out = enforce_budget(x0, far, eps * (30 if norm == "l2" else 1), norm)
        d = (out - x0).reshape(4, -1)
        size = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
        assert bool((size <= eps * (30 if norm == "l2" else 1)).all())


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_enforce_budget_holds_in_float64_too(norm):
    # Dark pixels pushed up by eps (Linf) and points on the sphere (L2): float32 often reads
    # them within eps where float64, the ensemble's judge, reads them just over it.
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(64, 3, 16, 16, generator=g) ** 4
    eps = torch.rand(64, generator=g) * (2.0 if norm == "l2" else 0.1)
    eps[0] = 0.0
    out = enforce_budget(x0, torch.rand(64, 3, 16, 16, generator=g), eps, norm)
    d64 = (out.double() - x0.double()).flatten(1)
    d32 = (out - x0).flatten(1)
    size64 = d64.abs().amax(1) if norm == "linf" else d64.norm(dim=1)
    size32 = d32.abs().amax(1) if norm == "linf" else d32.norm(dim=1)
    assert bool((size64 <= eps.double()).all()) and bool((size32 <= eps).all())
    assert bool(((out >= 0) & (out <= 1)).all()) and torch.equal(out[0], x0[0])
    # pulled back onto the boundary, not thrown away
    assert bool((size64[1:] >= eps[1:].double() * (1 - 1e-5)).all())
    # points that already fit are returned untouched (an image's result ignores its batch)
    assert torch.equal(enforce_budget(x0, out, eps, norm), out)


# -- behaviour ------------------------------------------------------------------------------------

def test_pgd_raises_the_loss_and_targeted_lowers_it(images):
    model = linear_classifier()
    labels = model(images).argmax(1)
    clean = cross_entropy(model(images), labels)
    adv = PGD(model, eps=0.1, steps=10)(images, labels).adversarial
    assert bool((cross_entropy(model(adv), labels) > clean).all())
    targets = (labels + 1) % 3
    t_clean = cross_entropy(model(images), targets)
    t_adv = PGD(model, eps=0.1, steps=10, targeted=True)(images, targets).adversarial
    assert bool((cross_entropy(model(t_adv), targets) < t_clean).all())


def test_ifgsm_one_step_is_fgsm(images):
    model = linear_classifier()
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    x = images.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(cross_entropy(model(x), labels).sum(), x)
    want = (images + 0.03 * g.sign()).clamp(0, 1)
    got = IFGSM(model, eps=0.03, steps=1)(images, labels).adversarial
    assert torch.allclose(got, want, atol=1e-7)


def test_seeded_and_deterministic(images):
    model = linear_classifier()
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    a = PGD(model, eps=0.05, steps=3, seed=5)(images, labels).adversarial
    b = PGD(model, eps=0.05, steps=3, seed=5)(images, labels).adversarial
    c = PGD(model, eps=0.05, steps=3, seed=6)(images, labels).adversarial
    assert torch.equal(a, b) and not torch.equal(a, c)
    # IFGSM has no random start: the seed cannot matter.
    assert torch.equal(IFGSM(model, eps=0.05, seed=1)(images, labels).adversarial,
                       IFGSM(model, eps=0.05, seed=2)(images, labels).adversarial)


def test_random_start_streams_are_keyed_per_image():
    x0 = torch.rand(3, 1, 4, 4)
    eps = torch.full((3,), 0.1)
    batch = random_start(x0, eps, "linf", seed=0, keys=[7, 8, 9])
    alone = random_start(x0[1:2], eps[:1], "linf", seed=0, keys=[8])
    assert torch.equal(batch[1], alone[0])
    l2 = random_start(x0, eps, "l2", seed=0, keys=[1, 2, 3])
    assert bool((l2.reshape(3, -1).norm(dim=1) <= 0.1 + 1e-6).all())


def test_early_stop_freezes_images_that_already_succeeded(images):
    model = linear_classifier()
    labels = model(images).argmax(1)
    labels[:2] = (labels[:2] + 1) % 3  # already misclassified before any step
    att = IFGSM(model, eps=0.3, steps=20, early_stop=misclassified)
    res = att(images, labels)
    adv = res.adversarial
    assert torch.equal(adv[:2], images[:2])
    assert res.steps[:2].tolist() == [0, 0]
    assert bool((res.steps[2:] < 20).all())  # the others stopped once fooled
    assert bool(misclassified(model(adv), labels).all())


def test_targeted_segmentation_pgd_with_dice_reaches_the_mask():
    model = ThresholdSegmenter().eval()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 1, 12, 12, generator=g)
    target = torch.zeros(2, 12, 12, dtype=torch.long)
    target[:, 3:9, 3:9] = 1
    before = foreground_iou(model(x).argmax(1), target)
    att = PGD(model, loss=dice_loss, eps=0.5, steps=40, targeted=True,
              early_stop=mask_iou_at_least(0.99))
    adv = att(x, target).adversarial
    after = foreground_iou(model(adv).argmax(1), target)
    assert bool((after > before).all()) and float(after.min()) > 0.8


def test_bad_parameters_are_config_errors(images):
    model = linear_classifier()
    with pytest.raises(ConfigError):
        PGD(model, eps=-0.1)
    with pytest.raises(ConfigError):
        PGD(model, norm="l1")
    with pytest.raises(ConfigError):
        PGD(model, eps=[0.1, 0.2])(images, torch.zeros(6, dtype=torch.long))
    with pytest.raises(ConfigError):
        PGD(model)(images * 2, torch.zeros(6, dtype=torch.long))
    with pytest.raises(ConfigError):
        PGD(model, loss=lambda o, t: o.sum())(images, torch.zeros(6, dtype=torch.long))


@pytest.mark.parametrize("build, needle", [
    (lambda m: PGD(m, eps=300), "eps 300 exceeds the image range"),
    (lambda m: IFGSM(m, eps=[0.1, 1.5]), "eps 1.5 exceeds the image range"),
    (lambda m: PGD(m, step=0.0), "step must be positive"),
    (lambda m: IFGSM(m, steps=0), "steps must lie in [1, inf], got 0"),
    (lambda m: mask_iou_at_least(2.0), "stop_iou must lie in (0, 1], got 2.0"),
    (lambda m: mask_iou_at_least(0.0), "stop_iou must lie in (0, 1], got 0.0"),
])
def test_budgets_and_steps_no_attack_can_use_are_refused(build, needle):
    """Linf budgets above 1 on the [0,1] scale (a forgotten /255), a zero step (only the random
    start is left: robust accuracy then measures noise) and zero steps fail on construction."""
    with pytest.raises(ConfigError) as err:
        build(linear_classifier())
    assert needle in str(err.value)


def test_l2_budget_beyond_the_image_is_refused(images):
    # no L2 change of a (C,H,W) image in [0,1] exceeds sqrt(C*H*W)
    limit = math.sqrt(math.prod(images.shape[1:]))
    att = PGD(linear_classifier(), norm="l2", eps=limit + 1)
    with pytest.raises(ConfigError, match="exceeds the image range"):
        att.check_images(images.shape[1:])
    with pytest.raises(ConfigError, match="exceeds the image range"):
        att(images, torch.zeros(images.shape[0], dtype=torch.long))
    PGD(linear_classifier(), norm="l2", eps=limit).check_images(images.shape[1:])


def test_asma_refuses_stop_iou_0_eps_above_1_and_no_iterations():
    from medrobust.attacks.asma import ASMA
    from medrobust.attacks.seg_targets import TargetSpec
    from medrobust.errors import DataError

    model = linear_classifier()
    for kwargs, needle in (({"stop_iou": 0.0}, "stop_iou must lie in (0, 1]"),
                           ({"eps": 300.0}, "eps 300 exceeds the image range"),
                           ({"iterations": 0}, "iterations must lie in [1, inf]")):
        with pytest.raises(ConfigError, match=re.escape(needle)):
            ASMA(model, **kwargs)
    with pytest.raises(DataError, match=re.escape("target mask file nosuch.png does not exist")):
        TargetSpec(mode="file", file="nosuch.png")
