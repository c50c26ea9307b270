"""Classification campaigns for PGD / IFGSM: robust accuracy at one budget, per image in the store.

Each image's row says whether the model was right before and after the attack, what it predicted
and how large the perturbation is; the run summary has clean accuracy, robust accuracy (right
after the attack, over all images) and the success rate over the images that were right before.
Rows are committed per batch and random starts are keyed by dataset index, so a resumed run
gives the same numbers as an uninterrupted one.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from medrobust.attacks.losses import cross_entropy
from medrobust.attacks.pgd import PGD
from medrobust.campaigns.base import CampaignOutcome, batch_run
from medrobust.campaigns.executor import Executor, Work, check_remote, is_remote
from medrobust.data.base import ImageDataset
from medrobust.models.classifier import Classifier
from medrobust.store import ResultTable, Store

#: what every gradient-attack row ends with: the loss before and after, the perturbation's size,
#: the steps an image took (early stop) and the seconds per image
PERTURBATION_COLUMNS = {"clean_loss": "REAL", "adv_loss": "REAL", "l2": "REAL", "linf": "REAL",
                        "steps": "INTEGER", "seconds": "REAL"}

GRADIENT_TABLE = ResultTable(
    "gradient_results",
    {
        "dataset_index": "INTEGER",
        "attack": "TEXT",
        "label": "INTEGER",
        "target": "INTEGER",
        "clean_pred": "INTEGER",
        "adv_pred": "INTEGER",
        "clean_correct": "INTEGER",
        "adv_correct": "INTEGER",
        "success": "INTEGER",
        **PERTURBATION_COLUMNS,
    },
)


@dataclass
class GradientContext:
    """What a worker needs to attack a chunk: the classifier, the data, the attack, the goals."""

    classifier: Classifier
    images: np.ndarray
    labels: np.ndarray
    attack: PGD
    targets: dict[int, int] | None


def gradient_context(classifier: Classifier, data: dict[str, Any], params: dict[str, Any]
                     ) -> GradientContext:
    from medrobust.campaigns.recipes import build_attack

    targets = params["targets"]
    return GradientContext(classifier, data["images"], data["labels"],
                           build_attack(classifier, params["attack"]),
                           None if targets is None else {int(k): int(v)
                                                         for k, v in targets.items()})


def gradient_chunk(ctx: GradientContext, chunk: list[int], emit: Any
                   ) -> tuple[list[tuple[int, dict[str, Any]]], None]:
    """Attack one chunk of dataset indices; one row per image."""
    classifier, attack, targets = ctx.classifier, ctx.attack, ctx.targets
    idx = np.asarray(chunk, dtype=np.int64)
    x = classifier.to_tensor(ctx.images[idx])
    labels = torch.from_numpy(ctx.labels[idx]).to(classifier.device)
    goal = labels if targets is None else torch.tensor(
        [targets[i] for i in chunk], device=classifier.device)
    t0 = time.perf_counter()
    result = attack(x, goal, keys=chunk)
    adv = result.adversarial
    seconds = (time.perf_counter() - t0) / len(chunk)
    with torch.no_grad():
        clean_logits, adv_logits = classifier(x), classifier(adv)
    clean_pred = classifier.logits_to_probabilities(clean_logits).argmax(1)
    adv_pred = classifier.logits_to_probabilities(adv_logits).argmax(1)
    clean_loss = cross_entropy(clean_logits, goal)
    adv_loss = cross_entropy(adv_logits, goal)
    norms = result.perturbation_norms(x)
    steps = result.steps
    rows = []
    for j, i in enumerate(chunk):
        label, ap = int(labels[j]), int(adv_pred[j])
        success = ap == int(goal[j]) if targets is not None else ap != label
        rows.append((i, {
            "dataset_index": i, "attack": attack.name, "label": label,
            "target": None if targets is None else int(goal[j]),
            "clean_pred": int(clean_pred[j]), "adv_pred": ap,
            "clean_correct": int(int(clean_pred[j]) == label),
            "adv_correct": int(ap == label), "success": int(success),
            "clean_loss": float(clean_loss[j]), "adv_loss": float(adv_loss[j]),
            "l2": float(norms["l2"][j]), "linf": float(norms["linf"][j]),
            "steps": None if steps is None else int(steps[j]), "seconds": seconds}))
    return rows, None


def run_gradient_campaign(store: Store, classifier: Classifier, model_info: dict[str, Any],
                          dataset: ImageDataset, attack: PGD, command: str,
                          params: dict[str, Any], indices: Sequence[int],
                          targets: dict[int, int] | None = None, batch_images: int = 64,
                          resume: bool = True, show_progress: bool = True,
                          executor: Executor | None = None) -> CampaignOutcome:
    """Attack ``dataset[indices]`` (targeted when ``targets`` is given) and record each image.

    ``executor``: where the batches run (default: this process); Ray workers load the
    checkpoint named by ``model_info["dir"]`` and rebuild the attack from its recipe."""
    recipe = None
    if is_remote(executor):  # refused here, before the run opens
        from medrobust.campaigns.recipes import recipe_of

        check_remote(executor, model_info.get("dir"))
        recipe = recipe_of(attack)
    start = time.perf_counter()
    with batch_run(store, GRADIENT_TABLE, command, params, model=model_info,
                   dataset={**dataset.spec, "split": dataset.split},
                   items=[int(i) for i in indices], size=batch_images, desc=attack.name,
                   resume=resume, show_progress=show_progress) as run:
        run.execute(Work(
            compute=gradient_chunk,
            local=lambda: GradientContext(classifier, dataset.images, dataset.labels, attack,
                                          targets),
            remote=gradient_context,
            params={"attack": recipe, "targets": None if targets is None else {
                str(k): int(v) for k, v in targets.items()}},
            model_dir=model_info.get("dir", ""),
            data={"images": dataset.images, "labels": dataset.labels}), executor)
    seconds = time.perf_counter() - start
    summary = summarise_gradient(store.rows(GRADIENT_TABLE, run_id=run.run_id))
    summary["seconds_this_session"] = seconds
    store.finish_run(run.run_id, "completed", summary)
    return CampaignOutcome(run.run_id, run.resumed, len(run.todo), seconds, summary)


def summarise_gradient(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Clean and robust accuracy, success rate among clean-correct images, mean sizes."""
    n = len(rows)

    def mean(key: str, group: list[dict[str, Any]]) -> float | None:
        vals = [r[key] for r in group if r.get(key) is not None]
        return float(np.mean(vals)) if vals else None

    right = [r for r in rows if r["clean_correct"]]
    return {"images": n, "clean_accuracy": mean("clean_correct", rows),
            "robust_accuracy": mean("adv_correct", rows), "attacked": len(right),
            "success_rate": mean("success", right), "mean_l2": mean("l2", rows),
            "mean_linf": mean("linf", rows), "mean_steps": mean("steps", rows)}
