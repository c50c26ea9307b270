"""The ASMA ablation at matched perturbation size: static mask, adaptive mask, adaptive mask with
the multiplier (ASMA) and targeted PGD, on the same images and targets.

How the size is matched: ASMA (adaptive mask + multiplier, the reference) runs first; every other
method then gets, per image, an L2 budget equal to the L2 of ASMA's perturbation on that image
(``eps_l2`` for the mask variants, which also keep ASMA's Linf ball; ``eps`` of an L2 PGD). So
each method spends at most the reference's L2 on each image and the table shows who gets closer
to the target with it. The variants without the multiplier keep m = tau for every step, as in
the paper's ablation; PGD gets as many gradient steps as ASMA and minimises the pixel-wise
cross-entropy to the target. All variants are recorded in one run, one row per (variant, image),
so the ablation resumes like any campaign.
"""

from __future__ import annotations

import copy
import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medrobust.attacks.asma import ASMA
from medrobust.attacks.losses import cross_entropy
from medrobust.attacks.pgd import PGD
from medrobust.attacks.seg_targets import TargetSpec
from medrobust.campaigns.executor import Executor
from medrobust.campaigns.seg_attacks import attack_fn
from medrobust.campaigns.segmentation import (
    SEG_TABLE,
    artifacts_dir,
    run_segmentation_campaign,
    summarise_segmentation,
)
from medrobust.data.segmentation import SegmentationDataset
from medrobust.models.segmenter import Segmenter
from medrobust.store import Store
from medrobust.utils.markdown import markdown_table

VARIANTS = ("static", "adaptive", "asma", "pgd")
LABELS = {"static": "static mask (SSM)", "adaptive": "adaptive mask (ASM)",
          "asma": "adaptive mask + multiplier (ASMA)", "pgd": "targeted PGD-L2 (CE)"}
COMMAND = "attack asma-ablation"


def variant_attacks(segmenter: Segmenter, reference: ASMA) -> dict[str, Any]:
    """The three matched variants built from the reference's settings (budgets added later)."""
    static = copy.copy(reference)
    static.mask, static.dynamic = "static", False
    adaptive = copy.copy(reference)
    adaptive.dynamic = False
    pgd = PGD(segmenter, loss=cross_entropy, norm="l2", eps=0.0, steps=reference.iterations,
              targeted=True, batch_size=reference.batch_size, seed=reference.seed)
    return {"static": static, "adaptive": adaptive, "pgd": pgd}


def run_asma_ablation(store: Store, segmenter: Segmenter, model_info: dict[str, Any],
                      dataset: SegmentationDataset, reference: ASMA, indices: Sequence[int],
                      target: TargetSpec, batch_images: int = 16, examples: int = 4,
                      resume: bool = True, show_progress: bool = True,
                      out_dir: str | Path | None = None,
                      executor: Executor | None = None) -> dict[str, Any]:
    """Run all four variants; write ``ablation.csv`` / ``ablation.md``; return the summary.
    ``executor``: where each variant's batches run (default: this process)."""
    others = variant_attacks(segmenter, reference)
    params = {"reference": reference.params(),
              "variants": {k: v.params() for k, v in others.items()},
              "matching": "per-image L2 of the reference (asma)", "target": target.describe(),
              "indices": [int(i) for i in indices]}
    run_id, resumed = store.start_run(COMMAND, params, model=model_info,
                                      dataset={**dataset.spec, "split": dataset.split},
                                      resume=resume)
    common = dict(store=store, segmenter=segmenter, model_info=model_info, dataset=dataset,
                  command=COMMAND, params=params, indices=indices, target=target,
                  run_id=run_id, batch_images=batch_images, examples=examples,
                  show_progress=show_progress, executor=executor)
    with store.guard(run_id):
        run_segmentation_campaign(attack=attack_fn(reference), attack_name="asma",
                                  variant="asma", **common)
        ref_rows = [r for r in store.rows(SEG_TABLE, run_id=run_id) if r["variant"] == "asma"]
        budgets = {int(r["dataset_index"]): float(r["l2"]) for r in ref_rows}
        for name in ("static", "adaptive", "pgd"):
            att = others[name]
            fn = attack_fn(att, budgets)
            run_segmentation_campaign(attack=fn, attack_name=att.name, variant=name,
                                      budgets_l2=budgets, **common)
    rows = store.rows(SEG_TABLE, run_id=run_id)
    table = ablation_table(rows)
    out = Path(out_dir) if out_dir is not None else artifacts_dir(store, run_id)
    files = write_ablation(table, out)
    summary = {"ablation": table, "files": files, "matching": params["matching"],
               "images": len(set(int(i) for i in indices))}
    store.finish_run(run_id, "completed", summary)
    return {"run_id": run_id, "resumed": resumed, **summary}


def ablation_table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One summary row per variant, in VARIANTS order."""
    table = []
    for name in VARIANTS:
        group = [r for r in rows if r.get("variant") == name]
        if not group:
            continue
        s = summarise_segmentation(group)
        table.append({"variant": name, "method": LABELS[name], "images": s["images"],
                      "target_iou": s["mean_iou_target"], "target_pa": s["mean_pa_target"],
                      "success_rate": s["success_rate"], "truth_iou": s["mean_iou_truth"],
                      "truth_dice": s["mean_dice_truth"], "l2": s["mean_l2"],
                      "linf": s["mean_linf"], "clean_target_iou": s["mean_clean_iou_target"]})
    return table


COLUMNS = [("method", "Method"), ("images", "Images"), ("target_iou", "Target IoU"),
           ("target_pa", "Target PA"), ("success_rate", "IoU>=0.9"),
           ("truth_iou", "Truth IoU"), ("truth_dice", "Truth Dice"), ("l2", "Mean L2"),
           ("linf", "Mean Linf")]


def ablation_markdown(table: list[dict[str, Any]]) -> str:
    """The ablation table as Markdown, numbers right-aligned."""
    return markdown_table([h for _, h in COLUMNS], [[r.get(k) for k, _ in COLUMNS] for r in table],
                          align=["l" if k == "method" else "r" for k, _ in COLUMNS])


def write_ablation(table: list[dict[str, Any]], out_dir: str | Path) -> dict[str, str]:
    """``ablation.csv`` and ``ablation.md`` in ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out / "ablation.csv", out / "ablation.md"
    with csv_path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(table[0]) if table else ["variant"])
        writer.writeheader()
        writer.writerows(table)
    md_path.write_text(ablation_markdown(table))
    return {"csv": str(csv_path.resolve()), "markdown": str(md_path.resolve())}
