"""Evaluating a denoising defence on the one-pixel adversarial images of a store, resumably.

For every attacked image of a one-pixel run: image quality (MSE, PSNR, SSIM against the clean
image) of the attacked and of the denoised image, and the prediction without and with the
defence. For the clean images of the split: the prediction with the defence and how much the
defence changes them. Each item is committed to the ``defence_results`` table as it is done, so a
killed evaluation resumes where it stopped; the run's summary holds the table row.

Definitions (stated in the report): *fooled* = the attack reported success and the undefended
model, re-scored on the rebuilt image, gets it wrong; *recovery rate* = share of fooled images the
defended model classifies correctly; *adversarial accuracy* = accuracy over all attacked images
(failed attacks included); *clean accuracy* = accuracy over the clean split.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from medrobust.campaigns.base import CampaignOutcome, batch_run
from medrobust.campaigns.executor import Executor, Work, check_remote
from medrobust.defences.base import Denoiser
from medrobust.defences.registry import dataset_name, denoiser_label
from medrobust.defences.source import AttackedSet
from medrobust.metrics.image_quality import quality
from medrobust.models.classifier import Classifier
from medrobust.store import ResultTable, Store

DEFEND_COMMAND = "defend"

DEFENCE_TABLE = ResultTable(
    "defence_results",
    {
        "dataset_index": "INTEGER",
        "kind": "TEXT",  # adversarial | clean
        "status": "TEXT",  # the attack's status for adversarial items
        "label": "INTEGER",
        "pred_plain": "INTEGER",
        "pred_defended": "INTEGER",
        "mse_attacked": "REAL",
        "psnr_attacked": "REAL",
        "ssim_attacked": "REAL",
        "mse_denoised": "REAL",
        "psnr_denoised": "REAL",
        "ssim_denoised": "REAL",
    },
)


def _mean(values: Sequence[float | None]) -> float | None:
    vals = [float(v) for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def _rows_for(kind: str, indices: np.ndarray, labels: np.ndarray, status: list[str | None],
              clean: np.ndarray, attacked: np.ndarray | None, clf: Classifier,
              denoiser: Denoiser) -> list[tuple[str, dict[str, Any]]]:
    """Rows of one batch; the defended prediction scores the float denoised image (no rounding)."""
    source = attacked if attacked is not None else clean
    denoised = denoiser.denoise(source.astype(np.float32) / 255.0)
    pred_plain = clf.predict(source)
    pred_def = clf.predict(denoised)
    q_den = quality(clean, denoised)
    q_att = quality(clean, attacked) if attacked is not None else None
    out = []
    for j, i in enumerate(indices.tolist()):
        row = {"dataset_index": i, "kind": kind, "status": status[j], "label": int(labels[j]),
               "pred_plain": int(pred_plain[j]), "pred_defended": int(pred_def[j]),
               "mse_denoised": float(q_den["mse"][j]), "psnr_denoised": float(q_den["psnr"][j]),
               "ssim_denoised": float(q_den["ssim"][j])}
        if q_att is not None:
            row.update(mse_attacked=float(q_att["mse"][j]), psnr_attacked=float(q_att["psnr"][j]),
                       ssim_attacked=float(q_att["ssim"][j]))
        out.append((f"{'adv' if kind == 'adversarial' else 'clean'}:{i}", row))
    return out


def summarise_defence(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The table row of one defence from its stored per-item rows."""
    adv = [r for r in rows if r["kind"] == "adversarial"]
    clean = [r for r in rows if r["kind"] == "clean"]
    fooled = [r for r in adv if r["status"] == "success" and r["pred_plain"] != r["label"]]
    recovered = sum(r["pred_defended"] == r["label"] for r in fooled)

    def acc(group: list[dict[str, Any]], key: str) -> float | None:
        return float(np.mean([r[key] == r["label"] for r in group])) if group else None

    def q(group: list[dict[str, Any]], which: str) -> dict[str, float | None]:
        return {m: _mean([r[f"{m}_{which}"] for r in group]) for m in ("mse", "psnr", "ssim")}

    clean_plain, clean_def = acc(clean, "pred_plain"), acc(clean, "pred_defended")
    return {
        "attacked": len(adv), "fooled": len(fooled), "recovered": int(recovered),
        "recovery_rate": recovered / len(fooled) if fooled else None,
        "adversarial_accuracy_plain": acc(adv, "pred_plain"),
        "adversarial_accuracy_defended": acc(adv, "pred_defended"),
        "clean_images": len(clean), "clean_accuracy_plain": clean_plain,
        "clean_accuracy_defended": clean_def,
        "clean_accuracy_cost": None if clean_plain is None or clean_def is None
        else clean_plain - clean_def,
        "quality_attacked": q(fooled, "attacked"), "quality_denoised": q(fooled, "denoised"),
        "quality_clean_denoised": q(clean, "denoised"),
    }


@dataclass
class DefenceContext:
    """What a worker needs: the classifier, the denoiser and the images of both kinds."""

    classifier: Classifier
    denoiser: Denoiser
    data: dict[str, Any]


def defence_context(classifier: Classifier, data: dict[str, Any], params: dict[str, Any]
                    ) -> DefenceContext:
    from medrobust.defences.registry import rebuild_denoiser

    return DefenceContext(classifier, rebuild_denoiser(params["denoiser"], classifier.device),
                          data)


def defence_chunk(ctx: DefenceContext, batch: list[str], emit: Any
                  ) -> tuple[list[tuple[str, dict[str, Any]]], None]:
    """One batch of ``adv:i`` / ``clean:i`` items."""
    d = ctx.data
    adv_i = np.asarray([int(t[4:]) for t in batch if t.startswith("adv:")], np.int64)
    cln_i = np.asarray([int(t[6:]) for t in batch if t.startswith("clean:")], np.int64)
    rows: list[tuple[str, dict[str, Any]]] = []
    if adv_i.size:
        sel = np.asarray([d["pos"][i] for i in adv_i.tolist()])
        rows += _rows_for("adversarial", adv_i, d["labels"][sel],
                          [d["status"][j] for j in sel], d["clean"][sel],
                          d["adversarial"][sel], ctx.classifier, ctx.denoiser)
    if cln_i.size:
        rows += _rows_for("clean", cln_i, d["ds_labels"][cln_i], [None] * cln_i.size,
                          d["ds_images"][cln_i], None, ctx.classifier, ctx.denoiser)
    return rows, None


def evaluate_defence(store: Store, classifier: Classifier, denoiser: Denoiser, attacked: AttackedSet,
                     clean_indices: Sequence[int] | None = None, batch_size: int = 64,
                     resume: bool = True, show_progress: bool = True,
                     executor: Executor | None = None) -> CampaignOutcome:
    """Evaluate ``denoiser`` in front of ``classifier`` on a one-pixel run's images.

    ``clean_indices``: clean images of the run's split for clean accuracy (default: all of it).
    ``executor``: where the batches run (default: this process); Ray workers load the classifier
    from the run's checkpoint folder and rebuild the denoiser from its spec.
    """
    run = attacked.run
    model_dir = (run.get("model") or {}).get("dir")
    check_remote(executor, model_dir)
    ds = attacked.dataset
    clean_idx = np.arange(len(ds)) if clean_indices is None else np.asarray(clean_indices, np.int64)
    params = {"source_run": run["id"], "denoiser": denoiser.spec(),
              "clean": "all" if clean_indices is None else clean_idx.tolist()}
    start = time.perf_counter()
    pos = {int(i): j for j, i in enumerate(attacked.indices.tolist())}
    items = [f"adv:{i}" for i in attacked.indices.tolist()] + [f"clean:{i}" for i in clean_idx]
    data = {"pos": pos, "labels": attacked.labels, "status": list(attacked.status),
            "clean": attacked.clean, "adversarial": attacked.adversarial,
            "ds_labels": ds.labels, "ds_images": ds.images}
    with batch_run(store, DEFENCE_TABLE, DEFEND_COMMAND, params, model=run.get("model"),
                   dataset=run.get("dataset"), items=items, size=batch_size,
                   desc=f"defend {denoiser.name}", resume=resume,
                   show_progress=show_progress) as br:
        br.execute(Work(compute=defence_chunk,
                        local=lambda: DefenceContext(classifier, denoiser, data),
                        remote=defence_context, params={"denoiser": denoiser.spec()},
                        model_dir=model_dir or "", data=data), executor)
    run_id, resumed, todo = br.run_id, br.resumed, br.todo
    summary = {"denoiser": denoiser.spec(), "label": denoiser_label(denoiser.spec()),
               "dataset": dataset_name(run.get("dataset")), "source_run": run["id"],
               **summarise_defence(store.rows(DEFENCE_TABLE, run_id=run_id))}
    store.finish_run(run_id, "completed", summary)
    return CampaignOutcome(run_id, resumed, len(todo), time.perf_counter() - start, summary)
