"""Which epoch a robust run keeps (``--keep``), and the cheap validation attack it is judged by.

Policies (``config.KEEP``): ``final`` keeps the last epoch, as the authors' code does (the
default of robust runs); ``best-clean`` keeps the best clean validation epoch (standard
training's rule, which never changes); ``best-robust`` keeps the epoch with the best validation
metric under the cheap attack below. The checkpoint records which epoch was kept and why.

The cheap attack (``ValAttack``): L2 PGD with 10 steps of 2.5 eps / 10 (Madry et al.'s step
rule) from a uniform random start in the ball, keyed by validation index and one seed for the
whole run (every epoch meets the same starts, so epochs differ only by their weights), in eval
mode, maximising the task's per-sample training loss, on the validation split. It runs at every
validated epoch under ``best-robust`` and at the final epoch of every robust run (the record of
what the kept weights withstand, and the score of ``--delta auto``'s candidates).

Its budget (``selection_budget``): ``--select-eps`` when given, else VAT's / TEAT's training
budget ``--eps``, else adaptive margins' ``--max-margin`` (the authors set the maximum margin to
the evaluation noise level), else the L2 budget whose per-pixel RMS is 2 grey levels for the
training images (about the usual CIFAR-10 L2 budget of 0.5, 2.3 grey levels).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from medrobust.attacks.projection import random_start
from medrobust.training.robust.budget import l2_from_rms_255, rms_255
from medrobust.training.robust.config import RobustConfig
from medrobust.training.robust.inner import Score, fixed_l2_pgd
from medrobust.utils.seeding import numpy_rng

#: the cheap attack's steps and step factor (step = VAL_STEP_FACTOR * eps / VAL_STEPS)
VAL_STEPS = 10
VAL_STEP_FACTOR = 2.5
#: the default budget without --select-eps, --eps or --max-margin: per-pixel RMS in 1/255
DEFAULT_RMS_255 = 2.0


def selection_budget(config: RobustConfig, shape: Sequence[int]) -> tuple[float, str]:
    """(the cheap attack's L2 budget on the [0,1] scale, where it comes from): see the module
    doc. ``shape`` is the training images' (C,H,W)."""
    if config.select_eps is not None:
        return float(config.select_eps), "--select-eps"
    if config.eps is not None:
        return float(config.eps), "the training budget --eps"
    if config.max_margin is not None:
        return float(config.max_margin), "--max-margin (the authors' evaluation noise level)"
    return (l2_from_rms_255(DEFAULT_RMS_255, shape),
            f"per-pixel RMS of {DEFAULT_RMS_255:g} grey levels (no --select-eps, --eps or "
            "--max-margin)")


def val_attack_seed(seed: int) -> int:
    """One seed for all of a run's validation attacks (independent of the epoch)."""
    return int(numpy_rng(int(seed), 0x7A1, 0).integers(2**62))


@dataclass(frozen=True)
class ValAttack:
    """The cheap validation attack (module doc) at one L2 budget."""

    eps: float
    seed: int
    source: str
    shape: tuple[int, ...]
    steps: int = VAL_STEPS

    @property
    def step(self) -> float:
        return VAL_STEP_FACTOR * self.eps / self.steps

    def __call__(self, model: nn.Module, x: torch.Tensor, score: Score,
                 keys: Sequence[int]) -> torch.Tensor:
        """Adversarial versions of the [0,1] batch ``x`` (``keys``: validation indices)."""
        x = x.detach()
        start = random_start(x, torch.full((x.shape[0],), self.eps, device=x.device), "l2",
                             self.seed, keys)
        return fixed_l2_pgd(model, x, score, self.eps, steps=self.steps, step=self.step,
                            start=start)

    def run(self, model: nn.Module, batches: Iterable[tuple[torch.Tensor, Any, Sequence[int]]],
            score: Any) -> torch.Tensor:
        """All adversarial images (on the CPU) of ``(x, targets, keys)`` batches, each attacked
        with ``score(targets)`` (a ``TermScore`` builder)."""
        out = [self(model, x, score(t), keys).cpu() for x, t, keys in batches]
        return torch.cat(out)

    def describe(self) -> dict[str, Any]:
        return {"attack": "pgd", "norm": "l2", "eps": self.eps,
                "rms_255": rms_255(self.eps, self.shape), "budget_from": self.source,
                "steps": self.steps, "step": self.step, "random_start": "uniform in the ball, "
                "keyed by validation index, one seed per run", "model_mode": "eval",
                "loss": "the task's per-sample training loss", "split": "val"}

    def text(self) -> str:
        return f"PGD-{self.steps} L2 eps {self.eps:.4g} on the validation split"


@dataclass(frozen=True)
class Selection:
    """What the epoch loop needs to keep an epoch: the policy, what the clean key orders by
    (words for the record) and the cheap attack (None: no attacked validation)."""

    policy: str
    clean: str
    attack: ValAttack | None = None

    def attack_due(self, final: bool) -> bool:
        """Whether an epoch is validated under attack: every one under best-robust, else the
        final one (the record of what the kept weights withstand)."""
        return self.attack is not None and (final or self.policy == "best-robust")

    def why(self) -> str:
        if self.policy == "final":
            return "the final epoch (--keep final, as the authors' code keeps)"
        if self.policy == "best-clean":
            return f"the best clean validation epoch by {self.clean} (--keep best-clean)"
        assert self.attack is not None
        return (f"the best validation epoch under {self.attack.text()} by {self.clean} "
                "(--keep best-robust)")


def selection_for(config: RobustConfig | None, clean: str, shape: Sequence[int], seed: int
                  ) -> Selection | None:
    """The ``Selection`` of a robust run (None for standard training, whose rule is fixed)."""
    if config is None or not config.active:
        return None
    eps, source = selection_budget(config, shape)
    return Selection(config.keep, clean, ValAttack(eps, val_attack_seed(seed), source,
                                                   tuple(int(v) for v in shape)))
