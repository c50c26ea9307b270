"""The attack protocol's attacks: its settings and how each attack is built at one budget.

Kept apart from the campaign that runs them (``attack_protocol``) because the recipes that let a
Ray worker rebuild an attack (``recipes``) need them too, and the campaign needs the recipes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from medrobust.attacks.apgd import APGD, APGDT
from medrobust.attacks.base import Attack
from medrobust.attacks.dense_apgd import DenseAPGD
from medrobust.attacks.dense_square import DenseSquare
from medrobust.attacks.ensemble import AttackEnsemble, standard_attacks
from medrobust.attacks.ifgsm import IFGSM
from medrobust.attacks.pgd import PGD
from medrobust.attacks.restarts import Restarts
from medrobust.attacks.square import Square
from medrobust.attacks.worst_case import WorstCase
from medrobust.errors import ConfigError
from medrobust.models.base import PixelModel
from medrobust.tasks import Task
from medrobust.utils.validation import check_choice, check_range

#: attacks every task takes (through its loss), and those that need class logits
TASK_ATTACKS = ("pgd", "ifgsm", "pgd-restarts")
CLASSIFIER_ATTACKS = ("apgd-ce", "apgd-t", "square", "ensemble")
#: tasks without class logits: APGD on the training loss (``DenseAPGD``), and where the task
#: scores each image (``Task.image_damage``) Square on that score and the worst-case ensemble
DENSE_ATTACKS = ("apgd", "square", "ensemble")
#: the settings only some attacks read (see ``build_attack``), and those attacks
SETTING_USERS: dict[str, tuple[str, ...]] = {
    "pgd_steps": ("pgd", "pgd-restarts", "apgd-ce", "apgd-t", "apgd", "ensemble"),
    "ifgsm_steps": ("ifgsm", "ensemble"),  # the ensemble of tasks without class logits
    "restarts": ("pgd-restarts",),
    # the classifiers' ensemble; the dense one sizes its Square by pgd_steps (``worst_case``)
    "square_queries": ("square", "ensemble"),
}


def task_attacks(task: Task) -> tuple[str, ...]:
    """The protocol attacks ``task`` can run."""
    if task.class_logits:
        return TASK_ATTACKS + CLASSIFIER_ATTACKS
    return TASK_ATTACKS + (DENSE_ATTACKS if task.image_damage is not None else ("apgd",))


def _why_not(name: str, task: Task) -> str:
    """Why an attack the protocol knows does not apply to ``task`` ("" for unknown names)."""
    if task.class_logits:
        return " (classifiers take APGD as apgd-ce or apgd-t)" if name == "apgd" else ""
    if name in ("apgd-ce", "apgd-t"):
        return f" ({name} needs class logits: classifiers only)"
    if name in ("square", "ensemble"):
        return f" ({name} needs class logits or a per-image task metric)"
    return ""


@dataclass(frozen=True)
class ProtocolSettings:
    """The protocol's knobs, validated once. Step sizes follow the authors' evaluation code,
    scaled to the number of steps so fewer steps do not silently weaken the attack: PGD
    5 eps / steps per step with a random start (0.05 eps at their 100 steps: 5 eps of travel),
    IFGSM 2 eps / steps from the clean image (eps/5 at their 10 steps: it reaches the boundary
    half-way, then is projected)."""

    attacks: tuple[str, ...] = ("pgd", "ifgsm")
    norm: str = "l2"
    levels: tuple[float, ...] = (0.5, 1.0, 2.0)
    pgd_steps: int = 100
    ifgsm_steps: int = 10
    restarts: int = 5
    square_queries: int = 1000
    seed: int = 0
    batch_images: int = 16

    def validate(self, task: Task) -> None:
        allowed = task_attacks(task)
        for name in self.attacks:
            if name not in allowed:
                raise ConfigError(f"unknown attack {name!r} for {task.name}"
                                  f"{_why_not(name, task)}: choose from {', '.join(allowed)}")
        if not self.attacks:
            raise ConfigError("name at least one attack")
        check_choice("norm", self.norm, ("l2", "linf"))
        if not self.levels or any(not math.isfinite(v) or v <= 0 for v in self.levels):
            raise ConfigError("budget levels must be positive numbers")
        for name in ("pgd_steps", "ifgsm_steps", "restarts", "square_queries", "batch_images"):
            check_range(name, getattr(self, name), 1)

    def params(self) -> dict[str, Any]:
        return {"attacks": list(self.attacks), "norm": self.norm, "levels": list(self.levels),
                "pgd_steps": self.pgd_steps, "ifgsm_steps": self.ifgsm_steps,
                "restarts": self.restarts, "square_queries": self.square_queries,
                "seed": self.seed}


def build_attack(name: str, task: Task, model: PixelModel, norm: str, eps: float,
                 settings: ProtocolSettings) -> Attack:
    """One protocol attack at one budget (``square`` and ``ensemble`` are the classifiers' or
    the dense tasks' by ``task.class_logits``)."""
    if name not in task_attacks(task):
        raise ConfigError(f"unknown attack {name!r} for {task.name}{_why_not(name, task)}: "
                          f"choose from {', '.join(task_attacks(task))}")
    loss = task.attack_loss(model)
    b, seed = settings.batch_images, settings.seed
    if name == "pgd":
        return PGD(model, loss=loss, norm=norm, eps=eps, step=5 * eps / settings.pgd_steps,
                   steps=settings.pgd_steps, batch_size=b, seed=seed)
    if name == "ifgsm":
        return IFGSM(model, loss=loss, norm=norm, eps=eps, step=2 * eps / settings.ifgsm_steps,
                     steps=settings.ifgsm_steps, batch_size=b, seed=seed)
    if name == "pgd-restarts":
        return Restarts(PGD(model, loss=loss, norm=norm, eps=eps,
                            step=5 * eps / settings.pgd_steps,
                            steps=settings.pgd_steps, batch_size=b, seed=seed),
                        settings.restarts, loss)
    if name == "apgd-ce":
        return APGD(model, norm=norm, eps=eps, steps=settings.pgd_steps, loss="ce",
                    batch_size=b, seed=seed)
    if name == "apgd-t":
        return APGDT(model, norm=norm, eps=eps, steps=settings.pgd_steps, batch_size=b,
                     seed=seed)
    if name == "apgd":
        return DenseAPGD(model, loss=loss, norm=norm, eps=eps, steps=settings.pgd_steps,
                         batch_size=b, seed=seed)
    if name == "square" and not task.class_logits:
        assert task.image_damage is not None  # task_attacks lets square through only then
        return DenseSquare(model, task.image_damage, norm=norm, eps=eps,
                           max_queries=settings.square_queries, batch_size=b, seed=seed)
    if name == "square":
        return Square(model, norm=norm, eps=eps, max_queries=settings.square_queries,
                      batch_size=b, seed=seed)
    if name == "ensemble" and not task.class_logits:
        return worst_case(task, model, norm, eps, settings)
    if name == "ensemble":
        # AutoAttack's members, plus the protocol's own PGD: an image counts as robust only if
        # it survives all of them
        pgd = PGD(model, loss=loss, norm=norm, eps=eps, step=5 * eps / settings.pgd_steps,
                  steps=settings.pgd_steps, batch_size=b, seed=seed)
        return AttackEnsemble(model, standard_attacks(model, norm, eps, steps=settings.pgd_steps,
                                                      max_queries=settings.square_queries,
                                                      batch_size=b, seed=seed),
                              extra=[pgd], norm=norm, eps=eps, batch_size=b, seed=seed)
    raise ConfigError(f"unknown attack {name!r}")


#: the dense ensemble's shares of ``pgd_steps`` S: APGD steps over all extra losses, and
#: Square queries (see ``worst_case``)
APGD_SHARE, SQUARE_SHARE = 1.0, 1.0


def ensemble_shares(steps: int, losses: int) -> tuple[int, int]:
    """(APGD steps per loss, Square queries) of the dense ensemble at ``steps`` PGD steps and
    ``losses`` APGD members (``worst_case``)."""
    return (max(1, round(APGD_SHARE * steps / max(losses, 1))),
            max(2, round(SQUARE_SHARE * steps)))


def worst_case(task: Task, model: PixelModel, norm: str, eps: float,
               settings: ProtocolSettings) -> WorstCase:
    """The ensemble of a task without class logits: per image the worst, by the task's metric
    (``Task.image_damage``), of

    * PGD on the training loss with ``pgd_steps`` S, as the protocol's PGD (so the ensemble is
      never weaker than that PGD on any image);
    * IFGSM with ``ifgsm_steps`` I;
    * APGD (``DenseAPGD``) on each of the task's K other losses (``Task.ensemble_losses``;
      segmentation: SEA's and CosPGD's; a task with none: the training loss, K = 1),
      sharing S steps: round(S / K) each, plus one pass each for its start;
    * Square (``DenseSquare``) on the metric itself, the member that needs no gradient, with
      S queries.

    Cost per image, in PGD steps (one forward and backward pass): PGD S, IFGSM I, APGD
    K (round(S / K) + 1) ~ S + K, and Square S queries, each a forward pass plus the task's
    metric: measured on 2 CPU cores at 0.3 (landmarks) to 0.6 (segmentation) of a step, and
    under 1 for detection with ``metrics.detection.image_map`` (pycocotools cost 2). At the
    defaults (S = 100, I = 10) that is about 2.5-3x PGD-100; ``benchmarks/dense_ensemble.py``
    measures it. Square's queries stay tied to S (``square_queries`` sizes the attack
    ``square`` run alone, the stronger black-box check) so the ensemble stays near 3x.
    In the 2026-12 measurements Square never gave an image's worst case; it is there as the
    gradient-masking check, whose flag fires when it hurts more than every gradient member.
    """
    if task.image_damage is None:
        raise ConfigError(f"{task.name} defines no per-image damage: no worst-case ensemble")
    b, seed, steps = settings.batch_images, settings.seed, settings.pgd_steps
    members: list[Attack] = [
        PGD(model, loss=task.attack_loss(model), norm=norm, eps=eps, step=5 * eps / steps,
            steps=steps, batch_size=b, seed=seed),
        IFGSM(model, loss=task.attack_loss(model), norm=norm, eps=eps,
              step=2 * eps / settings.ifgsm_steps, steps=settings.ifgsm_steps, batch_size=b,
              seed=seed)]
    labels = ["pgd", "ifgsm"]
    extra = dict(task.ensemble_losses)
    each, queries = ensemble_shares(steps, len(extra))
    if not extra:
        members.append(DenseAPGD(model, loss=task.attack_loss(model), norm=norm, eps=eps,
                                 steps=each, batch_size=b, seed=seed))
        labels.append("apgd")
    for loss_name, build in extra.items():
        members.append(DenseAPGD(model, loss=build(model), norm=norm, eps=eps, steps=each,
                                 batch_size=b, seed=seed))
        labels.append(f"apgd-{loss_name}")
    members.append(DenseSquare(model, task.image_damage, norm=norm, eps=eps,
                               max_queries=queries, batch_size=b, seed=seed))
    labels.append("square")
    return WorstCase(model, members, task.image_damage, labels=labels, seed=seed)


def protocol_recipe(name: str, task: Task, norm: str, eps: float, settings: ProtocolSettings
                    ) -> dict[str, Any]:
    """What a worker needs to rebuild ``build_attack(name, task, ...)`` (plain JSON)."""
    plain = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(settings).items()}
    return {"builder": "protocol", "name": name, "task": task.name, "norm": norm, "eps": eps,
            "settings": plain}


def budget_text(norm: str, eps: float, shape: Sequence[int]) -> str:
    """A budget in both units the field uses: Linf in k/255; L2 on the [0,1] scale with its
    per-pixel RMS in 1/255 units (an L2 budget means little without the image size)."""
    if norm == "linf":
        return f"Linf {eps * 255:.3g}/255"
    rms = eps / math.sqrt(float(np.prod(shape))) * 255
    return f"L2 {eps:g} (RMS {rms:.3g}/255 per pixel)"
