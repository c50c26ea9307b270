"""An attack on the smoothed classifier itself, to check its certificates from above.

A certificate is a lower bound and an attack an upper bound, so at every radius certified
accuracy must not exceed the accuracy the strongest attack leaves (Cohen et al.'s guarantee,
up to its probability ``alpha`` of error). ``SmoothedLogits`` makes the smoothed classifier
differentiable the way SmoothAdv does (Salman et al., NeurIPS 2019): the log of the mean
softmax over ``samples`` noisy copies, with fresh seeded noise at every call (expectation over
transformation), so PGD climbs the smoothed classifier's own loss rather than the base model's.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from medrobust.attacks.base import model_device
from medrobust.utils.validation import check_range


class NoisyMean(nn.Module):
    """``E[f(x + d)]`` estimated on ``samples`` draws: the outputs of any model (segmentation
    logits, landmark maps, detector heads) averaged over the smoothing noise, so a gradient
    attack on the task's loss of these outputs aims at the smoothed model (expectation over
    transformation) rather than at the base model, which smoothing hides. Fresh noise from one
    seeded stream per image (``reseed``)."""

    def __init__(self, model: nn.Module, sigma: float, samples: int = 8, seed: int = 0) -> None:
        super().__init__()
        self.model = model
        self.sigma = float(check_range("sigma", sigma, 0, low_inclusive=False))
        self.samples = int(check_range("samples", samples, 1))
        self.generator = torch.Generator(device=model_device(model))
        self.reseed(seed)

    def reseed(self, seed: int) -> None:
        """Restart the noise stream (per image, so an image's attack does not depend on which
        images share its batch, nor on a resume)."""
        self.generator.manual_seed(int(seed))

    def noisy_outputs(self, x: torch.Tensor) -> torch.Tensor:
        """(samples, N, ...) model outputs on ``samples`` noisy copies of each image."""
        noise = torch.randn((self.samples, *x.shape), generator=self.generator,
                            device=x.device, dtype=x.dtype)
        out = self.model((x.unsqueeze(0) + self.sigma * noise).reshape(-1, *x.shape[1:]))
        return out.reshape(self.samples, x.shape[0], *out.shape[1:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.noisy_outputs(x).mean(dim=0)


class SmoothedLogits(NoisyMean):
    """``log E[softmax(f(x + d))]``, ``d ~ N(0, sigma^2 I)``, estimated on ``samples`` draws;
    the cross-entropy of these log-probabilities is the smoothed classifier's loss (the mean of
    the probabilities, not of the logits, is what the smoothed classifier votes with)."""

    def __init__(self, model: nn.Module, sigma: float, samples: int = 16, seed: int = 0) -> None:
        super().__init__(model, sigma, samples, seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.noisy_outputs(x)
        if logits.shape[2] == 1:  # a sigmoid head: its two classes' logits
            logits = torch.cat([torch.zeros_like(logits), logits], dim=2)
        probs = torch.softmax(logits, dim=2).mean(dim=0)
        return torch.log(probs.clamp_min(1e-12))


def attack_smoothed(model: nn.Module, loss: Any, sigma: float, steps: int, samples: int,
                    seed: int, x: torch.Tensor, targets: Any, radius: float,
                    key: int) -> torch.Tensor:
    """L2 PGD within ``radius`` on the task's loss of the noise-averaged outputs (``NoisyMean``,
    its noise keyed by the image): the attack a dense certificate's cross-check runs."""
    from medrobust.attacks.pgd import PGD

    noisy = NoisyMean(model, sigma, samples, seed * 1_000_003 + int(key))
    return PGD(noisy, loss=loss, norm="l2", eps=radius, steps=steps, random_start=True,
               seed=seed)(x, targets, keys=[int(key)]).adversarial


def median_violation(samples: np.ndarray, sigma: float, alpha: float, lower: np.ndarray,
                     upper: np.ndarray) -> np.ndarray:
    """Per output, whether the attacked image's smoothed median lies outside the certified
    interval beyond doubt: its own confidence interval (order statistics at ``alpha``, jointly
    over the outputs) misses [``lower``, ``upper``] entirely. A median merely estimated past an
    edge by sampling error is no violation."""
    from medrobust.certify.median import percentile_bounds

    lo, _, hi = percentile_bounds(samples, sigma, 0.0, alpha)
    return (lo > upper) | (hi < lower)
