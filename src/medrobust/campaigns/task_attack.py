"""Gradient-attack campaigns on landmark models and detectors, one row per image in the store.

The task says what an untargeted attack moves away from (the true landmarks, the true boxes) and
how an image is scored before and after (radial error, the image's mAP); this loop only batches,
attacks, records and resumes. Random starts are keyed by dataset index, so a resumed run gives
the same rows as an uninterrupted one.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from medrobust.attacks.pgd import PGD
from medrobust.campaigns.base import CampaignOutcome, batch_run
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


def run_task_attack_campaign(store: Store, task: Task, model: PixelModel,
                             model_info: dict[str, Any], dataset: Any, attack: PGD,
                             command: str, params: dict[str, Any], indices: Sequence[int],
                             batch_images: int = 16, resume: bool = True,
                             show_progress: bool = True) -> CampaignOutcome:
    """Attack ``dataset[indices]`` through ``task``'s loss and record each image's scores."""
    assert task.attack_rows and task.attack_summary and task.attack_targets
    loss = task.attack_loss(model)
    start = time.perf_counter()
    with batch_run(store, TASK_ATTACK_TABLE, command, params, model=model_info,
                   dataset={**dataset.spec, "split": dataset.split},
                   items=[int(i) for i in indices], size=batch_images, desc=attack.name,
                   resume=resume, show_progress=show_progress) as run:
        for chunk in run.batches():
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
            d = (adv - x).flatten(1).double()
            steps = result.steps
            rows = [(i, {"dataset_index": i, "attack": attack.name, "task": task.name,
                         **scores[j], "clean_loss": float(clean_loss[j]),
                         "adv_loss": float(adv_loss[j]), "l2": float(d[j].norm()),
                         "linf": float(d[j].abs().max()),
                         "steps": None if steps is None else int(steps[j]),
                         "seconds": seconds})
                    for j, i in enumerate(chunk)]
            run.campaign.record_many(rows)
        summary = task.attack_summary(store.rows(TASK_ATTACK_TABLE, run_id=run.run_id), dataset)
    seconds = time.perf_counter() - start
    summary["seconds_this_session"] = seconds
    store.finish_run(run.run_id, "completed", summary)
    return CampaignOutcome(run.run_id, run.resumed, len(run.todo), seconds, summary)
