"""Auto-PGD on any per-sample loss: APGD for segmentation, landmark and detection models.

Why: SEA (Croce, Singh & Hein 2024) found that fixed-step PGD flatters segmentation models and
that APGD (Croce & Hein 2020) on several dense losses is what exposes them. ``attacks.apgd``
is APGD for classifiers: its losses read class logits and it stops an image once it is
misclassified. This is the same algorithm, through the very same functions (``apgd_start``,
``momentum_step``, ``should_halve`` and the loop ``apgd_ascent``), for any
``loss(outputs, targets) -> (N,)`` to maximise and with no success test: every image runs all
its steps and returns the point of highest loss it reached (dense tasks have no
"misclassified" moment; their metric keeps worsening past the first flipped pixel).

Schedule (the paper's): AutoAttack's random start on the ball's surface, a first step of
2 eps, momentum 0.75, and at the checkpoints w_j (``apgd.checkpoints``) the step is halved when
the loss rose in fewer than rho = 75% of the steps since the last one, or was not halved then
and the best loss has not improved; a halving restarts from the best point. Each step costs
one forward and backward pass, plus one for the start.

Budgets are per sample and hold exactly on every point the model sees
(``projection.enforce_budget``), so on the returned images too. Starts come from one stream
per image ``key`` and restart, so an image gets the same result alone or in any batch (up to
the model's own batch-size rounding).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from medrobust.attacks.apgd import apgd_ascent, apgd_start, loss_and_gradient
from medrobust.attacks.base import (
    Attack,
    AttackProgress,
    output_device,
    take_targets,
)
from medrobust.attacks.losses import LossFn, cross_entropy, loss_name
from medrobust.attacks.projection import NORMS, Budget, budget_param, plain_budget
from medrobust.attacks.result import AttackResult
from medrobust.errors import ConfigError
from medrobust.utils.validation import check_choice, check_range


class DenseAPGD(Attack):
    """APGD maximising any per-sample loss, Linf or L2, per-sample budgets, no early stop.

    Parameters
    ----------
    model: any module mapping float [0,1] (N,C,H,W) to outputs (segmentation logits, landmark
        heatmaps, detector outputs).
    loss: per-sample ``loss(outputs, targets) -> (N,)`` to maximise (a task's
        ``attack_loss(model)`` or one of its ``ensemble_losses``).
    norm: ``linf`` or ``l2``.
    eps: the radius, a number or one per image of ``run``'s batch.
    steps: iterations per restart; each costs one forward and backward pass, plus one for the
        random start.
    restarts: random restarts, each on every image; an image keeps the restart whose best
        point has the highest loss.
    rho: the fraction of loss-increasing steps below which the step is halved (0.75).
    momentum: the weight of the new gradient step against the previous move (0.75).
    batch_size: images attacked together.
    progress: show a bar on stderr that moves every step (``Attack``).
    """

    name = "apgd"

    def __init__(self, model: nn.Module, loss: LossFn = cross_entropy, norm: str = "linf",
                 eps: Budget = 8 / 255, steps: int = 100, restarts: int = 1, rho: float = 0.75,
                 momentum: float = 0.75, batch_size: int = 64, seed: int = 0,
                 progress: bool = False) -> None:
        super().__init__(model, seed, progress)
        if not callable(loss):
            raise ConfigError("loss must be a callable loss(outputs, targets) -> (N,)")
        self.loss = loss
        self.norm = check_choice("norm", norm, NORMS)
        self.eps = budget_param("eps", eps, self.norm)
        self.steps = int(check_range("steps", steps, 1))
        self.restarts = int(check_range("restarts", restarts, 1))
        self.rho = float(check_range("rho", rho, 0.0, 1.0))
        self.momentum = float(check_range("momentum", momentum, 0.0, 1.0))
        self.batch_size = int(check_range("batch_size", batch_size, 1))

    @property
    def label(self) -> str:
        """A short name for tables: ``apgd-<loss>``."""
        return f"{self.name}-{loss_name(self.loss)}"

    def params(self) -> dict[str, Any]:
        return {"attack": self.name, "loss": loss_name(self.loss), "norm": self.norm,
                "eps": plain_budget(self.eps), "steps": self.steps, "restarts": self.restarts,
                "rho": self.rho, "momentum": self.momentum, "seed": self.seed}

    def run(self, images: Any, labels: Any, keys: Sequence[int] | None = None,
            **kwargs: Any) -> AttackResult:
        """Attack ``images`` (pixel space: torch (N,C,H,W) or NumPy (N,H,W,C), uint8 or float)
        away from ``labels``: the targets the loss scores against (masks, landmarks, one row
        per image; or a list with one entry per image when they are ragged, as a detector's).

        ``keys`` name each image's random streams (default 0..N-1). The result has no
        ``success`` (no success test); ``steps`` are the gradient steps each image took over
        all restarts, and the extra ``loss`` (N,) is the loss at the returned image as the
        attack measured it (images with eps 0 come back unchanged, with their clean loss).
        """
        batch = self.target_batch(images, labels, keys, kwargs)
        device, x, target, keys, eps = batch.device, batch.x, batch.targets, batch.keys, batch.eps
        n = x.shape[0]
        out = x.clone()
        loss = torch.zeros(n)
        steps = torch.zeros(n, dtype=torch.long)
        with self.progress_bar(n) as bar:
            for s in range(0, n, self.batch_size):
                e = min(s + self.batch_size, n)
                out[s:e], loss[s:e], steps[s:e] = self._attack(x[s:e], target[s:e], eps[s:e],
                                                               keys[s:e], bar)
                bar.settle(e - s)
        return AttackResult(out.to(output_device(images, device)), steps=steps,
                            extras={"loss": loss})

    def _objective(self, outputs: Any, target: Any, n: int) -> torch.Tensor:
        """The loss of ``n`` images, refused unless it is one value per image."""
        loss = self.loss(outputs, target)
        if not isinstance(loss, torch.Tensor) or loss.shape != (n,):
            raise ConfigError(f"the loss must return one value per image ({n},), got "
                              f"{tuple(getattr(loss, 'shape', ()))}")
        return loss

    def _attack(self, x0: torch.Tensor, target: torch.Tensor | list[Any], eps: torch.Tensor,
                keys: list[int], bar: AttackProgress | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One batch: (adversarial, loss there, steps) per image."""
        n = x0.shape[0]
        adv = x0.clone()
        taken = torch.zeros(n, dtype=torch.long)
        best = torch.zeros(n, device=x0.device)
        still = (eps == 0).nonzero().squeeze(1)
        if still.numel():  # unchanged images report their clean loss
            with torch.no_grad():
                best[still] = self._objective(self.model(x0[still]),
                                              take_targets(target, still),
                                              int(still.numel())).detach().float()
        idx = (eps > 0).nonzero().squeeze(1)
        if idx.numel() == 0:
            return adv, best.cpu(), taken
        xs, es, ts = x0[idx], eps[idx], take_targets(target, idx)
        ks = [keys[i] for i in idx.tolist()]
        share = 1.0 / (self.steps * self.restarts)

        def evaluate(x: torch.Tensor, sub: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor,
                                                                  None]:
            t = ts if sub.numel() == len(ks) else take_targets(ts, sub)
            loss, grad, _ = loss_and_gradient(self.model, x,
                                              lambda o: self._objective(o, t, x.shape[0]))
            return loss.float(), grad, None

        kept = torch.full((len(ks),), float("-inf"), device=x0.device)
        for r in range(self.restarts):
            run = apgd_ascent(evaluate, xs, es, apgd_start(xs, es, self.norm, self.seed, ks,
                                                           (r,)),
                              self.norm, self.steps, self.rho, self.momentum,
                              None if bar is None else (lambda m: bar.advance(m * share)))
            better = run.loss > kept
            adv[idx[better]] = run.best[better]
            kept = torch.where(better, run.loss, kept)
            taken[idx.cpu()] += run.taken
        best[idx] = kept.to(best.device)
        return adv, best.cpu(), taken
