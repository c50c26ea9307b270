"""The inner attacks of robust training: batched L2 PGD inside each sample's own budget.

Why eval mode: the network runs in eval mode during every inner attack (the authors keep train
mode for their margin and VAT attacks, eval for TEAT). In train mode batch-norm normalises with
the batch's own statistics, so a sample's gradient, its "correct" checks and hence its margin
would depend on which other samples share its batch, and the attack passes would move the
running statistics. Eval mode makes each sample's attack a function of (weights, sample, seed,
epoch) only; the training forward passes that follow run in train mode as usual.

Why seeded per dataset index and epoch: the random start of sample i in epoch e comes from its
own stream (``projection.random_start`` keyed by i, seed derived from (seed, e)), so results do
not depend on batch composition or order.

Cost: ``steps`` forward/backward passes, plus one forward without gradients for the final
iterate's check (the 21st of adaptive margins); nothing is recomputed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from medrobust.attacks.projection import (
    ascent_direction,
    clip_box,
    enforce_budget,
    flat_norm,
    project,
    random_start,
)
from medrobust.utils.seeding import numpy_rng

#: (outputs) -> (per-sample loss to maximise (N,), per-sample "correct" (N,) bool or None)
Score = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]


def attack_seed(seed: int, epoch: int) -> int:
    """The seed of epoch ``epoch``'s inner attacks (random starts keyed by dataset index)."""
    return int(numpy_rng(int(seed), 0x5EED, int(epoch)).integers(2**62))


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode inside, the previous mode restored after (see the module doc for why)."""
    was = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was)


def _view(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * (like.ndim - 1)))


def ascend(model: nn.Module, x0: torch.Tensor, delta: torch.Tensor, score: Score
           ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """One forward/backward at ``x0 + delta``: (gradient of the summed score, correct, loss)."""
    adv = (x0 + delta).requires_grad_(True)
    with torch.enable_grad():
        loss, correct = score(model(adv))
        (grad,) = torch.autograd.grad(loss.sum(), adv)
    return grad, correct, loss.detach()


@dataclass
class MarginAttack:
    """What one margin attack gives back, per sample."""

    #: the final iterate, inside the sample's L2 ball and [0,1] (float32-exact)
    adversarial: torch.Tensor
    #: achieved ||adversarial - x||_2 (with ``refine``: of the boundary point for failed samples)
    norms: torch.Tensor
    #: correct at every check (the random start, each PGD iterate, the final one)
    always_correct: torch.Tensor
    #: how many checks were run per sample (steps + 1)
    checks: int
    #: the point the noisy loss is computed on: the final iterate, or with ``refine`` the
    #: boundary point of each sample that failed (the authors' landmark code trains there)
    noisy: torch.Tensor


def margin_pgd(model: nn.Module, x0: torch.Tensor, score: Score, eps: torch.Tensor, *,
               delta: float, alpha: float, steps: int, seed: int, keys: Sequence[int],
               refine: bool = False, refine_steps: int = 10) -> MarginAttack:
    """L2 PGD of adaptive margins: budget eps(i), step alpha * eps(i) / steps, per-sample
    normalised gradients, a random start drawn uniformly in the L2 ball of radius
    max(eps(i) - D, D) (keyed by dataset index) then projected into eps(i) and the [0,1] box;
    ``score(outputs)`` gives the loss to maximise and the correct flags. The clean point counts
    as the last correct iterate of a sample that fails already at its random start.

    With ``refine`` each sample that failed a check is bisected (``refine_steps`` forwards,
    no gradients) between its last correct iterate and its first wrong one, and its norm is
    that of the last correct bisection point, so margins can shrink to the boundary; that point
    is also the sample's ``noisy`` point (the authors' landmark code trains on the bisected
    point: the noisy loss then sits at the edge of what the sample withstands rather than past
    it). Samples that never failed train on the final iterate either way.
    """
    x0 = x0.detach()
    eps = eps.to(x0.device, torch.float32)
    step = alpha * eps / steps
    radius = torch.clamp(eps - delta, min=delta)
    with eval_mode(model):
        start = random_start(x0, radius, "l2", seed, keys)
        d = clip_box(x0, project(start, eps, "l2"))
        ok = torch.ones(x0.shape[0], dtype=torch.bool, device=x0.device)
        last_ok = torch.zeros_like(x0)
        first_bad = torch.zeros_like(x0)
        for _ in range(steps):
            grad, correct, _ = ascend(model, x0, d, score)
            assert correct is not None
            newly_bad = ok & ~correct.to(ok.device)
            first_bad = torch.where(_view(newly_bad, x0), d, first_bad)
            ok &= correct.to(ok.device)
            last_ok = torch.where(_view(ok, x0), d, last_ok)
            d = clip_box(x0, project(d + _view(step, x0) * ascent_direction(grad, "l2"), eps,
                                     "l2"))
        adv = enforce_budget(x0, x0 + d, eps, "l2")
        d = adv - x0
        with torch.no_grad():
            _, correct = score(model(adv))
        assert correct is not None
        newly_bad = ok & ~correct.to(ok.device)
        first_bad = torch.where(_view(newly_bad, x0), d, first_bad)
        ok &= correct.to(ok.device)
        norms = flat_norm(d, "l2")
        noisy = adv
        if refine and bool((~ok).any()):
            bad = (~ok).nonzero().flatten()
            lo, hi = last_ok[bad], first_bad[bad]
            xb = x0[bad]
            for _ in range(refine_steps):
                mid = (lo + hi) / 2
                with torch.no_grad():
                    _, good = _subset_score(score, model(xb + mid), bad)
                g = _view(good.to(x0.device), mid)
                lo, hi = torch.where(g, mid, lo), torch.where(g, hi, mid)
            norms = norms.clone()
            norms[bad] = flat_norm(lo, "l2")
            noisy = adv.clone()
            noisy[bad] = (xb + lo).clamp(0.0, 1.0)  # a convex mix of boxed points: rounding only
    return MarginAttack(adv.detach(), norms.detach(), ok.cpu(), steps + 1, noisy.detach())


def _subset_score(score: Score, outputs: torch.Tensor, rows: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Score a subset of the batch: the score closes over the whole batch's targets, so it is
    rescoped to the rows the outputs belong to (``score.subset(rows)``)."""
    subset = getattr(score, "subset", None)
    if subset is None:
        raise TypeError("margin refinement needs a score with a .subset(rows) method")
    loss, correct = subset(rows)(outputs)
    assert correct is not None
    return loss, correct


def keyed_normal(like: torch.Tensor, std: float, seed: int, keys: Sequence[int]) -> torch.Tensor:
    """std * N(0, 1) noise shaped like ``like``, one seeded stream per key (TEAT's start)."""
    out = torch.empty_like(like)
    for i, key in enumerate(keys):
        g = torch.Generator().manual_seed(int(numpy_rng(seed, int(key)).integers(2**62)))
        out[i] = (torch.randn(like[i].shape, generator=g) * std).to(out.device)
    return out


def fixed_l2_pgd(model: nn.Module, x0: torch.Tensor, score: Score, eps: float, *, steps: int,
                 step: float, start: torch.Tensor) -> torch.Tensor:
    """L2 PGD at one budget from a given start (TEAT's attack): normalised-gradient steps,
    projection into the ball and [0,1]; the result holds the budget exactly."""
    x0 = x0.detach()
    e = torch.full((x0.shape[0],), float(eps), device=x0.device)
    with eval_mode(model):
        d = clip_box(x0, project(start, e, "l2"))
        for _ in range(steps):
            grad, _, _ = ascend(model, x0, d, score)
            d = clip_box(x0, project(d + step * ascent_direction(grad, "l2"), e, "l2"))
    return enforce_budget(x0, x0 + d, e, "l2").detach()
