"""Auto-PGD (Croce & Hein 2020): PGD whose step size adapts itself, for judging defences.

Why not plain PGD: a fixed step size is either too large to settle into a maximum or too small
to leave the start's neighbourhood within the budget of steps, and a defence evaluated with a
badly tuned PGD looks robust when it is not. APGD starts at step 2*eps, adds momentum (0.75)
and halves the step at checkpoints w_j = ceil(p_j * steps) (p_0 = 0, p_1 = 0.22, p_{j+1} = p_j +
max(p_j - p_{j-1} - 0.03, 0.06)) when either the loss rose in fewer than rho = 75% of the steps
since the last checkpoint, or the step was not halved at the last checkpoint and the best loss
has not improved since; every halving restarts from the best point found.

Losses: cross-entropy (``ce``) and the Difference of Logits Ratio (``dlr``), which is invariant
to shifting and rescaling the logits, so a defence that saturates its softmax (and starves CE of
gradient) cannot hide behind it. ``APGDT`` is AutoAttack's APGD-T: the targeted DLR towards each
of the top-k other classes in turn, still judged by misclassification.

DLR divides by the gap between the largest and the third-largest logit, so it needs three
classes. On 2-class and single-logit sigmoid heads it falls back (with a warning, recorded as
``loss_used``) to the margin loss max_{j != y} z_j - z_y (the signed logit for a sigmoid head),
which is what DLR's numerator is; ``dlr_fallback="error"`` refuses instead.

Budgets are per sample and hold exactly on every point the model is asked about
(``projection.enforce_budget``: in float32 and in float64), so the success recorded is the
success of the returned images.
Random starts come from one stream per image ``key``, restart and target, so an image gets the
same result alone or in any batch (up to the model's own batch-size rounding).

The algorithm itself is written once, for any per-sample loss: ``apgd_start``,
``momentum_step``, ``should_halve`` and the loop ``apgd_ascent``, which ``dense_apgd.DenseAPGD``
(APGD for segmentation, landmark and detection losses, without the misclassification stop)
runs too.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from medrobust.attacks.base import Attack, AttackProgress, output_device
from medrobust.attacks.criteria import misclassified
from medrobust.attacks.losses import cross_entropy
from medrobust.attacks.projection import (
    NORMS,
    Budget,
    ascent_direction,
    budget_param,
    enforce_budget,
    plain_budget,
)
from medrobust.attacks.result import AttackResult
from medrobust.errors import ConfigError
from medrobust.utils.seeding import numpy_rng
from medrobust.utils.validation import check_choice, check_range

APGD_LOSSES = ("ce", "dlr")
FALLBACKS = ("margin", "error")


# --- losses (per sample, to be maximised) ------------------------------------------------------
def _signed(outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """A single-logit head's logit signed so that positive means "the label wins"."""
    return outputs[:, 0] * (2.0 * labels.to(outputs.dtype) - 1.0)


def margin_loss(outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(N,) max_{j != y} z_j - z_y: positive exactly when the image is misclassified.

    Works for any head: a single logit (sigmoid) gives -(2y - 1) z. Square's objective and the
    2-class stand-in for DLR.
    """
    if outputs.shape[1] == 1:
        return -_signed(outputs, labels)
    y = labels.long().view(-1, 1)
    z_y = outputs.gather(1, y).squeeze(1)
    other = outputs.scatter(1, y, float("-inf")).amax(dim=1)
    return other - z_y


def dlr_loss(outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(N,) DLR: -(z_y - max_{j != y} z_j) / (z_pi1 - z_pi3), pi sorting the logits downwards."""
    if outputs.shape[1] < 3:
        raise ConfigError(f"DLR needs at least 3 classes, the model has {max(2, outputs.shape[1])}")
    top = outputs.sort(dim=1, descending=True).values
    return margin_loss(outputs, labels) / (top[:, 0] - top[:, 2] + 1e-12)


def dlr_targeted_loss(outputs: torch.Tensor, labels: torch.Tensor,
                      targets: torch.Tensor) -> torch.Tensor:
    """(N,) targeted DLR: -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2).

    With exactly 3 classes there is no pi4 and the denominator uses z_pi3 alone.
    """
    k = outputs.shape[1]
    if k < 3:
        raise ConfigError(f"targeted DLR needs at least 3 classes, the model has {max(2, k)}")
    top = outputs.sort(dim=1, descending=True).values
    low = top[:, 2] if k == 3 else 0.5 * (top[:, 2] + top[:, 3])
    z_y = outputs.gather(1, labels.long().view(-1, 1)).squeeze(1)
    z_t = outputs.gather(1, targets.long().view(-1, 1)).squeeze(1)
    return (z_t - z_y) / (top[:, 0] - low + 1e-12)


def checkpoints(steps: int) -> list[int]:
    """The iterations after which APGD may halve its step: ceil(p_j * steps) for the paper's
    p_j (0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99 for long runs)."""
    p = [0.0, 0.22]
    while p[-1] < 1.0:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    # the tolerance keeps 0.22 * 100 at 22 despite its float error
    return sorted({math.ceil(q * steps - 1e-9) for q in p[1:] if 0 < math.ceil(q * steps - 1e-9)
                   <= steps})


# --- the machinery APGD shares with DenseAPGD -------------------------------------------------
#: ``evaluate(x, idx) -> (loss, gradient, stop)`` for the images ``idx`` of the batch at points
#: ``x``: (m,) losses to maximise, their gradients, and (m,) bool "stop here" (None: never)
Evaluate = Callable[[torch.Tensor, torch.Tensor],
                    tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]


def apgd_start(x0: torch.Tensor, eps: torch.Tensor, norm: str, seed: int, keys: Sequence[int],
               stream: tuple[int, ...]) -> torch.Tensor:
    """AutoAttack's start: a random direction scaled to the ball's surface (Linf: uniform
    noise divided by its largest entry; L2: Gaussian noise on the sphere), then [0,1].

    One generator per image ``key`` and ``stream`` (restart, target), so an image starts at
    the same point alone or in any batch."""
    noise = torch.empty_like(x0)
    for i, key in enumerate(keys):
        g = torch.Generator().manual_seed(int(numpy_rng(seed, key, *stream).integers(2**62)))
        if norm == "linf":
            t = torch.rand(x0[i].shape, generator=g) * 2 - 1
            t = t / t.abs().max().clamp_min(1e-12)
        else:
            t = torch.randn(x0[i].shape, generator=g)
            t = t / t.norm().clamp_min(1e-12)
        noise[i] = t.to(noise.device)
    view = (-1, *([1] * (x0.ndim - 1)))
    return enforce_budget(x0, x0 + eps.view(view) * noise, eps, norm)


def loss_and_gradient(model: nn.Module, x: torch.Tensor,
                      objective: Callable[[torch.Tensor], torch.Tensor]
                      ) -> tuple[torch.Tensor, torch.Tensor, Any]:
    """(loss, gradient, outputs) of ``objective(model(x))`` at ``x``, detached (outputs that
    are not one tensor come back as the model gave them).

    A model without a gradient path (a filter run under no_grad) gives a zero gradient: the
    attack stalls there instead of failing, which is what an ensemble with a black-box member
    must survive."""
    xg = x.detach().requires_grad_(True)
    with torch.enable_grad():
        outputs = model(xg)
        loss = objective(outputs)
        grad = None
        if loss.requires_grad:
            (grad,) = torch.autograd.grad(loss.sum(), xg, allow_unused=True)
    grad = torch.zeros_like(x) if grad is None else torch.nan_to_num(grad.detach())
    return loss.detach(), grad, outputs.detach() if isinstance(outputs, torch.Tensor) else outputs


def momentum_step(x: torch.Tensor, x_prev: torch.Tensor, x0: torch.Tensor, grad: torch.Tensor,
                  step: torch.Tensor, eps: torch.Tensor, norm: str, momentum: float
                  ) -> torch.Tensor:
    """APGD's update: a steepest-ascent step of size ``step`` projected into the ball (z),
    then x + a (z - x) + (1 - a)(x - x_prev) projected again, a = ``momentum``."""
    view = (-1, *([1] * (x0.ndim - 1)))
    z = enforce_budget(x0, x + step.view(view) * ascent_direction(grad, norm), eps, norm)
    a = momentum
    return enforce_budget(x0, x + a * (z - x) + (1 - a) * (x - x_prev), eps, norm)


def should_halve(rises: torch.Tensor, window: int, rho: float, reduced_last: torch.Tensor,
                 best_at_last: torch.Tensor, loss_best: torch.Tensor) -> torch.Tensor:
    """(N,) bool: halve the step at this checkpoint. Either the loss rose in fewer than
    ``rho`` of the ``window`` steps since the last one (oscillating), or the step was not
    halved last time and the best loss has not improved since (stalled)."""
    oscillating = rises < rho * window
    stalled = ~reduced_last & (best_at_last >= loss_best)
    return oscillating | stalled


@dataclass
class Ascent:
    """One APGD run per image: ``best`` the point of highest loss and ``loss`` its value;
    ``stopped`` whether the stop test held at some iterate and ``found`` the first such
    iterate (else ``best``); ``taken`` the steps taken (CPU long)."""

    best: torch.Tensor
    loss: torch.Tensor
    stopped: torch.Tensor
    found: torch.Tensor
    taken: torch.Tensor


def apgd_ascent(evaluate: Evaluate, x0: torch.Tensor, eps: torch.Tensor, start: torch.Tensor,
                norm: str, steps: int, rho: float = 0.75, momentum: float = 0.75,
                stepped: Callable[[int], None] | None = None) -> Ascent:
    """APGD from ``start`` (Croce & Hein 2020, Algorithm 1): step 2 eps, momentum, the step
    halved at ``checkpoints(steps)`` by ``should_halve``, and every halving restarts from the
    best point without momentum. An image whose stop test holds is frozen at that iterate;
    the others run every step. ``stepped(m)`` hears of each step that moved m images."""
    n = x0.shape[0]
    view = (-1, *([1] * (x0.ndim - 1)))
    x = start
    loss, grad, stop = evaluate(x, torch.arange(n, device=x0.device))
    fooled = torch.zeros(n, dtype=torch.bool, device=x0.device) if stop is None else stop
    active = ~fooled
    found = x.clone()  # where each image's stop test first held
    x_best, loss_best, grad_best = x.clone(), loss.clone(), grad.clone()
    x_prev, loss_prev = x.clone(), loss.clone()
    step = 2.0 * eps
    rises = torch.zeros(n, device=x0.device)
    reduced_last = torch.zeros(n, dtype=torch.bool, device=x0.device)
    best_at_last = loss_best.clone()
    taken = torch.zeros(n, dtype=torch.long)
    marks, last_mark = set(checkpoints(steps)), 0
    for i in range(steps):
        idx = active.nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        xa = x[idx]
        # no previous move to carry on the first step
        new = momentum_step(xa, x_prev[idx], x0[idx], grad[idx], step[idx], eps[idx], norm,
                            1.0 if i == 0 else momentum)
        l_new, g_new, f_new = evaluate(new, idx)
        x_prev[idx], x[idx], grad[idx] = xa, new, g_new
        taken[idx.cpu()] += 1
        if stepped is not None:
            stepped(int(idx.numel()))
        rises[idx] += (l_new > loss_prev[idx]).float()
        loss_prev[idx] = l_new
        better = l_new > loss_best[idx]
        bi = idx[better]
        x_best[bi], loss_best[bi], grad_best[bi] = new[better], l_new[better], g_new[better]
        if f_new is not None:
            fi = idx[f_new]
            found[fi] = new[f_new]
            fooled[fi] = True
            active[fi] = False
        if i + 1 in marks:
            halve = should_halve(rises, i + 1 - last_mark, rho, reduced_last, best_at_last,
                                 loss_best) & active
            reduced_last = halve
            best_at_last = loss_best.clone()
            step = torch.where(halve, step / 2, step)
            hv = halve.view(view)
            # restart from the best point, without momentum from the abandoned path
            x = torch.where(hv, x_best, x)
            x_prev = torch.where(hv, x_best, x_prev)
            grad = torch.where(hv, grad_best, grad)
            loss_prev = torch.where(halve, loss_best, loss_prev)
            rises.zero_()
            last_mark = i + 1
    return Ascent(x_best, loss_best, fooled, torch.where(fooled.view(view), found, x_best),
                  taken)


class APGD(Attack):
    """Untargeted APGD with random restarts, Linf or L2, per-sample budgets.

    Parameters
    ----------
    model: any module mapping float [0,1] (N,C,H,W) to class logits (N,K), or (N,1) for a
        sigmoid head.
    norm: ``linf`` or ``l2``.
    eps: the radius, a number or one per image of ``run``'s batch.
    steps: iterations per restart (AutoAttack: 100); each costs one forward and backward pass,
        plus one for the random start.
    restarts: random restarts; each later one runs only on images not yet misclassified.
    loss: ``ce`` (cross-entropy) or ``dlr`` (see the module notes for 2-class heads).
    rho: the fraction of loss-increasing steps below which the step is halved (0.75).
    momentum: the weight of the new gradient step against the previous move (0.75).
    dlr_fallback: on heads with fewer than 3 classes, ``margin`` replaces DLR by the margin loss
        (with a warning) and ``error`` raises ``ConfigError``.
    batch_size: images attacked together.
    progress: show a bar on stderr that moves every step (``Attack``).
    """

    name = "apgd"

    def __init__(self, model: nn.Module, norm: str = "linf", eps: Budget = 8 / 255,
                 steps: int = 100, restarts: int = 1, loss: str = "ce", rho: float = 0.75,
                 momentum: float = 0.75, dlr_fallback: str = "margin", batch_size: int = 64,
                 seed: int = 0, progress: bool = False) -> None:
        super().__init__(model, seed, progress)
        self.norm = check_choice("norm", norm, NORMS)
        self.eps = budget_param("eps", eps, self.norm)
        self.steps = int(check_range("steps", steps, 1))
        self.restarts = int(check_range("restarts", restarts, 1))
        self.loss = check_choice("loss", loss, APGD_LOSSES)
        self.rho = float(check_range("rho", rho, 0.0, 1.0))
        self.momentum = float(check_range("momentum", momentum, 0.0, 1.0))
        self.dlr_fallback = check_choice("dlr_fallback", dlr_fallback, FALLBACKS)
        self.batch_size = int(check_range("batch_size", batch_size, 1))

    @property
    def label(self) -> str:
        """A short name for tables: ``apgd-ce``, ``apgd-dlr``, ``apgd-t-dlr``."""
        return f"{self.name}-{self.loss}"

    def params(self) -> dict[str, Any]:
        return {"attack": self.name, "loss": self.loss, "norm": self.norm,
                "eps": plain_budget(self.eps), "steps": self.steps, "restarts": self.restarts,
                "rho": self.rho, "momentum": self.momentum, "dlr_fallback": self.dlr_fallback,
                "seed": self.seed}

    # --- the per-run plan (APGDT overrides) ---------------------------------------------------
    def _targets(self, clean: torch.Tensor, labels: torch.Tensor) -> list[torch.Tensor | None]:
        """One entry per pass over the images: None (untargeted) or the target of each image."""
        return [None]

    def _loss_used(self, classes: int) -> str:
        if self.loss == "dlr" and classes < 3:
            return "margin"
        return self.loss

    def _objective(self, outputs: torch.Tensor, labels: torch.Tensor,
                   target: torch.Tensor | None, used: str) -> torch.Tensor:
        if used == "ce":
            return cross_entropy(outputs, labels) if target is None else \
                -cross_entropy(outputs, target)
        if used == "margin":
            # with 2 classes the only target is the other class: targeted = untargeted margin
            return margin_loss(outputs, labels)
        return dlr_loss(outputs, labels) if target is None else \
            dlr_targeted_loss(outputs, labels, target)

    # --- run ----------------------------------------------------------------------------------
    def run(self, images: Any, labels: Any, keys: Sequence[int] | None = None,
            **kwargs: Any) -> AttackResult:
        """Attack ``images`` (pixel space: torch (N,C,H,W) or NumPy (N,H,W,C), uint8 or float)
        away from their true ``labels``.

        ``keys`` name each image's random streams (default 0..N-1). The result's ``success``
        is misclassification of the returned images, ``steps`` the gradient steps each image
        took over all restarts (an image stops once misclassified). An image that stays
        correctly classified gets the point of highest loss of the run that brought it closest
        to a wrong class (largest margin); extras: ``loss_used`` per
        image (``margin`` where DLR fell back on a 2-class head).
        """
        batch = self.labelled_batch(images, labels, keys, kwargs)
        device, x, y, keys, eps = batch.device, batch.x, batch.y, batch.keys, batch.eps
        n = x.shape[0]
        out = x.clone()
        success = torch.zeros(n, dtype=torch.bool)
        steps = torch.zeros(n, dtype=torch.long)
        used = self.loss
        with self.progress_bar(n) as bar:
            for s in range(0, n, self.batch_size):
                e = min(s + self.batch_size, n)
                adv, ok, taken, used = self._attack(x[s:e], y[s:e], eps[s:e], keys[s:e], bar)
                out[s:e], success[s:e], steps[s:e] = adv, ok.cpu(), taken
                bar.settle(e - s)
        return AttackResult(out.to(output_device(images, device)), success=success, steps=steps,
                            extras={"loss_used": [used] * n})

    def _attack(self, x0: torch.Tensor, y: torch.Tensor, eps: torch.Tensor, keys: list[int],
                bar: AttackProgress | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, str]:
        n = x0.shape[0]
        with torch.no_grad():
            clean = self.model(x0)
        classes = max(2, int(clean.shape[1]))
        used = self._loss_used(classes)
        if used != self.loss:
            if self.dlr_fallback == "error":
                raise ConfigError(f"{self.label} needs at least 3 classes (DLR, top-k targets); "
                                  f"the model has {classes}: use loss='ce' or "
                                  f"dlr_fallback='margin'")
            warnings.warn(f"{self.label}: the model has {classes} classes, so DLR (which needs "
                          f"3) is replaced by the margin loss max_{{j!=y}} z_j - z_y"
                          + (" and the only target is the other class" if isinstance(self, APGDT)
                             else ""), stacklevel=3)
        fooled = misclassified(clean, y)
        adv = x0.clone()
        taken = torch.zeros(n, dtype=torch.long)
        closest = torch.full((n,), float("-inf"), device=x0.device)
        todo = ~fooled & (eps > 0)
        targets = self._targets(clean, y)
        # one step of one image is this share of the bar: every image may run every step of
        # every restart and target; images that stop early are settled when the batch ends
        share = 1.0 / (self.steps * self.restarts * len(targets))
        for t_index, target in enumerate(targets):
            for r in range(self.restarts):
                idx = todo.nonzero().squeeze(1)
                if idx.numel() == 0:
                    break
                a, f, st = self._single_run(
                    x0[idx], y[idx], eps[idx], [keys[i] for i in idx.tolist()],
                    (t_index, r), None if target is None else target[idx], used,
                    None if bar is None else (lambda m: bar.advance(m * share)))
                taken[idx.cpu()] += st
                # a robust image keeps the point closest to a wrong class over all runs (the
                # margin compares runs with different losses and targets on one scale)
                with torch.no_grad():
                    gap = margin_loss(self.model(a), y[idx])
                closer = f | (gap > closest[idx])
                adv[idx[closer]] = a[closer]
                closest[idx[closer]] = gap[closer]
                fooled[idx[f]] = True
                todo[idx[f]] = False
        return adv, fooled, taken, used

    def _single_run(self, x0: torch.Tensor, y: torch.Tensor, eps: torch.Tensor, keys: list[int],
                    stream: tuple[int, int], target: torch.Tensor | None, used: str,
                    stepped: Callable[[int], None] | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One APGD run from a random start: (adversarial, misclassified, steps) per image.

        An image stops at its first misclassified iterate, which is returned; the others
        return the point of highest loss (which later restarts do not reuse).
        ``stepped(m)`` hears of each step that moved m images (the progress bar)."""

        def evaluate(x: torch.Tensor, idx: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            yi, ti = y[idx], None if target is None else target[idx]
            loss, grad, outputs = loss_and_gradient(
                self.model, x, lambda out: self._objective(out, yi, ti, used))
            return loss, grad, misclassified(outputs, yi)

        run = apgd_ascent(evaluate, x0, eps, apgd_start(x0, eps, self.norm, self.seed, keys,
                                                        stream),
                          self.norm, self.steps, self.rho, self.momentum, stepped)
        return run.found, run.stopped, run.taken


class APGDT(APGD):
    """AutoAttack's APGD-T: targeted DLR towards each of the ``n_target_classes`` classes the
    clean image scores highest after its label, one after the other (a later target runs only
    on images still classified correctly). Success is still misclassification: the targets
    only steer the search past the nearest decision boundary.

    On a 2-class or sigmoid head there is one target (the other class) and the loss falls back
    to the margin (see the module notes), i.e. this is APGD with the margin loss.
    """

    name = "apgd-t"

    def __init__(self, model: nn.Module, norm: str = "linf", eps: Budget = 8 / 255,
                 steps: int = 100, restarts: int = 1, loss: str = "dlr",
                 n_target_classes: int = 9, rho: float = 0.75, momentum: float = 0.75,
                 dlr_fallback: str = "margin", batch_size: int = 64, seed: int = 0,
                 progress: bool = False) -> None:
        super().__init__(model, norm=norm, eps=eps, steps=steps, restarts=restarts, loss=loss,
                         rho=rho, momentum=momentum, dlr_fallback=dlr_fallback,
                         batch_size=batch_size, seed=seed, progress=progress)
        self.n_target_classes = int(check_range("n_target_classes", n_target_classes, 1))

    def params(self) -> dict[str, Any]:
        return {**super().params(), "n_target_classes": self.n_target_classes}

    def _targets(self, clean: torch.Tensor, labels: torch.Tensor) -> list[torch.Tensor | None]:
        if clean.shape[1] <= 2:
            other = 1 - labels if clean.shape[1] == 1 else clean.argsort(dim=1)[:, 0]
            return [other.long()]
        # rank 0 is the label for a correctly classified image; ranks 1..k are the targets
        order = clean.argsort(dim=1, descending=True)
        k = min(self.n_target_classes, clean.shape[1] - 1)
        return [order[:, r] for r in range(1, k + 1)]
