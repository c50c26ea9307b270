"""Square attack on a task's own metric: the black-box member for dense tasks.

Why: every other member of the dense worst-case ensemble follows a gradient, so a model whose
gradients are broken (a non-differentiable filter, a quantiser, a saturated head) looks robust
to all of them at once. Random search (Andriushchenko et al. 2020) needs only forward passes,
and it can climb the metric users report (1 - Dice, radial error, 1 - image mAP:
``Task.image_damage``) directly, where gradient attacks climb a surrogate loss.

It is classification ``Square`` with another objective, through the same candidate functions
(``square.square_candidate``): AutoAttack's start (Linf stripes of +-eps, L2 pseudo-Gaussian
blocks at norm eps), then one random square window per query, its share of the image
following the paper's schedule rescaled to ``max_queries``. A candidate is kept when its damage
is at least the current one: the paper keeps only strict improvements of a continuous margin,
but task metrics are piecewise constant (a mask changes pixel by pixel), and accepting ties
lets the search drift across a plateau instead of stopping at its first point.

Queries: the clean image is query 1 (the search starts from whichever of the clean image and
the start is worse for the model); every forward pass counts, there is no early stop, and an
image never costs more than ``max_queries``. Everything runs under ``torch.no_grad``: the model
may have no gradient at all. Each image draws from its own counter-based stream (its
``key``), so its windows are the same alone or in any batch; budgets hold exactly on every
queried point (``projection.enforce_budget``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from medrobust.attacks.base import (
    Attack,
    AttackProgress,
    output_device,
    take_targets,
)
from medrobust.attacks.projection import NORMS, Budget, budget_param, plain_budget
from medrobust.attacks.result import AttackResult
from medrobust.attacks.square import linf_vertices, square_bases, square_candidate
from medrobust.errors import ConfigError
from medrobust.utils.validation import check_choice, check_range

#: ``damage(model, images, targets) -> (N,)``, higher worse for the model (``Task.image_damage``)
Damage = Callable[[nn.Module, torch.Tensor, Any], torch.Tensor]


def damage_name(damage: Damage) -> str:
    """A short name for provenance records: the function's module and name."""
    name = getattr(damage, "__qualname__", None) or getattr(damage, "__name__", None)
    module = getattr(damage, "__module__", None)
    if name is None:
        return repr(damage)
    return f"{module}.{name}" if module else str(name)


class DenseSquare(Attack):
    """Square attack maximising a per-image damage score, Linf or L2, with a query budget.

    Parameters
    ----------
    model: any module mapping float [0,1] (N,C,H,W) to outputs; only ``damage`` calls it.
    damage: ``damage(model, images, targets) -> (N,)``, higher worse (``Task.image_damage``).
    norm: ``linf`` or ``l2``.
    eps: the radius, a number or one per image of ``run``'s batch.
    max_queries: forward passes per image, the clean one included.
    p_init: the first window share of the image (AutoAttack: 0.8).
    batch_size: images queried together.
    progress: show a bar on stderr that moves every query (``Attack``).
    """

    name = "square"

    def __init__(self, model: nn.Module, damage: Damage, norm: str = "linf",
                 eps: Budget = 8 / 255, max_queries: int = 1000, p_init: float = 0.8,
                 batch_size: int = 64, seed: int = 0, progress: bool = False) -> None:
        super().__init__(model, seed, progress)
        if not callable(damage):
            raise ConfigError("damage must be a callable damage(model, images, targets) -> (N,)")
        self.damage = damage
        self.norm = check_choice("norm", norm, NORMS)
        self.eps = budget_param("eps", eps, self.norm)
        self.max_queries = int(check_range("max_queries", max_queries, 1))
        self.p_init = float(check_range("p_init", p_init, 0.0, 1.0, low_inclusive=False))
        self.batch_size = int(check_range("batch_size", batch_size, 1))

    @property
    def label(self) -> str:
        return self.name

    def params(self) -> dict[str, Any]:
        return {"attack": self.name, "damage": damage_name(self.damage), "norm": self.norm,
                "eps": plain_budget(self.eps), "max_queries": self.max_queries,
                "p_init": self.p_init, "seed": self.seed}

    def run(self, images: Any, labels: Any, keys: Sequence[int] | None = None,
            **kwargs: Any) -> AttackResult:
        """Attack ``images`` (pixel space: torch (N,C,H,W) or NumPy (N,H,W,C), uint8 or float)
        away from ``labels``, the targets ``damage`` scores against (one row per image, or a
        list with one entry per image when ragged). ``keys`` name each image's random stream
        (default 0..N-1). The result's ``queries`` are the forward passes each image cost;
        the extra ``damage`` (N,) float64 is the damage of the returned image as measured in
        its batch (images with eps 0 come back unchanged after one query)."""
        batch = self.target_batch(images, labels, keys, kwargs)
        device, x, target, keys, eps = batch.device, batch.x, batch.targets, batch.keys, batch.eps
        n = x.shape[0]
        out = x.clone()
        hurt = torch.zeros(n, dtype=torch.float64)
        queries = torch.zeros(n, dtype=torch.long)
        with self.progress_bar(n) as bar:
            for s in range(0, n, self.batch_size):
                e = min(s + self.batch_size, n)
                out[s:e], hurt[s:e], queries[s:e] = self._attack(x[s:e], target[s:e], eps[s:e],
                                                                 keys[s:e], bar)
                bar.settle(e - s)
        return AttackResult(out.to(output_device(images, device)), queries=queries,
                            extras={"damage": hurt})

    def _score(self, x: torch.Tensor, target: Any) -> torch.Tensor:
        """(m,) float64 damage on the CPU, its shape checked."""
        value = self.damage(self.model, x, target)
        value = torch.as_tensor(value).detach().to("cpu", torch.float64).reshape(-1)
        if value.shape != (x.shape[0],):
            raise ConfigError(f"damage must return one value per image ({x.shape[0]},), got "
                              f"{tuple(value.shape)}")
        return value

    @torch.no_grad()
    def _attack(self, x0: torch.Tensor, target: torch.Tensor | list[Any], eps: torch.Tensor,
                keys: list[int], bar: AttackProgress | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One batch: (adversarial, its damage, queries) per image."""
        n = x0.shape[0]
        bases = square_bases(self.seed, keys)
        queries = torch.ones(n, dtype=torch.long)
        hurt = self._score(x0, target)  # query 1: the clean image
        best = x0.clone()
        plus, minus = linf_vertices(x0, eps) if self.norm == "linf" else (x0, x0)
        idx = (eps > 0).nonzero().squeeze(1)
        if idx.numel() == 0:
            return best, hurt, queries
        ic = idx.cpu()
        sub = take_targets(target, idx)
        b = bases[ic.numpy()]
        x0s, es, ps, ms = x0[idx], eps[idx], plus[idx], minus[idx]
        cur, cur_hurt = best[idx], hurt[ic]
        # the same loop bounds as Square: the start (it = -1) and max_queries - 2 windows
        for it in range(-1, self.max_queries - 2):
            cand = square_candidate(self.norm, b, it, self.p_init, self.max_queries, x0s, es,
                                    ps, ms, cur)
            value = self._score(cand, sub)
            queries[ic] += 1
            keep = value >= cur_hurt  # ties move on: the metric is piecewise constant
            cur = torch.where(keep.to(cur.device).view(-1, 1, 1, 1), cand, cur)
            cur_hurt = torch.where(keep, value, cur_hurt)
            if bar is not None:  # each query is 1/max_queries of an image's budget
                bar.advance(idx.numel() / self.max_queries)
        best[idx], hurt[ic] = cur, cur_hurt
        return best, hurt, queries
