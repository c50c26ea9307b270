"""Segmentation attack campaigns: attack a split, score every image, record it, resume after a kill.

One loop serves ASMA, PGD and IFGSM: an attack is wrapped as ``fn(x, goal, keys) -> (adv,
iterations)``, where ``goal`` is the target masks (targeted) or the true masks (untargeted).
Every image gets the same row whichever attack made it: IoU, pixel accuracy and Dice against
the target and against the truth (MONAI metrics, foreground), and the L2 / Linf size of the
perturbation on the [0,1] scale. Rows are committed per batch, so a killed campaign redoes at
most one batch. A few examples per run (image index order) also keep their perturbation and
masks in ``<store>_artifacts/`` for the report's panels.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medrobust.attacks.result import perturbation_norms
from medrobust.attacks.seg_targets import TargetSpec
from medrobust.campaigns.base import CampaignOutcome, batch_run
from medrobust.campaigns.executor import Executor, Work, check_remote, is_remote
from medrobust.campaigns.seg_attacks import AttackFn
from medrobust.data.segmentation import SegmentationDataset
from medrobust.errors import ConfigError
from medrobust.metrics.segmentation import per_image_metrics
from medrobust.models.segmenter import Segmenter
from medrobust.store import ResultTable, Store

SEG_TABLE = ResultTable(
    "segattack_results",
    {
        "dataset_index": "INTEGER",
        "name": "TEXT",
        "variant": "TEXT",
        "attack": "TEXT",
        "target_mode": "TEXT",
        "target_source": "INTEGER",
        "truth_fg": "REAL",
        "target_fg": "REAL",
        "target_changed": "REAL",
        "iou_target": "REAL",
        "pa_target": "REAL",
        "dice_target": "REAL",
        "iou_truth": "REAL",
        "pa_truth": "REAL",
        "dice_truth": "REAL",
        "clean_iou_target": "REAL",
        "clean_pa_target": "REAL",
        "clean_iou_truth": "REAL",
        "clean_dice_truth": "REAL",
        "l2": "REAL",
        "linf": "REAL",
        "iterations": "INTEGER",
        "budget_l2": "REAL",
        "seconds": "REAL",
        "artifact": "TEXT",
    },
)

#: ``fn(x float (N,C,H,W), goal (N,H,W), keys) -> (adversarial (N,C,H,W), iterations (N,))``.

MEAN_FIELDS = ("iou_target", "pa_target", "dice_target", "iou_truth", "pa_truth", "dice_truth",
               "clean_iou_target", "clean_iou_truth", "clean_dice_truth", "l2", "linf",
               "iterations")


def artifacts_dir(store: Store, run_id: int) -> Path:
    """Where a run's example panels live: ``<store stem>_artifacts/run_<id>`` beside the store."""
    return store.path.parent / f"{store.path.stem}_artifacts" / f"run_{run_id}"


def build_goals(ds: SegmentationDataset, indices: Sequence[int], target: TargetSpec | None
                ) -> tuple[np.ndarray, list[int | None]]:
    """(goal masks, source image of each target) for ``indices``; untargeted goals are the truth."""
    if target is None:
        return ds.masks[np.asarray(indices, dtype=np.int64)], [None] * len(indices)
    goals, sources = [], []
    for i in indices:
        mask, src = target.build(ds.masks, int(i))
        goals.append(mask)
        sources.append(src)
    return np.stack(goals).astype(np.int64), sources


def _item(variant: str | None, index: int) -> str | int:
    return index if variant is None else f"{variant}/{index}"


def score_rows(segmenter: Segmenter, x: torch.Tensor, adv: torch.Tensor, truth: np.ndarray,
               goal: np.ndarray, targeted: bool) -> list[dict[str, Any]]:
    """Metrics of the clean and adversarial predictions against target and truth, per image."""
    k = segmenter.num_classes
    clean_pred = segmenter.predict_tensor(x.to(segmenter.device)).cpu().numpy()
    adv_pred = segmenter.predict_tensor(adv.to(segmenter.device)).cpu().numpy()
    vs_truth = per_image_metrics(adv_pred, truth, k)
    clean_truth = per_image_metrics(clean_pred, truth, k)
    vs_target = per_image_metrics(adv_pred, goal, k) if targeted else None
    clean_target = per_image_metrics(clean_pred, goal, k) if targeted else None
    norms = perturbation_norms(adv.cpu(), x.cpu())
    rows = []
    for j in range(x.shape[0]):
        def t(m: dict[str, np.ndarray] | None, key: str, j: int = j) -> float | None:
            return None if m is None else float(m[key][j])

        rows.append({
            "truth_fg": float((truth[j] > 0).mean()),
            "target_fg": float((goal[j] > 0).mean()) if targeted else None,
            "target_changed": float((goal[j] != truth[j]).mean()) if targeted else None,
            "iou_target": t(vs_target, "iou"), "pa_target": t(vs_target, "pixel_accuracy"),
            "dice_target": t(vs_target, "dice"),
            "iou_truth": t(vs_truth, "iou"), "pa_truth": t(vs_truth, "pixel_accuracy"),
            "dice_truth": t(vs_truth, "dice"),
            "clean_iou_target": t(clean_target, "iou"),
            "clean_pa_target": t(clean_target, "pixel_accuracy"),
            "clean_iou_truth": t(clean_truth, "iou"), "clean_dice_truth": t(clean_truth, "dice"),
            "l2": float(norms["l2"][j]), "linf": float(norms["linf"][j]),
            "_adv_pred": adv_pred[j],
        })
    return rows


def save_example(folder: Path, item: str | int, x: torch.Tensor, adv: torch.Tensor,
                 truth: np.ndarray, goal: np.ndarray, adv_pred: np.ndarray) -> str:
    """Compressed npz with the clean image (uint8 HWC), the perturbation (float16 CHW), the
    masks and the adversarial prediction: all the report's panels need, even if the data moved."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{str(item).replace('/', '_')}.npz"
    image = (x.detach().cpu().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    np.savez_compressed(path, image=image, perturbation=(adv - x).cpu().numpy().astype(np.float16),
                        truth=truth.astype(np.uint8), target=goal.astype(np.uint8),
                        adversarial_prediction=adv_pred.astype(np.uint8))
    return str(path.resolve())


@dataclass
class SegContext:
    """What a worker needs: the segmenter, the images, truth and goal masks, and the attack."""

    segmenter: Segmenter
    images: np.ndarray
    masks: np.ndarray
    goals: dict[int, tuple[np.ndarray, int | None]]
    attack: AttackFn
    targeted: bool
    show: set[int]


def segmentation_context(segmenter: Segmenter, data: dict[str, Any], params: dict[str, Any]
                         ) -> SegContext:
    from medrobust.campaigns.recipes import build_attack
    from medrobust.campaigns.seg_attacks import attack_fn

    recipe = params["attack"]
    att = build_attack(segmenter, recipe["attack"])
    budgets = None if recipe["budgets"] is None else {
        int(k): float(v) for k, v in recipe["budgets"].items()}
    return SegContext(segmenter, data["images"], data["masks"], data["goals"],
                      attack_fn(att, budgets),
                      bool(params["targeted"]), set(params["show"]))


def segmentation_chunk(ctx: SegContext, chunk: list[int], emit: Any
                       ) -> tuple[list[tuple[int, dict[str, Any]]], None]:
    """Attack one chunk of dataset indices; one row per image, and for the example images the
    arrays of their panel (``_example``: the driver writes the file)."""
    idx = np.asarray(chunk, dtype=np.int64)
    x = ctx.segmenter.to_tensor(ctx.images[idx])
    truth = ctx.masks[idx]
    goal = np.stack([ctx.goals[i][0] for i in chunk]).astype(np.int64)
    t0 = time.perf_counter()
    adv, iterations = ctx.attack(x, torch.from_numpy(goal), chunk)
    seconds = (time.perf_counter() - t0) / len(chunk)
    rows = score_rows(ctx.segmenter, x, adv, truth, goal, ctx.targeted)
    out = []
    for j, (i, row) in enumerate(zip(chunk, rows, strict=True)):
        adv_pred = row.pop("_adv_pred")
        row.update(dataset_index=i, target_source=ctx.goals[i][1],
                   iterations=int(iterations[j]), seconds=seconds)
        if i in ctx.show:
            row["_example"] = (x[j].cpu(), adv[j].cpu(), truth[j], goal[j], adv_pred)
        out.append((i, row))
    return out, None


def attack_recipe(attack: AttackFn) -> dict[str, Any]:
    """The recipe of an ``attack_fn`` (its attack and per-image budgets)."""
    from medrobust.campaigns.recipes import recipe_of

    source = getattr(attack, "source", None)
    if source is None:
        raise ConfigError("this segmentation attack is a plain function: it cannot be rebuilt "
                          "on a Ray worker (run with --executor local)")
    att, budgets = source
    return {"attack": recipe_of(att), "budgets": None if budgets is None else {
        str(k): float(v) for k, v in budgets.items()}}


def run_segmentation_campaign(
        store: Store, segmenter: Segmenter, model_info: dict[str, Any],
        dataset: SegmentationDataset, attack: AttackFn, attack_name: str, command: str,
        params: dict[str, Any], indices: Sequence[int], target: TargetSpec | None,
        variant: str | None = None, run_id: int | None = None, budgets_l2: dict[int, float] |
        None = None, batch_images: int = 16, examples: int = 8, resume: bool = True,
        show_progress: bool = True, executor: Executor | None = None) -> CampaignOutcome:
    """Attack ``dataset[indices]`` and record one row per image (per variant).

    ``run_id`` joins an already started run (the ablation records its variants in one run);
    otherwise a run is started from ``command``/``params`` (resumed when they match).
    ``budgets_l2`` is recorded per image when the attack's L2 budget was matched to another's.
    ``executor``: where the batches run (default: this process); Ray workers rebuild the attack
    of an ``attack_fn`` from its recipe.
    """
    own_run = run_id is None
    order = [int(i) for i in indices]
    index_of = {_item(variant, i): i for i in order}
    item_of = {i: k for k, i in index_of.items()}
    show = set(order[:max(0, examples)])
    recipe = None
    if is_remote(executor):  # refused here, before the run opens
        check_remote(executor, model_info.get("dir"))
        recipe = attack_recipe(attack)
    start = time.perf_counter()
    with batch_run(store, SEG_TABLE, command, params, model=model_info,
                   dataset={**dataset.spec, "split": dataset.split}, items=list(index_of),
                   size=batch_images, desc=f"{attack_name}{'/' + variant if variant else ''}",
                   resume=resume, show_progress=show_progress, join=run_id) as run:
        folder = artifacts_dir(store, run.run_id)
        pending = [index_of[k] for k in run.todo]
        goal_masks, sources = build_goals(dataset, pending, target) if pending else ([], [])
        goals = {i: (goal_masks[j], sources[j]) for j, i in enumerate(pending)}

        def finish(rows: list[tuple[int, dict[str, Any]]]) -> list[tuple[Any, dict[str, Any]]]:
            # the driver alone writes: the example panels and then the rows
            out = []
            for i, row in rows:
                example = row.pop("_example", None)
                item = item_of[i]
                out.append((item, {
                    **row, "name": dataset.names[i], "variant": variant, "attack": attack_name,
                    "target_mode": None if target is None else target.mode,
                    "budget_l2": None if budgets_l2 is None else budgets_l2.get(i),
                    "artifact": None if example is None else save_example(folder, item,
                                                                          *example)}))
            return out

        run.execute(Work(
            compute=segmentation_chunk,
            local=lambda: SegContext(segmenter, dataset.images, dataset.masks, goals, attack,
                                     target is not None, show),
            remote=segmentation_context,
            params={"attack": recipe, "targeted": target is not None, "show": sorted(show)},
            model_dir=model_info.get("dir", ""),
            data={"images": dataset.images, "masks": dataset.masks, "goals": goals}),
            executor, finish=finish, jobs=[[index_of[k] for k in c] for c in run.chunks()])
    run_id, resumed, pending_items = run.run_id, run.resumed, run.todo
    seconds = time.perf_counter() - start
    rows = [r for r in store.rows(SEG_TABLE, run_id=run_id)
            if variant is None or r["variant"] == variant]
    summary = summarise_segmentation(rows)
    summary["seconds_this_session"] = seconds
    if own_run:
        store.finish_run(run_id, "completed", summary)
    return CampaignOutcome(run_id, resumed, len(pending_items), seconds, summary)


def summarise_segmentation(rows: list[dict[str, Any]], success_iou: float = 0.9
                           ) -> dict[str, Any]:
    """Means over images of every metric, and the share reaching ``success_iou`` on the target."""
    out: dict[str, Any] = {"images": len(rows)}
    for key in MEAN_FIELDS:
        vals = [r[key] for r in rows if r.get(key) is not None]
        out[f"mean_{key}"] = float(np.mean(vals)) if vals else None
    hits = [r["iou_target"] >= success_iou for r in rows if r.get("iou_target") is not None]
    out["success_iou"] = success_iou
    out["success_rate"] = float(np.mean(hits)) if hits else None
    return out
