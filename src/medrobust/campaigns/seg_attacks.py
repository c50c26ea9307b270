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


#: per attack: the field that holds an image's own budget, and the result's iteration count
#: (ASMA: the step that produced the returned image; PGD/IFGSM: the steps taken)
_FIELDS: dict[type, tuple[str, str]] = {ASMA: ("eps_l2", "iteration"), PGD: ("eps", "steps")}


def attack_fn(attack: ASMA | PGD, budgets: dict[int, float] | None = None) -> AttackFn:
    """An ``AttackFn`` running ASMA or PGD/IFGSM (with per-image L2 budgets when given)."""
    field, count = _FIELDS[ASMA if isinstance(attack, ASMA) else PGD]

    def fn(x: torch.Tensor, goal: torch.Tensor, keys: list[int]
           ) -> tuple[torch.Tensor, torch.Tensor]:
        res = _budgeted(attack, field, budgets, keys)(x, goal, keys=keys)
        return res.adversarial, getattr(res, count)

    fn.source = (attack, budgets)  # type: ignore[attr-defined]  # its recipe, for Ray workers
    return fn
