"""The training objectives behind one interface, used by all four trainers.

A trainer describes its loss once (``LossSpec``: its own batch criterion, the per-sample loss
terms, the output heads, the "correct" rule) and asks the objective for each batch's loss:
``objective.loss(model, x, targets, idx)`` with ``model`` the pixel-space wrapper (normalisation
stays inside it, so noise is added to [0,1] pixels after augmentation), ``x`` the augmented
batch, ``targets`` whatever the trainer's loss takes, ``idx`` the dataset indices.

- ``standard``: the trainer's loss on the clean batch.
- ``vat``: Madry PGD training at one fixed L2 eps; the adversary is ``medrobust.attacks.PGD``
  itself (L2, random start, ``steps`` steps of alpha * eps / steps). Loss on the adversarial
  batch only (``vat_clean_weight`` 0: Madry and the authors' stored segmentation code).
- ``teat``: temporal ensembling (``teat.py``); its L2 PGD (``steps`` 10, step eps / 4, start
  0.001 N(0,1)) also maximises the penalty; loss on the adversarial batch only.
- ``adaptive-margin``: PGD inside each sample's margin (``inner.margin_pgd``), loss
  0.5 L0 (clean) + 0.5 L1 (noisy), margins updated at the epoch end (``margins.py``). L1 is
  computed on the final inner iterate, or with ``refine`` on the bisected boundary point of
  each sample that failed (the authors' landmark code; ``inner.margin_pgd``).

Every inner attack runs in eval mode (``inner.py`` says why) and is seeded by (seed, epoch,
dataset index). Objectives carry their state (margins, ensembles, xi) in ``state_dict`` for
resuming, ``end_epoch`` gives a row for the training history and ``finish`` the warnings
about the whole run (adaptive margins that never moved beyond D).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medrobust.errors import ConfigError
from medrobust.training.robust.config import RobustConfig
from medrobust.training.robust.criteria import DiceRule, LossRule, Rule, hard_dice, has_foreground
from medrobust.training.robust.inner import (
    MarginAttack,
    attack_seed,
    eval_mode,
    fixed_l2_pgd,
    keyed_normal,
    margin_pgd,
)
from medrobust.training.robust.margins import Margins, MarginsNeverMoved, never_moved
from medrobust.training.robust.teat import TemporalEnsemble, sigmoid_ramp
from medrobust.training.robust.xi import calibrate_xi

Terms = Mapping[str, torch.Tensor]
#: where adaptive margins are written in a checkpoint folder
MARGINS_FILE = "margins.safetensors"


def take(targets: Any, rows: torch.Tensor) -> Any:
    """The targets of batch positions ``rows``: tensors are indexed, mappings and tuples taken
    element-wise, lists (ragged per-image targets) picked."""
    if isinstance(targets, torch.Tensor):
        return targets[rows.to(targets.device)]
    if isinstance(targets, Mapping):
        return {k: take(v, rows) for k, v in targets.items()}
    if isinstance(targets, tuple):
        return tuple(take(v, rows) for v in targets)
    if isinstance(targets, list):
        return [targets[int(i)] for i in rows]
    raise TypeError(f"cannot select rows of targets of type {type(targets).__name__}")


def whole_output(outputs: torch.Tensor) -> list[torch.Tensor]:
    """One head: the whole output per sample."""
    return [outputs]


@dataclass
class LossSpec:
    """How a trainer's batch becomes losses.

    terms: per-sample loss terms {name: (N,), ..., "total": (N,)} of (outputs, targets).
    criterion: the trainer's batch loss (a scalar) of (outputs, targets); None = mean of total.
    heads: split outputs into the heads TEAT ensembles (default: the whole output).
    rule: "loss" (xi on each loss term) or "dice" (segmentation's Dice rule).
    """

    terms: Callable[[torch.Tensor, Any], Terms]
    criterion: Callable[[torch.Tensor, Any], torch.Tensor] | None = None
    heads: Callable[[torch.Tensor], list[torch.Tensor]] = field(default=whole_output)
    rule: str = "loss"

    def batch_loss(self, outputs: torch.Tensor, targets: Any) -> tuple[torch.Tensor, Terms | None]:
        """The scalar loss, and the per-sample terms when they were computed for it."""
        if self.criterion is not None:
            return self.criterion(outputs, targets), None
        terms = self.terms(outputs, targets)
        return terms["total"].mean(), terms


class TermScore:
    """What an inner attack maximises (the per-sample ``total``, plus ``extra``) and, with a
    rule, whether each sample is still correct; ``subset`` rescopes it to some rows."""

    def __init__(self, spec: LossSpec, targets: Any, rule: Rule | None = None,
                 extra: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        self.spec, self.targets, self.rule, self.extra = spec, targets, rule, extra

    def __call__(self, outputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        terms = self.spec.terms(outputs, self.targets)
        loss = terms["total"]
        if self.extra is not None:
            loss = loss + self.extra(outputs)
        correct = None if self.rule is None else self.rule(outputs, self.targets, terms)
        return loss, correct

    def subset(self, rows: torch.Tensor) -> TermScore:
        if self.extra is not None:
            raise TypeError("a score with an extra term cannot be rescoped")
        return TermScore(self.spec, take(self.targets, rows), self.rule)


class Objective:
    """Standard training; the base of the robust objectives (see the module doc)."""

    name = "none"

    def __init__(self, spec: LossSpec, config: RobustConfig, n_train: int, epochs: int,
                 seed: int) -> None:
        self.spec, self.config = spec, config
        self.n_train, self.epochs, self.seed = int(n_train), int(epochs), int(seed)
        self.epoch = 1

    @property
    def needs_calibration(self) -> bool:
        return False

    def begin_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def loss(self, model: nn.Module, x: torch.Tensor, targets: Any, idx: torch.Tensor
             ) -> tuple[torch.Tensor, Terms | None]:
        return self.spec.batch_loss(model(x), targets)

    def end_epoch(self) -> dict[str, Any]:
        return {}

    def finish(self, history: list[dict[str, Any]]) -> list[Warning]:
        """Warnings about the finished run, from its history rows (the loop issues them)."""
        return []

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def describe(self) -> dict[str, Any]:
        return {"method": self.name, **self.config.as_dict()}

    def save(self, folder: str | Path) -> dict[str, Any]:
        """Write the objective's artefacts into the output folder (adaptive margins:
        ``margins.safetensors``); returns its description for the checkpoint metadata."""
        Path(folder).mkdir(parents=True, exist_ok=True)
        return self.describe()


class VAT(Objective):
    """Madry et al.'s PGD training at one fixed L2 budget (the adversary is medrobust's PGD)."""

    name = "vat"

    def adversary(self, model: nn.Module, targets: Any, n: int) -> Any:
        """The ``medrobust.attacks.PGD`` this epoch uses (its loss reads the batch's targets by
        position, so any target layout works)."""
        from medrobust.attacks.pgd import PGD

        spec = self.spec

        def loss(outputs: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            full = rows.numel() == n and bool((rows.cpu() == torch.arange(n)).all())
            return spec.terms(outputs, targets if full else take(targets, rows))["total"]

        eps = float(self.config.eps)  # type: ignore[arg-type]
        steps = self.config.inner_steps
        return PGD(model, loss=loss, norm="l2", eps=eps, step=self.config.alpha * eps / steps,
                   steps=steps, random_start=True, seed=attack_seed(self.seed, self.epoch),
                   batch_size=max(n, 1))

    def adversarial(self, model: nn.Module, x: torch.Tensor, targets: Any, idx: torch.Tensor
                    ) -> torch.Tensor:
        n = x.shape[0]
        with eval_mode(model):
            res = self.adversary(model, targets, n)(x.detach(), torch.arange(n),
                                                    keys=[int(i) for i in idx])
        return res.adversarial.detach()

    def loss(self, model: nn.Module, x: torch.Tensor, targets: Any, idx: torch.Tensor
             ) -> tuple[torch.Tensor, Terms | None]:
        adv = self.adversarial(model, x, targets, idx)
        loss, terms = self.spec.batch_loss(model(adv), targets)
        w = self.config.vat_clean_weight
        if w > 0:
            clean, _ = self.spec.batch_loss(model(x), targets)
            loss = (1 - w) * loss + w * clean
        return loss, terms


class TEAT(Objective):
    """Temporal-ensembling adversarial training (see ``teat.py``)."""

    name = "teat"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ensemble = TemporalEnsemble(self.n_train, self.config.teat_momentum)
        self.weight = 0.0

    def begin_epoch(self, epoch: int) -> None:
        super().begin_epoch(epoch)
        self.weight = self.config.teat_weight * sigmoid_ramp(epoch, self.epochs)

    def penalty(self, idx: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
        return self.ensemble.penalty(idx, self.spec.heads(outputs))

    def adversarial(self, model: nn.Module, x: torch.Tensor, targets: Any, idx: torch.Tensor
                    ) -> torch.Tensor:
        eps = float(self.config.eps)  # type: ignore[arg-type]
        keys = [int(i) for i in idx]
        seed = attack_seed(self.seed, self.epoch)
        w = self.weight
        extra = (lambda out: w * self.penalty(idx, out)) if w > 0 else None
        start = keyed_normal(x, 0.001, seed, keys)
        return fixed_l2_pgd(model, x, TermScore(self.spec, targets, extra=extra), eps,
                            steps=self.config.inner_steps, step=eps / 4, start=start)

    def loss(self, model: nn.Module, x: torch.Tensor, targets: Any, idx: torch.Tensor
             ) -> tuple[torch.Tensor, Terms | None]:
        adv = self.adversarial(model, x, targets, idx)
        out = model(adv)
        loss, terms = self.spec.batch_loss(out, targets)
        if self.weight > 0:
            loss = loss + self.weight * self.penalty(idx, out).mean()
        self.ensemble.update(idx, self.spec.heads(out))
        return loss, terms

    def end_epoch(self) -> dict[str, Any]:
        return {"teat_weight": self.weight}

    def state_dict(self) -> dict[str, Any]:
        return {"ensemble": self.ensemble.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ensemble.load_state_dict(state["ensemble"])


class AdaptiveMargin(Objective):
    """Adaptive-margin adversarial training (Ma & Liang 2024)."""

    name = "adaptive-margin"

    def __init__(self, *args: Any, rule: Rule | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        c = self.config
        if c.searches_delta:
            raise ConfigError("--delta auto must be resolved by the validation search "
                              "(training.robust.search) before the objective is built")
        self.margins = Margins(self.n_train, float(c.delta), c.max_margin)  # type: ignore[arg-type]
        self.rule = rule
        self.last_attack: MarginAttack | None = None

    @property
    def needs_calibration(self) -> bool:
        return self.rule is None

    @torch.no_grad()
    def calibrate(self, model: nn.Module, batches: Iterable[tuple[torch.Tensor, Any]]
                  ) -> dict[str, Any]:
        """Set the rule from the clean training set (un-augmented ``(x, targets)`` batches)
        scored by ``model`` in eval mode: xi per loss term, or the mean clean Dice of the
        slices with foreground. Returns what was set."""
        values: dict[str, list[np.ndarray]] = {}
        dice: list[np.ndarray] = []
        with eval_mode(model):
            for x, targets in batches:
                out = model(x)
                if self.spec.rule == "dice":
                    fg = has_foreground(targets).cpu().numpy()
                    dice.append(hard_dice(out, targets).cpu().numpy()[fg])
                else:
                    for k, v in self.spec.terms(out, targets).items():
                        values.setdefault(k, []).append(v.detach().cpu().numpy())
        if self.spec.rule == "dice":
            d = np.concatenate(dice) if dice else np.zeros(0)
            if d.size == 0:
                raise ConfigError("no training slice has foreground: the Dice rule cannot be "
                                  "calibrated")
            self.rule = DiceRule(float(d.mean()))
        else:
            self.rule = LossRule(calibrate_xi({k: np.concatenate(v) for k, v in values.items()},
                                              self.config.xi))
        return self.rule.describe()

    def loss(self, model: nn.Module, x: torch.Tensor, targets: Any, idx: torch.Tensor
             ) -> tuple[torch.Tensor, Terms | None]:
        if self.rule is None:
            raise ConfigError("adaptive-margin training needs xi: calibrate it on a trained "
                              "standard model first (--xi-from)")
        c = self.config
        eps = self.margins.budgets(idx).to(x.device)
        attack = margin_pgd(model, x, TermScore(self.spec, targets, self.rule), eps,
                            delta=float(c.delta), alpha=c.alpha,  # type: ignore[arg-type]
                            steps=c.inner_steps, seed=attack_seed(self.seed, self.epoch),
                            keys=[int(i) for i in idx], refine=c.refine)
        self.margins.record(idx, attack.norms, attack.always_correct)
        self.last_attack = attack
        l0, t0 = self.spec.batch_loss(model(x), targets)
        l1, t1 = self.spec.batch_loss(model(attack.noisy), targets)
        terms = None if t0 is None or t1 is None else {k: 0.5 * t0[k] + 0.5 * t1[k] for k in t0}
        return 0.5 * l0 + 0.5 * l1, terms

    def end_epoch(self) -> dict[str, Any]:
        return {"margins": self.margins.end_epoch(),
                "rule": None if self.rule is None else self.rule.describe()}

    def finish(self, history: list[dict[str, Any]]) -> list[Warning]:
        rows = [r["margins"] for r in history if "margins" in r]
        if not never_moved(rows, self.margins.delta):
            return []
        return [MarginsNeverMoved(
            f"adaptive margins never moved beyond D = {self.margins.delta:g} in {len(rows)} "
            "epoch(s): every sample failed its check every epoch, so this was fixed-budget "
            "training at D (try a smaller --delta, a looser --xi or more epochs)")]

    def save(self, folder: str | Path) -> dict[str, Any]:
        out = super().save(folder)
        self.margins.save(Path(folder) / MARGINS_FILE)
        return {**out, "margins_file": MARGINS_FILE}

    def state_dict(self) -> dict[str, Any]:
        return {"margins": self.margins.state_dict(),
                "rule": None if self.rule is None else self.rule.describe()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.margins.load_state_dict(state["margins"])
        rule = state.get("rule")
        if rule is not None:
            self.rule = DiceRule(rule["threshold"]) if rule["rule"] == "dice" \
                else LossRule(rule["xi"])

    def describe(self) -> dict[str, Any]:
        return {**super().describe(),
                "rule": None if self.rule is None else self.rule.describe()}


OBJECTIVES: dict[str, type[Objective]] = {"none": Objective, "vat": VAT, "teat": TEAT,
                                          "adaptive-margin": AdaptiveMargin}


def build_objective(config: RobustConfig | None, spec: LossSpec, n_train: int, epochs: int,
                    seed: int) -> Objective | None:
    """The objective ``config`` names (None for standard training, whose trainers keep their
    own code path so it stays bit-identical)."""
    if config is None or not config.active:
        return None
    config.validate()
    return OBJECTIVES[config.method](spec, config, n_train, epochs, seed)
