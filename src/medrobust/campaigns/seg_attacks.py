"""What a segmentation campaign runs: ``AttackFn``, an attack as ``fn(x, goal, keys) ->
(adversarial, iterations)``, built from ASMA or PGD/IFGSM with optional per-image L2 budgets (the
ablation matches every variant to the reference's own L2)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch

from medrobust.attacks.asma import ASMA
from medrobust.attacks.pgd import PGD

AttackFn = Callable[[torch.Tensor, torch.Tensor, list[int]], tuple[torch.Tensor, torch.Tensor]]


def _budgeted(attack: Any, field: str, budgets: dict[int, float] | None, keys: list[int]) -> Any:
    """``attack`` itself, or a copy whose budget ``field`` holds each image's own budget."""
    if budgets is None:
        return attack
    att = copy.copy(attack)
    setattr(att, field, [budgets[k] for k in keys])
    return att


def asma_fn(attack: ASMA, budgets: dict[int, float] | None = None) -> AttackFn:
    """An ``AttackFn`` running ``attack`` (with per-image L2 budgets when given)."""

    def fn(x: torch.Tensor, goal: torch.Tensor, keys: list[int]
           ) -> tuple[torch.Tensor, torch.Tensor]:
        res = _budgeted(attack, "eps_l2", budgets, keys)(x, goal, keys=keys)
        return res.adversarial, res.iteration

    fn.source = (attack, budgets)  # type: ignore[attr-defined]  # its recipe, for Ray workers
    return fn


def gradient_fn(attack: PGD, budgets: dict[int, float] | None = None) -> AttackFn:
    """An ``AttackFn`` running PGD/IFGSM (with per-image budgets when given)."""

    def fn(x: torch.Tensor, goal: torch.Tensor, keys: list[int]
           ) -> tuple[torch.Tensor, torch.Tensor]:
        res = _budgeted(attack, "eps", budgets, keys)(x, goal, keys=keys)
        return res.adversarial, res.steps

    fn.source = (attack, budgets)  # type: ignore[attr-defined]  # its recipe, for Ray workers
    return fn
