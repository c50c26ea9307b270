"""The attacked-evaluation protocol (Ma & Liang 2024): every attack at every budget, one table.

A model is judged on its clean metric and on each attack at each noise level (the paper: PGD
with 100 steps and IFGSM with 10 steps at three L2 levels, chosen so the standard model's metric
falls close to zero at the largest), averaged per attack and over all. Each (attack, budget) is a
task-attack campaign of its own (rows per image, resumable, visible to the report's curves); the
protocol run records the table that ties them together, so rerunning the same command resumes
the missing campaigns and recomputes nothing else.

The attacks run through the task's training loss, so the protocol is the same for classifiers,
segmenters, landmark models and detectors. ``pgd-restarts`` (PGD from several random starts,
the worst kept per image) is the check against gradient masking available to every task;
classifiers also take APGD-CE, APGD-T (targeted DLR) and the black-box Square attack.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from medrobust.attacks.apgd import APGD, APGDT
from medrobust.attacks.base import Attack
from medrobust.attacks.ifgsm import IFGSM
from medrobust.attacks.pgd import PGD
from medrobust.attacks.restarts import Restarts
from medrobust.attacks.square import Square
from medrobust.campaigns.base import CampaignOutcome
from medrobust.campaigns.executor import Executor
from medrobust.campaigns.task_attack import run_task_attack_campaign
from medrobust.errors import ConfigError
from medrobust.models.base import PixelModel
from medrobust.store import Store
from medrobust.tasks import Task
from medrobust.utils.validation import check_choice, check_range

PROTOCOL_COMMAND = "evaluate attacks"
#: attacks every task takes (through its loss), and those that need class logits
TASK_ATTACKS = ("pgd", "ifgsm", "pgd-restarts")
CLASSIFIER_ATTACKS = ("apgd-ce", "apgd-t", "square")


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
        allowed = TASK_ATTACKS + (CLASSIFIER_ATTACKS if task.class_logits else ())
        for name in self.attacks:
            if name not in allowed:
                extra = "" if task.class_logits or name not in CLASSIFIER_ATTACKS \
                    else f" ({name} needs class logits: classifiers only)"
                raise ConfigError(f"unknown attack {name!r} for {task.name}{extra}: choose from "
                                  f"{', '.join(allowed)}")
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
    """One protocol attack at one budget."""
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
    if name == "square":
        return Square(model, norm=norm, eps=eps, max_queries=settings.square_queries,
                      batch_size=b, seed=seed)
    raise ConfigError(f"unknown attack {name!r}")


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


def run_attack_protocol(store: Store, task: Task, model: PixelModel, model_info: dict[str, Any],
                        dataset: Any, indices: Sequence[int], settings: ProtocolSettings,
                        resume: bool = True, show_progress: bool = True,
                        executor: Executor | None = None) -> CampaignOutcome:
    """Run every (attack, level) campaign on ``dataset[indices]`` and record the table.

    ``executor``: where each campaign's batches run (default: this process); Ray workers build
    each attack from its recipe (name, norm, budget and these settings)."""
    settings.validate(task)
    if task.attack_summary is None:
        raise ConfigError(f"{task.name} defines no attacked evaluation")
    shape = (dataset.channels, *dataset.images.shape[1:3])
    indices = [int(i) for i in indices]
    start = time.perf_counter()
    params = {**settings.params(), "task": task.name, "indices": indices}
    run_id, resumed = store.start_run(PROTOCOL_COMMAND, params, model=model_info,
                                      dataset={**dataset.spec, "split": dataset.split},
                                      resume=resume)
    head = task.headline
    cells: list[dict[str, Any]] = []
    computed = 0
    with store.guard(run_id):
        for name in settings.attacks:
            for eps in settings.levels:
                attack = build_attack(name, task, model, settings.norm, float(eps), settings)
                if hasattr(attack, "check_images"):
                    attack.check_images(shape)
                out = run_task_attack_campaign(
                    store, task, model, model_info, dataset, attack, f"attack {attack.name}",
                    {"attack": attack.params(), "task": task.name, "indices": indices},
                    indices, batch_images=settings.batch_images,
                    resume=resume, show_progress=show_progress, executor=executor,
                    recipe=protocol_recipe(name, task, settings.norm, float(eps), settings))
                computed += out.computed_now
                s = out.summary
                cells.append({"attack": name, "norm": settings.norm, "eps": float(eps),
                              "budget": budget_text(settings.norm, float(eps), shape),
                              "run_id": out.run_id, "images": s.get("images"),
                              "clean": s.get(f"clean_{head}"), "attacked": s.get(f"adv_{head}"),
                              "attacked_ci95": s.get(f"adv_{head}_ci95"),
                              "unit": s.get("unit", "")})
        summary = protocol_summary(task, cells)
        store.finish_run(run_id, "completed", summary)
    return CampaignOutcome(run_id, resumed, computed, time.perf_counter() - start, summary)


def protocol_summary(task: Task, cells: list[dict[str, Any]]) -> dict[str, Any]:
    """The paper's table: the clean metric, each attack at each level, per-attack averages
    and the average over every attacked cell (lower is better for MRE, higher otherwise)."""
    attacked = [c["attacked"] for c in cells if c["attacked"] is not None]
    per_attack = {}
    for name in dict.fromkeys(c["attack"] for c in cells):
        vals = [c["attacked"] for c in cells if c["attack"] == name and c["attacked"] is not None]
        per_attack[name] = float(np.mean(vals)) if vals else None
    clean = next((c["clean"] for c in cells if c["clean"] is not None), None)
    return {"task": task.name, "metric": task.headline,
            "higher_is_better": not task.lower_is_better, "unit": cells[0]["unit"] if cells else "",
            "images": cells[0]["images"] if cells else 0, "clean": clean, "cells": cells,
            "average_by_attack": per_attack,
            "average_attacked": float(np.mean(attacked)) if attacked else None}
