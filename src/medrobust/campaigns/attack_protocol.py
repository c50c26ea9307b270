"""The attacked-evaluation protocol (Ma & Liang 2024): every attack at every budget, one table.

A model is judged on its clean metric and on each attack at each noise level (the paper: PGD
with 100 steps and IFGSM with 10 steps at three L2 levels, chosen so the standard model's metric
falls close to zero at the largest), averaged per attack and over all. Each (attack, budget) is a
task-attack campaign of its own (rows per image, resumable, visible to the report's curves); the
protocol run records the table that ties them together, so rerunning the same command resumes
the missing campaigns and recomputes nothing else.

The attacks run through the task's training loss, so the protocol is the same for classifiers,
segmenters, landmark models and detectors. ``pgd-restarts`` (PGD from several random starts,
the worst kept per image) is a check against gradient masking available to every task;
classifiers also take APGD-CE and APGD-T (targeted DLR), other tasks APGD on their loss, and
every task the black-box Square attack (on the margin, or on the task's per-image metric) and
the ensemble (AutoAttack's, or the worst case per image over PGD, IFGSM, APGD on the task's
other losses and Square).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from medrobust.campaigns.base import CampaignOutcome
from medrobust.campaigns.executor import Executor
from medrobust.campaigns.protocol_attacks import (
    ProtocolSettings,
    budget_text,
    build_attack,
    protocol_recipe,
)
from medrobust.campaigns.task_attack import run_task_attack_campaign
from medrobust.errors import ConfigError
from medrobust.models.base import PixelModel
from medrobust.store import Store
from medrobust.tasks import Task

PROTOCOL_COMMAND = "evaluate attacks"
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
    # every attack is built and its budget checked before the run opens: a budget no image can
    # have is one line, not a failed run in the store
    attacks = {(name, float(eps)): build_attack(name, task, model, settings.norm, float(eps),
                                                settings)
               for name in settings.attacks for eps in settings.levels}
    for attack in attacks.values():
        attack.check_images(shape)
    params = {**settings.params(), "task": task.name, "indices": indices}
    run_id, resumed = store.start_run(PROTOCOL_COMMAND, params, model=model_info,
                                      dataset={**dataset.spec, "split": dataset.split},
                                      resume=resume)
    head = task.headline
    cells: list[dict[str, Any]] = []
    computed = 0
    with store.guard(run_id):
        for (name, eps), attack in attacks.items():
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
