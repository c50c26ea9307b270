"""Gradient-attack campaigns on landmark models and detectors, one row per image in the store.

The task says what an untargeted attack moves away from (the true landmarks, the true boxes) and
how an image is scored before and after (radial error, the image's mAP); this loop only batches,
attacks, records and resumes. Random starts are keyed by dataset index, so a resumed run gives
the same rows as an uninterrupted one.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from medrobust.attacks.pgd import PGD
from medrobust.campaigns.base import CampaignOutcome, batch_run
from medrobust.campaigns.executor import Executor, Work, check_remote, is_remote
from medrobust.campaigns.gradient import PERTURBATION_COLUMNS
from medrobust.models.base import PixelModel
from medrobust.store import ResultTable, Store
from medrobust.tasks import Task

TASK_ATTACK_TABLE = ResultTable(
    "task_attack_results",
    {
        "dataset_index": "INTEGER",
        "attack": "TEXT",
        "task": "TEXT",
        "metric": "TEXT",
        "unit": "TEXT",
        "clean_metric": "REAL",
        "adv_metric": "REAL",
        "clean_extra": "REAL",
        "adv_extra": "REAL",
        "clean_pred": "JSON",
        "adv_pred": "JSON",
        **PERTURBATION_COLUMNS,
    },
)


@dataclass
class TaskAttackContext:
    """What a worker needs: the task, the model, the dataset and the attack."""

    task: Task
    model: PixelModel
    dataset: Any
    attack: Any


def task_attack_context(model: PixelModel, dataset: Any, params: dict[str, Any]
                        ) -> TaskAttackContext:
    from medrobust.campaigns.recipes import build_attack
    from medrobust.tasks import get_task

    return TaskAttackContext(get_task(params["task"]), model, dataset,
                             build_attack(model, params["attack"]))


def task_attack_chunk(ctx: TaskAttackContext, chunk: list[int], emit: Any
                      ) -> tuple[list[tuple[int, dict[str, Any]]], None]:
    """Attack one chunk through the task's loss; one row of scores per image."""
    task, model, dataset, attack = ctx.task, ctx.model, ctx.dataset, ctx.attack
    assert task.attack_rows and task.attack_targets
    loss = task.attack_loss(model)
    idx = np.asarray(chunk, dtype=np.int64)
    x = model.to_tensor(dataset.images[idx])
    targets = task.attack_targets(dataset, idx)
    t0 = time.perf_counter()
    result = attack(x, targets, keys=chunk)
    adv = result.adversarial
    seconds = (time.perf_counter() - t0) / len(chunk)
    with torch.no_grad():
        model.eval()
        clean_loss, adv_loss = loss(model(x), targets), loss(model(adv), targets)
    scores = task.attack_rows(model, dataset, idx, x, adv)
    norms = result.perturbation_norms(x)
    steps = result.steps
    return [(i, {"dataset_index": i, "attack": attack.name, "task": task.name,
                 **scores[j], "clean_loss": float(clean_loss[j]),
                 "adv_loss": float(adv_loss[j]), "l2": float(norms["l2"][j]),
                 "linf": float(norms["linf"][j]),
                 "steps": None if steps is None else int(steps[j]),
                 "seconds": seconds})
            for j, i in enumerate(chunk)], None


def run_task_attack_campaign(store: Store, task: Task, model: PixelModel,
                             model_info: dict[str, Any], dataset: Any, attack: PGD,
                             command: str, params: dict[str, Any], indices: Sequence[int],
                             batch_images: int = 16, resume: bool = True,
                             show_progress: bool = True, executor: Executor | None = None,
                             recipe: dict[str, Any] | None = None) -> CampaignOutcome:
    """Attack ``dataset[indices]`` through ``task``'s loss and record each image's scores.

    ``executor``: where the batches run (default: this process). Ray workers load the checkpoint
    named by ``model_info["dir"]`` and build the attack from ``recipe`` (default: the recipe of
    ``attack``, a PGD or IFGSM; see ``campaigns.recipes``)."""
    assert task.attack_rows and task.attack_summary and task.attack_targets
    if is_remote(executor):  # refused here, before the run opens
        from medrobust.campaigns.recipes import check_recipe, recipe_of

        check_remote(executor, model_info.get("dir"))
        if recipe is None:
            recipe = recipe_of(attack, task.name)
        else:
            check_recipe(attack, recipe)
    start = time.perf_counter()
    with batch_run(store, TASK_ATTACK_TABLE, command, params, model=model_info,
                   dataset={**dataset.spec, "split": dataset.split},
                   items=[int(i) for i in indices], size=batch_images, desc=attack.name,
                   resume=resume, show_progress=show_progress) as run:
        run.execute(Work(compute=task_attack_chunk,
                         local=lambda: TaskAttackContext(task, model, dataset, attack),
                         remote=task_attack_context,
                         params={"task": task.name, "attack": recipe},
                         model_dir=model_info.get("dir", ""), data=dataset), executor)
        summary = task.attack_summary(store.rows(TASK_ATTACK_TABLE, run_id=run.run_id), dataset)
    seconds = time.perf_counter() - start
    summary["seconds_this_session"] = seconds
    store.finish_run(run.run_id, "completed", summary)
    return CampaignOutcome(run.run_id, run.resumed, len(run.todo), seconds, summary)
