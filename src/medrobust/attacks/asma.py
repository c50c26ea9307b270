"""ASMA, the adaptive segmentation mask attack (Ozbulak et al., MICCAI 2019), batched.

From the authors' code (METHODS.md section 5):

* adaptive mask loss L(X) = sum over classes c and pixels of logit_c(X) * [target = c] *
  [prediction != c] on raw logits, summed (the static variant drops [prediction != c], so
  pixels that already show the target keep pulling the gradient);
* distance term D = sum (X - X0)^2;
* update X <- clip(X + m * grad(L - D), 0, 1), a raw gradient step;
* dynamic perturbation multiplier m_0 = tau, after each step m = beta * IoU(prediction, target)
  + tau (foreground IoU), so steps grow once most pixels are right and the rest are the hard
  ones. Paper defaults: tau = 1e-7, beta = 1e-6, 2,501 iterations (572x572 U-Net).

Those constants are tied to the raw logit scale and the number of pixels: they do nothing on
small images in hundreds of steps. ``normalize`` makes the step scale-free: the gradient of L is
normalised per image (``sign``, ``linf`` = g / max|g|, ``l2`` = g / ||g||_2 * sqrt(pixels), each a
step of about m per pixel) and the distance gradient 2 (X - X0) is added unnormalised with weight
``distance_weight``, so D acts as a decay of m * 2 * distance_weight per step on the perturbation
whatever the model's logit scale. Then tau and beta are pixel-step sizes on the [0,1] scale and
one setting works across image sizes and models. ``eps`` / ``eps_l2`` optionally keep every
iterate inside a Linf / L2 ball (per image allowed; the ablation uses this to match L2).

The best iterate is tracked per image: highest target IoU, ties to the smaller L2 (the clean
image is iterate 0, so the result is never worse than doing nothing).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from medrobust.attacks.base import (
    Attack,
    AttackProgress,
    as_image_batch,
    model_device,
    output_device,
)
from medrobust.attacks.criteria import foreground_iou
from medrobust.attacks.projection import (
    Budget,
    budget_param,
    clip_box,
    enforce_budget,
    flat_norm,
    per_sample,
    plain_budget,
    project,
)
from medrobust.attacks.result import AttackResult
from medrobust.errors import ConfigError
from medrobust.utils.validation import check_choice, check_range

MASKS = ("adaptive", "static")
NORMALIZE = (None, "sign", "linf", "l2")

#: The authors' constants, for ``normalize=None`` on a 572x572 U-Net (see the module docstring).
PAPER_TAU = 1e-7
PAPER_BETA = 1e-6
PAPER_ITERATIONS = 2501
PAPER_DISTANCE_WEIGHT = 1.0
#: D's weight with a normalised step (see the class docstring for why it is not 1).
DISTANCE_WEIGHT = 0.1


def mask_loss(logits: torch.Tensor, target: torch.Tensor, adaptive: bool = True) -> torch.Tensor:
    """(N,) ASMA loss: target-class logits summed over the pixels the mask selects.

    ``adaptive``: only pixels whose current prediction is not yet the target class count.
    The prediction is taken from ``logits`` without gradient (it is an indicator).
    """
    if logits.ndim != 4 or tuple(target.shape) != (logits.shape[0], *logits.shape[2:]):
        raise ConfigError(f"mask loss: logits must be (N,K,H,W) and target (N,H,W); got "
                          f"{tuple(logits.shape)} and {tuple(target.shape)}")
    t = target.long()
    chosen = logits.gather(1, t.unsqueeze(1)).squeeze(1)  # logit of the target class per pixel
    if adaptive:
        wrong = logits.detach().argmax(dim=1) != t
        chosen = chosen * wrong
    return chosen.flatten(1).sum(dim=1)


def distance(x: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """(N,) D = sum (X - X0)^2 per image."""
    return (x - x0).flatten(1).pow(2).sum(dim=1)


def multiplier(iou: torch.Tensor, tau: float, beta: float) -> torch.Tensor:
    """The dynamic perturbation multiplier after a step: beta * IoU + tau."""
    return beta * iou + tau


class ASMA(Attack):
    """Adaptive segmentation mask attack towards per-image target masks.

    Parameters
    ----------
    model: any module mapping float [0,1] (N,C,H,W) to (N,K,H,W) logits (a ``Segmenter``).
    iterations: gradient steps (paper: 2,501).
    tau, beta: the multiplier m = beta * IoU + tau (m_0 = tau). With ``normalize`` they are
        pixel-step sizes on the [0,1] scale; with ``normalize=None`` raw-gradient factors as in
        the paper (PAPER_TAU, PAPER_BETA).
    mask: ``adaptive`` (paper) or ``static`` (every target pixel, the SSM baseline).
    dynamic: use the multiplier schedule; False keeps m = tau for every step.
    distance_weight: weight of D; default 1 (the paper) for ``normalize=None`` and 0.1 with a
        normalised step, where D's gradient is compared with a unit step: weight w lets a pixel
        whose normalised gradient is g settle at a perturbation of g / (2 w), so 1 pins every
        pixel whose gradient is not the largest close to the original (on DSB2018 ASMA then
        stalls near target IoU 0.87), while 0.1 still keeps unhelpful pixels small.
    normalize: None (paper: raw gradient), ``sign``, ``linf`` or ``l2`` (see the module doc).
    eps, eps_l2: optional Linf / L2 radius of the perturbation, a number or one per image.
    stop_iou: freeze an image once its target IoU reaches this (None: run every step, which
        lets D shrink the perturbation of images that are already done).
    batch_size: images per forward/backward pass.
    progress: show a bar on stderr that moves every iteration (``Attack``; ``run``'s
        ``show_progress`` does it for one call).

    Defaults (``normalize="linf"``, tau = 2e-3, beta = 1e-2, distance weight 0.1, 200
    iterations, eps = 0.1): chosen on DSB2018 at 128x128 (benchmarks/segmentation_asma.py),
    where they reach mean target IoU >= 0.9 towards other images' masks within Linf 0.1. The
    Linf-normalised step moves the pixel with the largest gradient by m and the others in
    proportion, which concentrates the change where it matters (lower L2 than sign or L2 steps
    at the same IoU); m grows from 0.002 to 0.012 per step as the IoU rises, so 200 steps can
    cross the 0.1 ball several times.
    """

    name = "asma"

    def __init__(self, model: nn.Module, iterations: int = 200, tau: float = 2e-3,
                 beta: float = 1e-2, mask: str = "adaptive", dynamic: bool = True,
                 distance_weight: float | None = None, normalize: str | None = "linf",
                 eps: Budget | None = 0.1, eps_l2: Budget | None = None,
                 stop_iou: float | None = None, batch_size: int = 16, seed: int = 0,
                 progress: bool = False) -> None:
        super().__init__(model, seed, progress)
        self.iterations = int(check_range("iterations", iterations, 1))
        self.tau = float(check_range("tau", tau, 0.0))
        self.beta = float(check_range("beta", beta, 0.0))
        self.mask = check_choice("mask", mask, MASKS)
        self.dynamic = bool(dynamic)
        self.normalize = check_choice("normalize", normalize, NORMALIZE)
        if distance_weight is None:
            distance_weight = PAPER_DISTANCE_WEIGHT if normalize is None else DISTANCE_WEIGHT
        self.distance_weight = float(check_range("distance_weight", distance_weight, 0.0))
        self.eps = budget_param("eps", eps, "linf")
        self.eps_l2 = budget_param("eps_l2", eps_l2)
        # IoU 0 is reached by any mask: a stop there would end every attack before its first step.
        self.stop_iou = None if stop_iou is None else float(
            check_range("stop_iou", stop_iou, 0, 1, low_inclusive=False))
        self.batch_size = int(check_range("batch_size", batch_size, 1))

    def params(self) -> dict[str, Any]:
        return {"attack": self.name, "iterations": self.iterations, "tau": self.tau,
                "beta": self.beta, "mask": self.mask, "dynamic": self.dynamic,
                "distance_weight": self.distance_weight, "normalize": self.normalize,
                "eps": plain_budget(self.eps), "eps_l2": plain_budget(self.eps_l2),
                "stop_iou": self.stop_iou,
                "seed": self.seed}

    def run(self, images: Any, labels: Any, keys: Sequence[int] | None = None,
            history: bool = False, show_progress: bool = False, **kwargs: Any) -> AttackResult:
        """Attack ``images`` (pixel space, torch (N,C,H,W) or NumPy (N,H,W,C)) towards target
        masks ``labels`` (N,H,W); returns the best iterate per image.

        Extras per image: ``target_iou`` and ``clean_iou`` (foreground IoU with the target),
        ``iteration`` (the step that produced it, 0 = the clean image), ``l2`` and ``linf``;
        ``history`` (when asked for) holds ``iou`` (T+1, N) of every iterate and ``multiplier``
        (T, N) of every step. ``success`` is target IoU >= ``stop_iou`` when one is set.
        ASMA draws no random numbers: ``keys`` is accepted for the common interface and
        ignored."""
        device = model_device(self.model)
        x = as_image_batch(images, device)
        n = x.shape[0]
        target = torch.as_tensor(labels).to(device).long()
        if tuple(target.shape) != (n, *x.shape[-2:]):
            raise ConfigError(f"target masks must be (N,H,W) = {(n, *x.shape[-2:])}, got "
                              f"{tuple(target.shape)}")
        inf = torch.full((n,), float("inf"), device=device)
        eps = inf if self.eps is None else per_sample(self.eps, n, device, "eps")
        eps_l2 = inf if self.eps_l2 is None else per_sample(self.eps_l2, n, device, "eps_l2")
        parts = []
        with self.progress_bar(n, "ASMA", show=show_progress) as bar:
            for s in range(0, n, self.batch_size):
                e = min(s + self.batch_size, n)
                parts.append(self._attack(x[s:e], target[s:e], eps[s:e], eps_l2[s:e], history,
                                          bar))
                bar.settle(e - s)
        out = {k: torch.cat([p[k] for p in parts]) for k in parts[0] if k != "history"}
        hist = {}
        if history:
            hist = {k: torch.cat([p["history"][k] for p in parts], dim=1)
                    for k in parts[0]["history"]}
        success = None if self.stop_iou is None else (out["target_iou"] >= self.stop_iou).cpu()
        extras = {k: out[k] for k in ("target_iou", "clean_iou", "iteration", "l2", "linf")}
        return AttackResult(out["adversarial"].to(output_device(images, device)), success=success,
                            steps=out["steps"], extras={**extras,
                                                                         "history": hist})

    # -- one batch --------------------------------------------------------------------------------

    def _direction(self, x: torch.Tensor, x0: torch.Tensor, target: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """(update direction, foreground IoU of the prediction at ``x``)."""
        adaptive = self.mask == "adaptive"
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = self.model(x)
            gain = mask_loss(logits, target, adaptive)
            if self.normalize is None:
                objective = gain - self.distance_weight * distance(x, x0)
                (grad,) = torch.autograd.grad(objective.sum(), x)
            else:
                (grad,) = torch.autograd.grad(gain.sum(), x)
        iou = foreground_iou(logits.detach().argmax(dim=1), target).to(x.dtype)
        if self.normalize is None:
            return grad, iou
        view = (-1, *([1] * (x.ndim - 1)))
        if self.normalize == "sign":
            unit = grad.sign()
        elif self.normalize == "linf":
            unit = grad / flat_norm(grad, "linf").clamp_min(1e-20).view(view)
        else:
            scale = flat_norm(grad, "l2").clamp_min(1e-20) / float(x[0].numel()) ** 0.5
            unit = grad / scale.view(view)
        return unit - self.distance_weight * 2 * (x.detach() - x0), iou

    def _project(self, x0: torch.Tensor, x: torch.Tensor, eps: torch.Tensor,
                 eps_l2: torch.Tensor) -> torch.Tensor:
        delta = x - x0
        if bool(torch.isfinite(eps_l2).any()):
            delta = project(delta, torch.where(torch.isfinite(eps_l2), eps_l2,
                                               torch.full_like(eps_l2, 1e30)), "l2")
        if bool(torch.isfinite(eps).any()):
            delta = project(delta, torch.where(torch.isfinite(eps), eps,
                                               torch.full_like(eps, 1e30)), "linf")
        return x0 + clip_box(x0, delta)

    def _finish(self, x0: torch.Tensor, x: torch.Tensor, eps: torch.Tensor, eps_l2: torch.Tensor
                ) -> torch.Tensor:
        big = torch.full_like(eps, 1e30)
        if bool(torch.isfinite(eps_l2).any()):
            x = enforce_budget(x0, x, torch.where(torch.isfinite(eps_l2), eps_l2, big), "l2")
        if bool(torch.isfinite(eps).any()):
            x = enforce_budget(x0, x, torch.where(torch.isfinite(eps), eps, big), "linf")
        return x.clamp(0.0, 1.0)

    def _attack(self, x0: torch.Tensor, target: torch.Tensor, eps: torch.Tensor,
                eps_l2: torch.Tensor, history: bool, bar: AttackProgress) -> dict[str, Any]:
        n = x0.shape[0]
        view = (-1, *([1] * (x0.ndim - 1)))
        x = x0.clone()
        best_x = x0.clone()
        best_iou = torch.full((n,), -1.0, dtype=x0.dtype, device=x0.device)
        best_l2 = torch.zeros(n, dtype=x0.dtype, device=x0.device)
        best_it = torch.zeros(n, dtype=torch.long, device=x0.device)
        active = torch.ones(n, dtype=torch.bool, device=x0.device)
        taken = torch.zeros(n, dtype=torch.long, device=x0.device)
        m = torch.full((n,), self.tau, dtype=x0.dtype, device=x0.device)  # m_0 = tau
        ious, mults = [], []
        clean_iou = None
        for it in range(self.iterations + 1):
            last = it == self.iterations
            if last:
                with torch.no_grad():
                    pred = self.model(x).argmax(dim=1)
                iou = foreground_iou(pred, target).to(x0.dtype)
                direction = None
            else:
                direction, iou = self._direction(x, x0, target)
            if clean_iou is None:
                clean_iou = iou.clone()
            # Best-iterate tracking (iterate ``it`` is ``x``): higher IoU, ties to smaller L2.
            l2 = flat_norm(x - x0, "l2")
            better = active & ((iou > best_iou) | ((iou == best_iou) & (l2 < best_l2)))
            best_x = torch.where(better.view(view), x, best_x)
            best_iou = torch.where(better, iou, best_iou)
            best_l2 = torch.where(better, l2, best_l2)
            best_it = torch.where(better, torch.full_like(best_it, it), best_it)
            if history:
                ious.append(iou.detach().clone())
            if self.stop_iou is not None:
                active &= best_iou < self.stop_iou
            if last or not bool(active.any()):
                break
            if self.dynamic and it > 0:
                m = multiplier(iou, self.tau, self.beta)
            if history:
                mults.append(m.clone())
            stepped = self._project(x0, x + m.view(view) * direction, eps, eps_l2)
            x = torch.where(active.view(view), stepped, x).detach()
            taken += active.long()
            bar.advance(n / self.iterations)
        adv = self._finish(x0, best_x, eps, eps_l2)
        d = adv - x0
        out: dict[str, Any] = {
            "adversarial": adv, "target_iou": best_iou.cpu(), "clean_iou": clean_iou.cpu(),
            "iteration": best_it.cpu(), "l2": flat_norm(d, "l2").cpu(),
            "linf": flat_norm(d, "linf").cpu(), "steps": taken.cpu()}
        if history:
            out["history"] = {
                "iou": torch.stack(ious).cpu(),
                "multiplier": torch.stack(mults).cpu() if mults else torch.zeros(0, n)}
        return out
