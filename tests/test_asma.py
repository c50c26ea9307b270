"""ASMA: the loss on hand-made logits, the adaptive mask, the multiplier schedule, best-iterate
tracking, budgets and determinism, on per-pixel models whose behaviour is known exactly."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medrobust.attacks.asma import ASMA, distance, mask_loss, multiplier
from medrobust.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread_module")


class PerPixel(nn.Module):
    """Foreground logit 10 * (x - 0.5) per pixel (background logit 0): fg exactly when x > 0.5."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fg = 10 * (x[:, :1] - 0.5)
        return torch.cat([torch.zeros_like(fg), fg], dim=1)


class Band(nn.Module):
    """Foreground logit 2 - 10 |x - 0.5|: fg only inside (0.3, 0.7), so big steps overshoot."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fg = 2 - 10 * (x[:, :1] - 0.5).abs()
        return torch.cat([torch.zeros_like(fg), fg], dim=1)


class Smooth(nn.Module):
    """Foreground where a 3x3 weighted mean (centre 0.6, neighbours 0.05) exceeds 0.5, so
    neighbouring pixels interact; logits (-s, s) so background targets pull too."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1, bias=False)
        nn.init.constant_(self.conv.weight, 0.05)
        with torch.no_grad():
            self.conv.weight[0, 0, 1, 1] = 0.6

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fg = 5 * (self.conv(x) - 0.5)
        return torch.cat([-fg, fg], dim=1)


# -- loss and distance ----------------------------------------------------------------------------

def test_mask_loss_values_on_hand_made_logits():
    # pixels: predictions (argmax) are 1, 0, 1, 0
    logits = torch.tensor([[[[0.0, 2.0, 0.5, -1.0]], [[3.0, -1.0, 1.5, -2.0]]]])
    target = torch.tensor([[[1, 1, 0, 0]]])
    # static: target-class logit at every pixel: 3 + (-1) + 0.5 + (-1)
    assert float(mask_loss(logits, target, adaptive=False)) == pytest.approx(1.5)
    # adaptive: only pixels predicted wrongly (1 and 2): -1 + 0.5
    assert float(mask_loss(logits, target, adaptive=True)) == pytest.approx(-0.5)


def test_mask_loss_is_per_image_and_multiclass():
    logits = torch.zeros(2, 3, 1, 2)
    logits[0, 2, 0, 0] = 4.0  # image 0, pixel 0 predicted class 2
    logits[1, 1, 0, 1] = 7.0
    target = torch.tensor([[[2, 1]], [[2, 1]]])
    assert mask_loss(logits, target, adaptive=False).tolist() == [4.0, 7.0]
    # image 0: pixel 0 already class 2 (left out), pixel 1 predicted 0 != 1 -> logit_1 = 0
    # image 1: pixel 0 predicted 0 != 2 -> logit_2 = 0; pixel 1 already right (left out)
    assert mask_loss(logits, target, adaptive=True).tolist() == [0.0, 0.0]


def test_adaptive_mask_leaves_out_pixels_already_predicted_as_the_target():
    x = torch.tensor([[[[0.2, 0.7], [0.9, 0.4]]]], requires_grad=True)
    target = torch.tensor([[[1, 1], [0, 0]]])  # right: (0,1) fg and (1,1) bg; wrong: the others
    (g_adaptive,) = torch.autograd.grad(mask_loss(PerPixel()(x), target, True).sum(), x)
    (g_static,) = torch.autograd.grad(mask_loss(PerPixel()(x), target, False).sum(), x)
    right = torch.tensor([[[[False, True], [False, True]]]])
    assert bool((g_adaptive[right] == 0).all())
    assert g_adaptive[0, 0, 0, 0] == 10.0  # wrong fg pixel: d logit_1 / dx = 10
    assert g_adaptive[0, 0, 1, 0] == 0.0  # wrong bg pixel: logit_0 is constant here
    assert g_static[0, 0, 0, 1] == 10.0  # the static mask keeps pulling on a right pixel


def test_distance_term():
    x0 = torch.zeros(2, 1, 2, 2)
    x = x0.clone()
    x[0, 0, 0, 0], x[0, 0, 1, 1], x[1, 0, 0, 1] = 0.3, -0.4, 0.5
    assert distance(x, x0).tolist() == pytest.approx([0.25, 0.25])


# -- schedule and tracking --------------------------------------------------------------------------

@pytest.mark.parametrize("normalize", [None, "linf"])
def test_multiplier_schedule(normalize):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 1, 6, 6, generator=g) * 0.5
    target = torch.zeros(3, 6, 6, dtype=torch.long)
    target[:, 1:5, 1:5] = 1
    tau, beta = (0.06, 0.1) if normalize else (0.01, 0.05)
    res = ASMA(Smooth(), iterations=12, tau=tau, beta=beta, normalize=normalize, eps=None
               )(x, target, history=True)
    m, iou = res.history["multiplier"], res.history["iou"]
    assert m.shape == (12, 3) and iou.shape == (13, 3)
    assert torch.allclose(m[0], torch.full((3,), tau))  # m_0 = tau
    assert torch.allclose(m[1:], beta * iou[1:12] + tau)  # m_t = beta * IoU(X_t) + tau
    assert float(iou[-1].mean()) > float(iou[0].mean())  # and it makes progress
    assert torch.equal(multiplier(torch.tensor([0.0, 1.0]), 0.1, 0.5), torch.tensor([0.1, 0.6]))
    fixed = ASMA(Smooth(), iterations=5, tau=tau, dynamic=False, normalize=normalize, eps=None
                 )(x, target, history=True)
    assert torch.allclose(fixed.history["multiplier"], torch.full((5, 3), tau))


def test_best_iterate_is_kept_when_the_last_one_overshoots():
    # 0.1 -> 0.45 (inside the band: fg) -> 0.8 (outside: bg again)
    x = torch.full((1, 1, 1, 1), 0.1)
    target = torch.ones(1, 1, 1, dtype=torch.long)
    res = ASMA(Band(), iterations=2, tau=0.35, dynamic=False, mask="static", normalize="sign",
               distance_weight=0.0, eps=None)(x, target, history=True)
    assert res.history["iou"][:, 0].tolist() == [0.0, 1.0, 0.0]
    assert int(res.iteration[0]) == 1 and float(res.target_iou[0]) == 1.0
    assert float(res.adversarial[0, 0, 0, 0]) == pytest.approx(0.45)
    assert int(Band()(res.adversarial).argmax(1)[0, 0, 0]) == 1


def test_best_iterate_ties_go_to_the_smaller_perturbation():
    # 0.4 -> 0.7 (fg) -> D pulls back to 0.52 (still fg, smaller L2) -> 0.448 (bg)
    x = torch.full((1, 1, 1, 1), 0.4)
    target = torch.ones(1, 1, 1, dtype=torch.long)
    res = ASMA(PerPixel(), iterations=3, tau=0.3, dynamic=False, normalize="sign",
               distance_weight=1.0, eps=None)(x, target, history=True)
    assert res.history["iou"][:, 0].tolist() == [0.0, 1.0, 1.0, 0.0]
    assert int(res.iteration[0]) == 2
    assert float(res.adversarial[0, 0, 0, 0]) == pytest.approx(0.52, abs=1e-6)
    assert float(res.l2[0]) == pytest.approx(0.12, abs=1e-6)


def test_stop_iou_freezes_images_that_reached_the_target():
    x = torch.full((2, 1, 2, 2), 0.4)
    x[1] = 0.1
    target = torch.ones(2, 2, 2, dtype=torch.long)
    res = ASMA(PerPixel(), iterations=10, tau=0.2, dynamic=False, normalize="sign",
               distance_weight=0.0, stop_iou=1.0, eps=None)(x, target)
    assert res.target_iou.tolist() == [1.0, 1.0]
    assert res.iteration.tolist() == [1, 3]  # 0.4 -> 0.6; 0.1 -> 0.3 -> 0.5 (not > 0.5) -> 0.7


# -- budgets, identity, determinism --------------------------------------------------------------------

def test_budgets_hold_exactly_per_image():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(4, 1, 8, 8, generator=g)
    target = torch.ones(4, 8, 8, dtype=torch.long)
    eps = [0.0, 0.01, 0.05, 0.2]
    res = ASMA(Smooth(), iterations=15, tau=0.02, beta=0.05, eps=eps)(x, target)
    d = (res.adversarial - x).flatten(1)
    assert bool((d.abs().amax(1) <= torch.tensor(eps)).all())
    assert torch.equal(res.adversarial[0], x[0])
    assert float(res.adversarial.min()) >= 0 and float(res.adversarial.max()) <= 1
    l2 = [0.0, 0.05, 0.3, 1.0]
    res2 = ASMA(Smooth(), iterations=15, tau=0.02, beta=0.05, eps=None, eps_l2=l2)(x, target)
    assert bool(((res2.adversarial - x).flatten(1).norm(dim=1) <= torch.tensor(l2)).all())
    assert torch.allclose(res2.l2, (res2.adversarial - x).flatten(1).norm(dim=1).double().float())


def test_eps_zero_returns_the_input_and_input_is_not_mutated():
    x = torch.rand(2, 1, 5, 5)
    copy = x.clone()
    res = ASMA(Smooth(), iterations=5, eps=0.0)(x, torch.ones(2, 5, 5, dtype=torch.long))
    assert torch.equal(res.adversarial, x) and torch.equal(x, copy)


def test_deterministic_and_reaches_the_target():
    g = torch.Generator().manual_seed(2)
    x = torch.rand(2, 1, 12, 12, generator=g) * 0.4
    target = torch.zeros(2, 12, 12, dtype=torch.long)
    target[:, 3:9, 2:10] = 1
    settings = {"iterations": 25, "tau": 0.05, "beta": 0.1, "eps": 0.5, "distance_weight": 0.1}
    a = ASMA(Smooth(), batch_size=1, **settings)(x, target)
    b = ASMA(Smooth(), batch_size=2, **settings)(x, target)
    assert torch.equal(a.adversarial, b.adversarial)
    assert bool((a.target_iou > a.clean_iou).all()) and float(a.target_iou.min()) >= 0.9


def test_bad_settings_are_config_errors():
    with pytest.raises(ConfigError):
        ASMA(PerPixel(), mask="dynamic")
    with pytest.raises(ConfigError):
        ASMA(PerPixel(), normalize="l1")
    with pytest.raises(ConfigError):
        ASMA(PerPixel(), tau=-1)
    with pytest.raises(ConfigError):
        ASMA(PerPixel())(torch.rand(1, 1, 4, 4), torch.ones(1, 3, 3, dtype=torch.long))
