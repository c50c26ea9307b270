"""Attacks as plain JSON recipes, so a worker rebuilds the very attack the driver holds.

A Ray worker never receives a pickled attack (it would drag the model along): it receives a
recipe (``{"builder": ..., ...}``, plain JSON) and builds the attack around the model it loaded
itself. ``recipe_of`` writes the recipe of an attack object and checks, by building it again on
the driver, that the rebuilt attack reports exactly the same ``params()``; an attack that cannot
be described (a loss or stopping test that is not a named one) is refused in one line, before the
run opens.
"""

from __future__ import annotations

import inspect
from typing import Any

from medrobust.attacks.asma import ASMA
from medrobust.attacks.criteria import hits_target, mask_iou_at_least, misclassified
from medrobust.attacks.ifgsm import IFGSM
from medrobust.attacks.landmark_goals import never_done, reaches_landmark_goal
from medrobust.attacks.losses import LOSSES, get_loss, loss_name
from medrobust.attacks.pgd import PGD
from medrobust.attacks.projection import plain_budget
from medrobust.errors import ConfigError

GRADIENT_CLASSES: dict[str, type[PGD]] = {"pgd": PGD, "ifgsm": IFGSM}
#: the early-stop tests a worker can rebuild by name (landmarks: a targeted shift reached its
#: goal; an untargeted landmark attack never stops early)
_CRITERIA = {"misclassified": misclassified, "hits_target": hits_target,
             "reaches_landmark_goal": reaches_landmark_goal, "never_done": never_done}


def _criterion_recipe(fn: Any) -> dict[str, Any] | None:
    if fn is None:
        return None
    for name, known in _CRITERIA.items():
        if fn is known:
            return {"name": name}
    if getattr(fn, "__name__", "").startswith("mask_iou_at_least("):
        return {"name": "mask_iou_at_least",
                "threshold": float(inspect.getclosurevars(fn).nonlocals["threshold"])}
    raise ConfigError(f"early stop {getattr(fn, '__name__', fn)!r} is not a named test: it "
                      "cannot be rebuilt on a Ray worker (run with --executor local)")


def _criterion(recipe: dict[str, Any] | None) -> Any:
    if recipe is None:
        return None
    if recipe["name"] == "mask_iou_at_least":
        return mask_iou_at_least(recipe["threshold"])
    return _CRITERIA[recipe["name"]]


def gradient_recipe(attack: PGD, task: str | None = None) -> dict[str, Any]:
    """PGD / IFGSM: the loss by name (or ``task``'s attack loss), the stopping test by name."""
    kind = next((k for k, cls in GRADIENT_CLASSES.items() if type(attack) is cls), None)
    if kind is None:
        raise ConfigError(f"{type(attack).__name__} has no recipe for Ray workers (run with "
                          "--executor local)")
    name = loss_name(attack.loss)
    if name in LOSSES:
        loss: Any = name
    elif task is not None:
        loss = {"task": task}
    else:
        raise ConfigError(f"loss {name!r} is not a named loss: it cannot be rebuilt on a Ray "
                          "worker (run with --executor local)")
    return {"builder": "gradient", "class": kind, "loss": loss, "norm": attack.norm,
            "eps": plain_budget(attack.eps), "step": plain_budget(attack.step), "steps": attack.steps,
            "random_start": attack.random_start, "targeted": attack.targeted,
            "early_stop": _criterion_recipe(attack.early_stop),
            "batch_size": attack.batch_size, "seed": attack.seed}


def build_attack(model: Any, recipe: dict[str, Any]) -> Any:
    """The attack a recipe describes, around ``model``."""
    builder = recipe["builder"]
    if builder == "gradient":
        loss = recipe["loss"]
        if isinstance(loss, dict):
            from medrobust.tasks import get_task

            loss_fn = get_task(loss["task"]).attack_loss(model)
        else:
            loss_fn = get_loss(loss)
        return GRADIENT_CLASSES[recipe["class"]](
            model, loss=loss_fn, norm=recipe["norm"], eps=recipe["eps"], step=recipe["step"],
            steps=recipe["steps"], random_start=recipe["random_start"],
            targeted=recipe["targeted"], early_stop=_criterion(recipe["early_stop"]),
            batch_size=recipe["batch_size"], seed=recipe["seed"])
    if builder == "asma":
        return ASMA(model, **recipe["kwargs"])
    if builder == "protocol":
        from medrobust.campaigns.protocol_attacks import ProtocolSettings
        from medrobust.campaigns.protocol_attacks import build_attack as protocol_attack
        from medrobust.tasks import get_task

        settings = ProtocolSettings(**{k: tuple(v) if isinstance(v, list) else v
                                       for k, v in recipe["settings"].items()})
        return protocol_attack(recipe["name"], get_task(recipe["task"]), model, recipe["norm"],
                               recipe["eps"], settings)
    raise ConfigError(f"unknown attack recipe {builder!r}")


def asma_recipe(attack: ASMA) -> dict[str, Any]:
    """ASMA from its own parameters (every constructor argument is among them)."""
    kw = {k: v for k, v in attack.params().items() if k != "attack"}
    kw["batch_size"] = attack.batch_size
    return {"builder": "asma", "kwargs": kw}


def recipe_of(attack: Any, task: str | None = None) -> dict[str, Any]:
    """The recipe of a PGD / IFGSM / ASMA attack object, checked by rebuilding it."""
    recipe = asma_recipe(attack) if type(attack) is ASMA else gradient_recipe(attack, task)
    check_recipe(attack, recipe)
    return recipe


def check_recipe(attack: Any, recipe: dict[str, Any]) -> None:
    """Refuse a recipe whose attack would differ from ``attack`` (compared by ``params()``)."""
    rebuilt = build_attack(attack.model, recipe)
    if rebuilt.params() != attack.params():
        raise ConfigError(f"{attack.name} cannot be rebuilt exactly on a Ray worker from its "
                          "parameters (run with --executor local)")
