"""The gradient-attack campaign of every task: one row per image in ``task_attack_results``.

The task says what an untargeted attack moves away from (the true label, landmarks or boxes),
what a targeted one moves towards (``Task.goals``: a class) and how an image is scored before
and after (correct, radial error, the image's mAP) and whether the attack reached its goal;
this loop only batches, attacks, records and resumes. ``attack pgd|ifgsm`` and the attacked
protocol (``evaluate --attack``) both run here. Random starts are keyed by dataset index, so a
resumed run gives the same rows as an uninterrupted one. (Segmentation's ``attack pgd`` keeps
the mask campaign it shares with ASMA, whose rows also score against a target mask; stores of
earlier versions hold classifier attacks in ``gradient_results``, which the report still reads.)
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
from medrobust.models.base import PixelModel
from medrobust.store import ResultTable, Store
from medrobust.tasks import Task

#: what every gradient-attack row ends with: the loss before and after, the perturbation's size,
#: the steps an image took (early stop) and the seconds per image
PERTURBATION_COLUMNS = {"clean_loss": "REAL", "adv_loss": "REAL", "l2": "REAL", "linf": "REAL",
                        "steps": "INTEGER", "seconds": "REAL"}

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
        "target": "JSON",
        "success": "INTEGER",
        #: a worst-case ensemble's image: each member's damage and the member kept
        "members": "JSON",
        **PERTURBATION_COLUMNS,
    },
)


@dataclass
class TaskAttackContext:
    """What a worker needs: the task, the model, the dataset, the attack and, for a targeted
    attack, each image's target."""

    task: Task
    model: PixelModel
    dataset: Any
    attack: Any
    targets: dict[int, Any] | None = None


def task_attack_context(model: PixelModel, dataset: Any, params: dict[str, Any]
                        ) -> TaskAttackContext:
    from medrobust.campaigns.recipes import build_attack
    from medrobust.tasks import get_task

    targets = params.get("targets")
    return TaskAttackContext(get_task(params["task"]), model, dataset,
                             build_attack(model, params["attack"]),
                             None if targets is None else {int(k): v for k, v in targets.items()})


def task_attack_chunk(ctx: TaskAttackContext, chunk: list[int], emit: Any
                      ) -> tuple[list[tuple[int, dict[str, Any]]], None]:
    """Attack one chunk through the task's loss; one row of scores per image."""
    task, model, dataset, attack = ctx.task, ctx.model, ctx.dataset, ctx.attack
    assert task.attack_rows and task.attack_targets
    loss = task.attack_loss(model)
    idx = np.asarray(chunk, dtype=np.int64)
    x = model.to_tensor(dataset.images[idx])
    aims = [None] * len(chunk) if ctx.targets is None else [ctx.targets[i] for i in chunk]
    if ctx.targets is None:
        targets = task.attack_targets(dataset, idx)
    else:
        assert task.goals is not None
        targets = task.goals.goal(aims)
    if isinstance(targets, torch.Tensor):
        targets = targets.to(model.device)
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
    success = [None if task.goals is None else int(task.goals.success(scores[j], aims[j]))
               for j in range(len(chunk))]
    members = member_damage(result.extras, len(chunk))
    return [(i, {"dataset_index": i, "attack": attack.name, "task": task.name,
                 **scores[j], "target": aims[j], "success": success[j],
                 "members": members[j],
                 "clean_loss": float(clean_loss[j]),
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
                             recipe: dict[str, Any] | None = None,
                             targets: dict[int, Any] | None = None) -> CampaignOutcome:
    """Attack ``dataset[indices]`` through ``task``'s loss and record each image's scores;
    ``targets`` (image -> its target, ``Task.goals``) makes the attack targeted.

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
                         local=lambda: TaskAttackContext(task, model, dataset, attack, targets),
                         remote=task_attack_context,
                         params={"task": task.name, "attack": recipe,
                                 "targets": None if targets is None else {
                                     str(k): v for k, v in targets.items()}},
                         model_dir=model_info.get("dir", ""), data=dataset), executor)
        rows = store.rows(TASK_ATTACK_TABLE, run_id=run.run_id)
        summary = {**task.attack_summary(rows, dataset), **perturbation_means(rows),
                   **member_summary(rows)}
    seconds = time.perf_counter() - start
    summary["seconds_this_session"] = seconds
    store.finish_run(run.run_id, "completed", summary)
    return CampaignOutcome(run.run_id, run.resumed, len(run.todo), seconds, summary)


def perturbation_means(rows: list[dict[str, Any]]) -> dict[str, float | None]:
    """Mean L2 and Linf of the perturbations and mean steps (early stop: fewer), any task."""
    def mean(key: str) -> float | None:
        vals = [r[key] for r in rows if r.get(key) is not None]
        return float(np.mean(vals)) if vals else None

    return {"mean_l2": mean("l2"), "mean_linf": mean("linf"), "mean_steps": mean("steps")}


#: the member of a worst-case ensemble that uses no gradient (the masking check's reference)
BLACK_BOX = "square"


def member_damage(extras: dict[str, Any], n: int) -> list[dict[str, Any] | None]:
    """Per image, what a worst-case ensemble's result says of its members (None for other
    attacks): each member's damage to the task metric and the member whose image was kept."""
    by_member = extras.get("damage_by_member")
    if not by_member:
        return [None] * n
    winners = extras.get("member") or [""] * n
    return [{"damage": {label: float(d[j]) for label, d in by_member.items()},
             "kept": winners[j]} for j in range(n)]


def member_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per member of a worst-case ensemble: its mean damage and how often its image was kept;
    and the gradient-masking check every task gets: when the black-box member (Square, which
    sees no gradient) hurts more on average than the best gradient member, the gradients
    mislead the attacks (Athalye et al. 2018's signal), so the white-box numbers flatter the
    model. Empty for other attacks."""
    parts = [r["members"] for r in rows if r.get("members")]
    if not parts:
        return {}
    labels = list(parts[0]["damage"])
    means = {m: float(np.mean([p["damage"][m] for p in parts])) for m in labels}
    wins = {m: sum(p["kept"] == m for p in parts) for m in labels}
    out: dict[str, Any] = {"members": {m: {"mean_damage": means[m], "kept": wins[m]}
                                       for m in labels},
                           "ensemble_damage": float(np.mean([p["damage"][p["kept"]]
                                                             for p in parts]))}
    gradient = [m for m in labels if m != BLACK_BOX]
    if BLACK_BOX in means and gradient:
        best = max(gradient, key=lambda m: means[m])
        beaten = sum(p["damage"][BLACK_BOX] > max(p["damage"][m] for m in gradient)
                     for p in parts)
        out["gradient_masking"] = {
            "flagged": means[BLACK_BOX] > means[best], "black_box": BLACK_BOX,
            "black_box_damage": means[BLACK_BOX], "best_gradient": best,
            "best_gradient_damage": means[best], "images_black_box_worse": int(beaten),
            "images": len(parts)}
    return out
