"""One-pixel campaigns: attack a dataset split, record every image in the store, resume after a kill.

Each image's result is committed the moment that image finishes (not at the end of its batch), so
a killed campaign loses only the images still running, and the next start attacks exactly the
ones missing. Per-image random streams are keyed by dataset index, so a resumed campaign gives
the same results as an uninterrupted one.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from medrobust.analysis.chromatic import colour_distance, neighbour_mean
from medrobust.attacks.onepixel import OnePixel, OnePixelResult
from medrobust.campaigns.base import CampaignOutcome, batch_run
from medrobust.data.base import ImageDataset
from medrobust.models.checkpoint import model_provenance
from medrobust.models.classifier import Classifier
from medrobust.store import ResultTable, Store
from medrobust.utils.validation import check_range

ONEPIXEL_TABLE = ResultTable(
    "onepixel_results",
    {
        "dataset_index": "INTEGER",
        "status": "TEXT",
        "success": "INTEGER",
        "direction": "TEXT",
        "label": "INTEGER",
        "target": "INTEGER",
        "queries": "INTEGER",
        "generations": "INTEGER",
        "x": "INTEGER",
        "y": "INTEGER",
        "pixels": "JSON",
        "colours": "JSON",
        "original_colours": "JSON",
        "neighbour_means": "JSON",
        "h": "REAL",
        "original_scores": "JSON",
        "final_scores": "JSON",
        "original_score": "REAL",
        "final_score": "REAL",
        "score_change": "REAL",
        "seconds": "REAL",
    },
)


def tracked_score(result: OnePixelResult, head: str, scores: list[float]) -> float:
    """The number the attack moves: P(positive) for sigmoid heads, else P(label) or P(target)."""
    if head == "sigmoid":
        return float(scores[1])
    cls = result.target if result.target is not None else result.label
    return float(scores[cls])


def result_row(result: OnePixelResult, image: np.ndarray, index: int, head: str
               ) -> dict[str, Any]:
    """Flatten a result into the store row, adding the chromatic measure from the clean image."""
    means = [neighbour_mean(image, x, y).tolist() for x, y in result.pixels]
    first = result.pixels[0] if result.pixels else (None, None)
    h = colour_distance(result.colours[0], means[0]) if result.pixels else None
    before = tracked_score(result, head, result.original_scores)
    after = tracked_score(result, head, result.final_scores)
    return {
        "dataset_index": index, "status": result.status, "success": int(result.success),
        "direction": result.direction, "label": result.label, "target": result.target,
        "queries": result.queries, "generations": result.generations,
        "x": first[0], "y": first[1], "pixels": result.pixels, "colours": result.colours,
        "original_colours": result.original_colours, "neighbour_means": means, "h": h,
        "original_scores": result.original_scores, "final_scores": result.final_scores,
        "original_score": before, "final_score": after, "score_change": after - before,
        "seconds": result.seconds,
    }


def run_onepixel_campaign(store: Store, classifier: Classifier, model_dir: str | Path,
                          dataset: ImageDataset, attack: OnePixel, indices: list[int],
                          targets: dict[int, int] | None = None, batch_images: int = 32,
                          resume: bool = True, show_progress: bool = True) -> CampaignOutcome:
    """Attack ``dataset[indices]`` and record each image; returns the run's summary."""
    check_range("batch_images", batch_images, 1)
    params = {"attack": attack.params(), "indices": [int(i) for i in indices],
              "targets": None if targets is None else {str(k): v for k, v in targets.items()}}
    model_info = model_provenance(model_dir, classifier)
    start = time.perf_counter()
    engines: set[str] = set()  # what actually scored (a fallback is recorded, not hidden)
    with batch_run(store, ONEPIXEL_TABLE, "attack onepixel", params, model=model_info,
                   dataset={**dataset.spec, "split": dataset.split},
                   items=[int(i) for i in indices], size=batch_images,
                   desc="one-pixel campaign", resume=resume,
                   show_progress=show_progress) as run:
        for chunk in run.batches():
            idx = np.asarray(chunk)
            tg = None if targets is None else np.asarray([targets[i] for i in chunk])

            def record(pos: int, result: OnePixelResult, chunk: list[int] = chunk) -> None:
                # each image commits the moment it finishes: DE on a batch takes minutes
                i = chunk[pos]
                run.record(i, result_row(result, dataset.images[i], i, classifier.head))
                run.advance()

            attack(dataset.images[idx], dataset.labels[idx], targets=tg, keys=chunk,
                   on_result=record)
            engines |= attack.engines_used
    run_id, resumed, todo = run.run_id, run.resumed, run.todo
    seconds = time.perf_counter() - start
    summary = summarise_onepixel(store.rows(ONEPIXEL_TABLE, run_id=run_id))
    summary["engine"] = attack.engine
    # every engine that scored this run's images, earlier sessions of a resumed run included
    before = (store.get_run(run_id).get("summary") or {}) if resumed else {}
    summary["engines_used"] = sorted(engines | set(before.get("engines_used", [])))
    summary["seconds_this_session"] = seconds
    summary["images_per_second"] = len(todo) / seconds if seconds > 0 and todo else None
    store.finish_run(run_id, "completed", summary)
    return CampaignOutcome(run_id, resumed, len(todo), seconds, summary)


def summarise_onepixel(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Success rate overall, per direction and per class; mean queries of attacked images."""
    attacked = [r for r in rows if r["status"] != "skipped"]

    def rate(group: list[dict[str, Any]]) -> dict[str, Any]:
        n = len(group)
        ok = sum(r["success"] for r in group)
        return {"attacked": n, "successes": ok, "success_rate": ok / n if n else None,
                "mean_queries": float(np.mean([r["queries"] for r in group])) if n else None}

    by_direction = {d: rate([r for r in attacked if r["direction"] == d])
                    for d in sorted({r["direction"] for r in attacked})}
    by_label = {str(lbl): rate([r for r in attacked if r["label"] == lbl])
                for lbl in sorted({r["label"] for r in attacked})}
    return {"images": len(rows), "skipped": len(rows) - len(attacked), **rate(attacked),
            "by_direction": by_direction, "by_label": by_label}
