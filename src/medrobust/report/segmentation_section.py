"""The report's segmentation-attack section: per-run metrics, the ablation table, and panels.

Each panel row shows what a reader needs to judge one attack: the image, its true mask, the
target mask, what the model predicts on the attacked image, and the perturbation (amplified, as
it is invisible at true scale). The panels come from the example files a campaign keeps beside
the store (``<store>_artifacts``), so the report needs neither the model nor the data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medrobust.report.blocks import Definitions, Figure, Note, Paragraphs, Section, Table, num, pct
from medrobust.report.context import ReportContext
from medrobust.report.plots import figure_to_data_uri
from medrobust.report.sections import run_title
from medrobust.tasks import DEFAULT_TASK, task_report
from medrobust.utils.images import to_rgb_uint8

SEG_TABLE_NAME = "segattack_results"
SEG_COMMANDS = ("attack asma", "attack asma-ablation", "attack pgd", "attack ifgsm")
MAX_PANELS = 6
VARIANT_ORDER = ("asma", "static", "adaptive", "pgd")


def segmentation_runs(ctx: ReportContext) -> list[dict[str, Any]]:
    """Runs that recorded segmentation attack rows."""
    out = []
    for run in ctx.runs_of(*SEG_COMMANDS):
        params = run.get("params") or {}
        spec = task_report(str(params.get("task") or DEFAULT_TASK))
        if run["command"] in ("attack pgd", "attack ifgsm") and (spec is None
                                                                 or spec.panel != "masks"):
            continue
        if "adv_dice" in (run.get("summary") or {}):
            continue  # a protocol campaign: its rows are in the task table (budget curves)
        out.append(run)
    return out


def _mean(rows: list[dict[str, Any]], key: str) -> float | None:
    vals = [r[key] for r in rows if r.get(key) is not None]
    return float(np.mean(vals)) if vals else None


def metrics_rows(rows: list[dict[str, Any]]) -> list[list[str]]:
    """One table row per variant (one row for plain runs)."""
    variants = sorted({r.get("variant") for r in rows},
                      key=lambda v: VARIANT_ORDER.index(v) if v in VARIANT_ORDER else 99)
    out = []
    for v in variants:
        group = [r for r in rows if r.get("variant") == v]
        hits = [r["iou_target"] >= 0.9 for r in group if r.get("iou_target") is not None]
        label = v or (group[0].get("attack") if group else "-")
        out.append([str(label), num(len(group)),
                    f"{num(_mean(group, 'clean_iou_target'))} \u2192 {num(_mean(group, 'iou_target'))}"
                    if _mean(group, "iou_target") is not None else "-",
                    num(_mean(group, "pa_target")),
                    pct(float(np.mean(hits))) if hits else "-",
                    f"{num(_mean(group, 'clean_iou_truth'))} \u2192 {num(_mean(group, 'iou_truth'))}",
                    num(_mean(group, "dice_truth")), num(_mean(group, "l2")),
                    num(_mean(group, "linf"))])
    return out


def _mask_rgb(mask: np.ndarray) -> np.ndarray:
    """Class masks as colours: background black, class 1 white, further classes coloured."""
    palette = np.array([[0, 0, 0], [255, 255, 255], [230, 80, 60], [60, 160, 230],
                        [240, 200, 50], [120, 200, 90]], dtype=np.uint8)
    return palette[np.clip(mask.astype(np.int64), 0, len(palette) - 1)]


def panel_figure(example: dict[str, np.ndarray], title: str) -> Any:
    """Image | truth | target | adversarial prediction | perturbation (amplified)."""
    from matplotlib.figure import Figure as MplFigure

    delta = example["perturbation"].astype(np.float32)  # (C,H,W)
    signed = delta.mean(axis=0)
    peak = float(np.abs(delta).max()) or 1.0
    fig = MplFigure(figsize=(11, 2.6))
    axes = fig.subplots(1, 5)
    panels = [(to_rgb_uint8(example["image"]), "image", None),
              (_mask_rgb(example["truth"]), "truth", None),
              (_mask_rgb(example["target"]), "target", None),
              (_mask_rgb(example["adversarial_prediction"]), "adversarial prediction", None),
              (signed, f"perturbation (\u00b1{peak:.3f})", "coolwarm")]
    for ax, (img, label, cmap) in zip(axes, panels, strict=True):
        if cmap:
            ax.imshow(img, cmap=cmap, vmin=-peak, vmax=peak, interpolation="nearest")
        else:
            ax.imshow(img, interpolation="nearest")
        ax.set_title(label, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def _load_example(path: str | None) -> dict[str, np.ndarray] | None:
    if not path or not Path(path).is_file():
        return None
    try:
        with np.load(path) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError):
        return None


def segmentation_section(ctx: ReportContext) -> Section | None:
    """Targeted and untargeted segmentation attacks, their ablation and example panels."""
    runs = segmentation_runs(ctx)
    if not runs or SEG_TABLE_NAME not in ctx.store.tables():
        return None
    section = Section("segmentation", "Segmentation attacks: can the model be made to draw a "
                                      "chosen mask?")
    section.add(Definitions([
        ("Target", "the mask the attacker wants the model to output, e.g. another patient's "
                   "true mask (a realistic but wrong finding) or the image's own mask with an "
                   "object erased."),
        ("Target IoU", "overlap of the predicted and the target foreground (intersection over "
                       "union): 1 = the model draws exactly the target. Shown clean \u2192 "
                       "attacked."),
        ("Target PA", "pixel accuracy against the target: share of pixels with the target's "
                      "class."),
        ("Truth IoU / Dice", "overlap with the true mask; a drop means the model no longer "
                             "sees what is there."),
        ("L2, Linf", "size of the perturbation on the 0-1 intensity scale: L2 over all pixels "
                     "and channels, Linf the largest change of any one value (0.1 = 10 % of "
                     "the intensity range, about 26 grey levels)."),
        ("Ablation", "static mask (SSM), adaptive mask (ASM), adaptive mask with the dynamic "
                     "multiplier (ASMA) and targeted PGD, each given per image at most the L2 "
                     "that ASMA used."),
    ]))
    for run in runs:
        sub = Section(f"segmentation-run-{run['id']}", run_title(run))
        ctx.cite(run["id"], sub.anchor, f"Segmentation attacks: run {run['id']}")
        if run["status"] != "completed":
            sub.add(Note(f"This run is '{run['status']}': the numbers cover only the images "
                         "finished so far.", "warning"))
        params = run.get("params") or {}
        attack = params.get("attack") or params.get("reference") or {}
        target = params.get("target") or {}
        settings = ", ".join(f"{k} {v}" for k, v in attack.items() if v is not None)
        sub.add(Paragraphs([f"Attack settings: {settings or '-'}. Target: "
                            f"{target.get('mode', 'none (untargeted)')}."]))
        rows = ctx.store.rows(SEG_TABLE_NAME, run_id=run["id"])
        if not rows:
            sub.add(Note("No results recorded for this run yet.", "warning"))
            section.subsections.append(sub)
            continue
        sub.add(Table(["Method", "Images", "Target IoU", "Target PA", "Target IoU \u2265 0.9",
                       "Truth IoU", "Truth Dice", "Mean L2", "Mean Linf"], metrics_rows(rows),
                      caption="Means over images"))
        shown = 0
        for row in sorted(rows, key=lambda r: (
                VARIANT_ORDER.index(r["variant"]) if r.get("variant") in VARIANT_ORDER else 0,
                r.get("dataset_index") or 0)):
            if shown >= MAX_PANELS:
                break
            example = _load_example(row.get("artifact"))
            if example is None:
                continue
            label = f" ({row['variant']})" if row.get("variant") else ""
            title = (f"{row.get('name') or row.get('dataset_index')}{label}: target IoU "
                     f"{num(row.get('clean_iou_target'))} \u2192 {num(row.get('iou_target'))}, "
                     f"truth IoU {num(row.get('clean_iou_truth'))} \u2192 "
                     f"{num(row.get('iou_truth'))}, L2 {num(row.get('l2'))}, Linf "
                     f"{num(row.get('linf'))}")
            sub.add(Figure(figure_to_data_uri(panel_figure(example, title)), title,
                           alt="segmentation attack panels"))
            shown += 1
        if shown == 0:
            sub.add(Note("No example panels: their files are missing (they live in the "
                         "store's _artifacts folder).", "info"))
        section.subsections.append(sub)
    return section
