"""Every attack is called like torchattacks, takes NumPy or torch, and returns one ``AttackResult``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from medrobust.attacks import ASMA, IFGSM, PGD, AttackResult, OnePixel, misclassified

pytestmark = pytest.mark.usefixtures("one_thread_module")


def _linear(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 3)).eval()


def _uint8_batch(n: int = 4, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, 8, 8, 3), dtype=np.uint8)


@pytest.mark.parametrize("cls", [PGD, IFGSM])
def test_gradient_attacks_take_numpy_like_torch(cls):
    images = _uint8_batch()
    labels = np.array([0, 1, 2, 0])
    attack = cls(_linear(), eps=4 / 255, steps=3, seed=1)
    from_numpy = attack(images, labels)
    as_torch = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    from_torch = attack(as_torch, torch.from_numpy(labels))
    assert isinstance(from_numpy, AttackResult) and len(from_numpy) == 4
    assert torch.equal(from_numpy.adversarial, from_torch.adversarial)
    assert from_numpy.success is None and from_numpy.queries is None
    assert from_numpy.steps.tolist() == [3, 3, 3, 3]
    got = attack.get_params()
    assert (got["eps"], got["steps"], got["seed"], got["norm"]) == (4 / 255, 3, 1, "linf")


def test_pgd_success_is_the_criterion_on_the_returned_images():
    model = _linear()
    images = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    labels = model(images).argmax(1)
    result = PGD(model, eps=0.2, steps=10, early_stop=misclassified, seed=0)(images, labels)
    with torch.no_grad():
        expected = model(result.adversarial).argmax(1) != labels
    assert torch.equal(result.success, expected)
    assert result.success_rate == pytest.approx(float(expected.float().mean()))
    norms = result.perturbation_norms(images)
    assert bool((norms["linf"] <= 0.2 + 1e-7).all())


def test_onepixel_result_carries_its_images_records_and_queries(tiny_classifier, tiny_synthetic):
    _, _, test = tiny_synthetic
    images, labels = test.images[:6], test.labels[:6]
    result = OnePixel(tiny_classifier, population=20, generations=4, seed=0)(images, labels)
    assert len(result.records) == 6 and result.status == [r.status for r in result.records]
    adv = result.numpy()
    assert adv.dtype == np.uint8
    for i, r in enumerate(result.records):
        assert np.array_equal(adv[i], r.apply(images[i]))
        assert bool(result.success[i]) == r.success
        assert int(result.queries[i]) == r.queries


def test_asma_extras_read_as_attributes():
    class Smooth(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            fg = 5 * (x[:, :1] - 0.5)
            return torch.cat([-fg, fg], dim=1)

    x = torch.full((2, 1, 5, 5), 0.3)
    target = torch.ones(2, 5, 5, dtype=torch.long)
    result = ASMA(Smooth(), iterations=30, eps=0.5, stop_iou=0.99)(x, target)
    assert result.target_iou.shape == (2,) and result.success is not None
    assert torch.equal(result.success, result.target_iou >= 0.99)
    assert bool((result.steps <= 30).all())
    with pytest.raises(AttributeError, match="target_iou"):
        _ = result.no_such_extra


def test_perturbation_norms_without_a_result_measure_the_same_in_float64():
    """Campaigns that hold only images use the function the result's method delegates to."""
    from medrobust.attacks.result import perturbation_norms

    clean = torch.tensor([[0.01, 0.5, 0.9]]).repeat(2, 1).view(2, 3, 1, 1)
    adv = clean.clone()
    adv[0, 0] += 0.6  # a float32 difference that rounds; float64 measures the exact one
    adv[1, 2] = 0.0
    norms = perturbation_norms(adv, clean)
    exact = (adv.double() - clean.double()).flatten(1)
    assert norms["l2"].dtype == torch.float64 and norms["l2"].device.type == "cpu"
    assert torch.equal(norms["linf"], exact.abs().amax(1))
    assert torch.equal(norms["l2"], exact.norm(dim=1))
    assert float(norms["linf"][0]) != float((adv - clean)[0].abs().max())
    method = AttackResult(adv).perturbation_norms(clean)
    assert all(torch.equal(method[k], norms[k]) for k in ("l2", "linf"))
    # no images, or images without pixels, measure nothing rather than failing
    assert perturbation_norms(adv[:0], clean[:0])["l2"].shape == (0,)
    empty = perturbation_norms(torch.zeros(2, 3, 0, 4), torch.zeros(2, 3, 0, 4))
    assert empty["linf"].tolist() == [0.0, 0.0] and empty["l2"].tolist() == [0.0, 0.0]
