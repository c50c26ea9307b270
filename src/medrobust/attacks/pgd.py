"""Projected gradient descent (Madry et al. 2018) in Linf or L2, for any task and loss.

Task-agnostic on purpose: the model is any ``nn.Module`` mapping float [0,1] (N,C,H,W) images to
outputs (a ``Classifier`` gives (N,K) logits, a ``Segmenter`` (N,K,H,W) logits) and the goal is a
per-sample loss callable (``medrobust.attacks.losses``). Untargeted attacks maximise the loss
against the true labels; targeted ones minimise it against the targets. Budgets are per sample
and hold exactly on the returned tensor (``projection.enforce_budget``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from medrobust.attacks.base import (
    Attack,
    AttackProgress,
    output_device,
)
from medrobust.attacks.criteria import Criterion
from medrobust.attacks.losses import LossFn, cross_entropy, loss_name
from medrobust.attacks.projection import (
    NORMS,
    Budget,
    ascent_direction,
    budget_param,
    clip_box,
    enforce_budget,
    per_sample,
    plain_budget,
    project,
    random_start,
)
from medrobust.attacks.result import AttackResult
from medrobust.errors import ConfigError
from medrobust.utils.validation import check_choice, check_range


class PGD(Attack):
    """PGD with a random start, per-sample budgets, a step size and optional early stop.

    Parameters
    ----------
    model: any module mapping float [0,1] (N,C,H,W) to outputs.
    loss: per-sample ``loss(outputs, target) -> (N,)``; maximised, or minimised if ``targeted``.
    norm: ``linf`` (sign steps, box projection) or ``l2`` (normalised-gradient steps).
    eps: the radius, a number or one per image (given to ``run``'s batch).
    step: step size (number or per image); default 2.5 * eps / steps (Madry et al.).
    steps: number of gradient steps.
    random_start: start from a uniform point of the ball (seeded, one stream per image key).
    targeted: minimise the loss towards ``target`` instead of maximising it away from it.
    early_stop: ``fn(outputs, target) -> (N,) bool``; an image is frozen once it is True, and
        the result's ``success`` is this test on the returned images.
    batch_size: images per forward/backward pass.
    progress: show a bar on stderr that moves every step (``Attack``).
    """

    name = "pgd"
    default_random_start = True

    def __init__(self, model: nn.Module, loss: LossFn = cross_entropy, norm: str = "linf",
                 eps: Budget = 8 / 255, step: Budget | None = None, steps: int = 10,
                 random_start: bool | None = None, targeted: bool = False,
                 early_stop: Criterion | None = None, batch_size: int = 64,
                 seed: int = 0, progress: bool = False) -> None:
        super().__init__(model, seed, progress)
        if not callable(loss):
            raise ConfigError("loss must be a callable loss(outputs, target) -> (N,)")
        self.loss = loss
        self.norm = check_choice("norm", norm, NORMS)
        self.eps = budget_param("eps", eps, self.norm)
        # A zero step leaves only the random start: it measures noise, not robustness.
        self.step = budget_param("step", step, positive=True)
        self.steps = int(check_range("steps", steps, 1))
        self.random_start = self.default_random_start if random_start is None else bool(
            random_start)
        self.targeted = bool(targeted)
        self.early_stop = early_stop
        self.batch_size = int(check_range("batch_size", batch_size, 1))

    def default_step(self, eps: torch.Tensor) -> torch.Tensor:
        return 2.5 * eps / max(self.steps, 1)

    def params(self) -> dict[str, Any]:
        return {"attack": self.name, "loss": loss_name(self.loss), "norm": self.norm,
                "eps": plain_budget(self.eps), "step": plain_budget(self.step), "steps": self.steps,
                "random_start": self.random_start, "targeted": self.targeted,
                "early_stop": None if self.early_stop is None else getattr(
                    self.early_stop, "__name__", repr(self.early_stop)),
                "seed": self.seed}

    def run(self, images: Any, labels: Any, keys: Sequence[int] | None = None,
            **kwargs: Any) -> AttackResult:
        """Attack ``images`` (pixel space: torch (N,C,H,W) or NumPy (N,H,W,C), uint8 or float).

        ``labels`` are the true labels/masks/landmarks (untargeted) or the targets (targeted):
        a tensor or array with one row per image, or a list with one entry per image when the
        targets are ragged (a detector's boxes and labels per image). ``keys``
        name each image's random stream (default 0..N-1), so a campaign gets the same result
        whether an image is attacked alone or in a batch. The result's ``steps`` are the
        gradient steps each image took (early stop freezes).
        """
        batch = self.target_batch(images, labels, keys, kwargs)
        device, x, target, keys, eps = batch.device, batch.x, batch.targets, batch.keys, batch.eps
        n = x.shape[0]
        step = self.default_step(eps) if self.step is None else per_sample(self.step, n, device,
                                                                            "step")
        out = x.clone()
        taken = torch.zeros(n, dtype=torch.long)
        success = None if self.early_stop is None else torch.zeros(n, dtype=torch.bool)
        with self.progress_bar(n) as bar:
            for s in range(0, n, self.batch_size):
                e = min(s + self.batch_size, n)
                out[s:e], taken[s:e] = self._attack(x[s:e], target[s:e], eps[s:e], step[s:e],
                                                    keys[s:e], bar)
                if success is not None:
                    with torch.no_grad():
                        success[s:e] = self.early_stop(self.model(out[s:e]), target[s:e]).cpu()
                bar.settle(e - s)
        return AttackResult(out.to(output_device(images, device)), success=success, steps=taken)

    def _attack(self, x0: torch.Tensor, target: torch.Tensor, eps: torch.Tensor,
                step: torch.Tensor, keys: list[int], bar: AttackProgress | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        n = x0.shape[0]
        taken = torch.zeros(n, dtype=torch.long)
        if bool((eps == 0).all()) or self.steps == 0:
            return x0.clone(), taken
        if self.random_start:
            delta = clip_box(x0, project(random_start(x0, eps, self.norm, self.seed, keys), eps,
                                         self.norm))
        else:
            delta = torch.zeros_like(x0)
        active = torch.ones(n, dtype=torch.bool, device=x0.device)
        sign = -1.0 if self.targeted else 1.0
        view = (-1, *([1] * (x0.ndim - 1)))
        for _ in range(self.steps):
            adv = (x0 + delta).requires_grad_(True)
            with torch.enable_grad():
                outputs = self.model(adv)
                loss = self.loss(outputs, target)
                if loss.shape != (n,):
                    raise ConfigError(f"the loss must return one value per image ({n},), got "
                                      f"{tuple(loss.shape)}")
                (grad,) = torch.autograd.grad(loss.sum(), adv)
            if self.early_stop is not None:
                active &= ~self.early_stop(outputs.detach(), target).to(active.device)
                if not bool(active.any()):
                    break
            new = delta + sign * step.view(view) * ascent_direction(grad, self.norm)
            new = clip_box(x0, project(new, eps, self.norm))
            delta = torch.where(active.view(view), new, delta)
            taken += active.cpu().long()
            if bar is not None:
                bar.advance(n / self.steps)  # the batch's share of one step
        return enforce_budget(x0, x0 + delta, eps, self.norm), taken


