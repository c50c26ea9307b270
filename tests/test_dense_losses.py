"""The segmentation attack losses of SEA and CosPGD (issue 21): per image, bounded where they
say so, blind to pixels already flipped where they are masked, and climbable by PGD."""

from __future__ import annotations

import math

import pytest
import torch

from medrobust.attacks.dense_losses import (
    DENSE_LOSSES,
    cosine_ce,
    js_divergence,
    masked_ce,
    masked_margin,
)
from medrobust.errors import ConfigError


def _batch(seed: int = 0, n: int = 3, k: int = 3, size: int = 6):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, size, size, generator=g), torch.randint(0, k, (n, size, size),
                                                                      generator=g)


@pytest.mark.parametrize("name", sorted(DENSE_LOSSES))
def test_each_loss_is_per_image(name):
    loss = DENSE_LOSSES[name]
    z, y = _batch()
    whole = loss(z, y)
    assert whole.shape == (3,)
    for i in range(3):  # an image's loss does not depend on the others in its batch
        assert torch.allclose(loss(z[i:i + 1], y[i:i + 1])[0], whole[i], atol=1e-6)


def test_masked_losses_ignore_pixels_already_wrong():
    z, y = _batch(1)
    wrong = z.argmax(dim=1) != y
    for loss in (masked_ce, masked_margin):
        zz = z.clone().requires_grad_(True)
        loss(zz, y).sum().backward()
        assert torch.all(zz.grad.permute(0, 2, 3, 1)[wrong] == 0)  # no pull from flipped pixels
        assert zz.grad.abs().sum() > 0
    all_wrong = (z.argmax(dim=1) + 1) % 3
    assert torch.all(masked_ce(z, all_wrong) == 0) and torch.all(masked_margin(z, all_wrong) == 0)
    right = z.argmax(dim=1)
    assert torch.allclose(masked_ce(z, right), torch.nn.functional.cross_entropy(
        z, right, reduction="none").mean(dim=(1, 2)))
    assert torch.all(masked_margin(z, right) < 0)


def test_js_divergence_is_bounded_by_log_2():
    z, y = _batch(2)
    js = js_divergence(z, y)
    assert torch.all(js >= 0) and torch.all(js <= math.log(2) + 1e-6)
    confident_right = torch.nn.functional.one_hot(y, 3).permute(0, 3, 1, 2).float() * 40
    confident_wrong = torch.nn.functional.one_hot((y + 1) % 3, 3).permute(0, 3, 1, 2).float() * 40
    assert torch.all(js_divergence(confident_right, y) < 1e-6)
    assert torch.allclose(js_divergence(confident_wrong, y), torch.full((3,), math.log(2)),
                          atol=1e-5)


def test_cosine_weighting_favours_confidently_right_pixels():
    y = torch.zeros(1, 1, 2, dtype=torch.long)
    z = torch.tensor([[[[4.0, 0.5]], [[0.0, 0.0]]]])  # pixel 0 confidently right, pixel 1 barely
    ce = torch.nn.functional.cross_entropy(z, y, reduction="none")
    assert cosine_ce(z, y) < ce.mean()  # down-weights, never up-weights: cos <= 1


@pytest.mark.parametrize("name", sorted(DENSE_LOSSES))
def test_pgd_on_each_loss_flips_pixels_of_a_linear_segmenter(name):
    """A 1x1-conv segmenter: a few signed-gradient steps on the loss lower the share of right
    pixels (the loss is a usable attack objective)."""
    torch.manual_seed(0)
    net = torch.nn.Conv2d(1, 2, 1)  # class 0 where x > 0.5: pixels near 0.5 can flip
    with torch.no_grad():
        net.weight.copy_(torch.tensor([1.0, -1.0]).reshape(2, 1, 1, 1))
        net.bias.copy_(torch.tensor([-0.5, 0.5]))
    x = torch.rand(2, 1, 8, 8)
    y = net(x).argmax(dim=1)
    adv = x.clone()
    for _ in range(10):
        adv.requires_grad_(True)
        loss = DENSE_LOSSES[name](net(adv), y).sum()
        (grad,) = torch.autograd.grad(loss, adv)
        adv = (adv.detach() + 0.02 * grad.sign()).clamp(0, 1)
    assert (net(adv).argmax(dim=1) == y).float().mean() < 1.0


def test_dense_losses_refuse_classification_logits():
    with pytest.raises(ConfigError):
        masked_ce(torch.randn(4, 3), torch.zeros(4, dtype=torch.long))
