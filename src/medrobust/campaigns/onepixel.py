"""One-pixel campaigns: attack a dataset split, record every image in the store, resume after a kill.

Each image's result is committed the moment that image finishes (not at the end of its batch), so
a killed campaign loses only the images still running, and the next start attacks exactly the
ones missing. Per-image random streams are keyed by dataset index, so a resumed campaign gives
the same results as an uninterrupted one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medrobust.analysis.chromatic import colour_distance, neighbour_mean
from medrobust.attacks.onepixel import OnePixel, OnePixelResult
from medrobust.campaigns.base import CampaignOutcome, batch_run
from medrobust.campaigns.executor import Executor, Work
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


@dataclass
class OnePixelContext:
    """What a worker needs to attack a chunk: the model's head, the images and the attack."""

    images: np.ndarray
    labels: np.ndarray
    head: str
    attack: OnePixel
    targets: dict[int, int] | None
    #: in process: moves the campaign's bar as generations run (None on workers)
    tick: Callable[[float], None] | None = None


def attack_kwargs(attack: OnePixel) -> dict[str, Any]:
    """The keyword arguments that rebuild ``attack`` on a worker (plain JSON)."""
    kw = attack.params()
    kw["threshold"] = kw.pop("thresholds")
    kw["max_batch_images"] = attack.max_batch_images
    return kw


def onepixel_context(classifier: Classifier, data: dict[str, Any], params: dict[str, Any]
                     ) -> OnePixelContext:
    """A worker's context: the attack rebuilt from its parameters around the worker's model."""
    targets = params["targets"]
    return OnePixelContext(data["images"], data["labels"], classifier.head,
                           OnePixel(classifier, **params["attack"]),
                           None if targets is None else {int(k): int(v)
                                                         for k, v in targets.items()})


def attack_chunk(ctx: OnePixelContext, chunk: list[int],
                 emit: Callable[[Any, Any], None] | None) -> tuple[list[Any], list[str]]:
    """Attack one chunk of dataset indices: each row goes to ``emit`` the moment its image
    finishes (in process), or comes back with the chunk (workers); the note names the engines
    that scored it."""
    idx = np.asarray(chunk)
    tg = None if ctx.targets is None else np.asarray([ctx.targets[i] for i in chunk])
    rows: list[tuple[int, dict[str, Any]]] = []

    def record(pos: int, result: OnePixelResult) -> None:
        # each image commits the moment it finishes: DE on a batch takes minutes
        i = chunk[pos]
        row = result_row(result, ctx.images[i], i, ctx.head)
        if emit is None:
            rows.append((i, row))
        else:
            emit(i, row)

    ctx.attack(ctx.images[idx], ctx.labels[idx], targets=tg, keys=chunk, on_result=record,
               on_progress=ctx.tick if emit is not None else None)
    return rows, sorted(ctx.attack.engines_used)


def run_onepixel_campaign(store: Store, classifier: Classifier, model_dir: str | Path,
                          dataset: ImageDataset, attack: OnePixel, indices: list[int],
                          targets: dict[int, int] | None = None, batch_images: int = 32,
                          resume: bool = True, show_progress: bool = True,
                          executor: Executor | None = None) -> CampaignOutcome:
    """Attack ``dataset[indices]`` and record each image; returns the run's summary.

    ``executor``: where the chunks of ``batch_images`` run (default: this process, each image
    committed as it finishes; with Ray, each chunk as it comes back)."""
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
        work = Work(
            compute=attack_chunk,
            local=lambda: OnePixelContext(dataset.images, dataset.labels, classifier.head,
                                          attack, targets, tick=run.advance),
            remote=onepixel_context,
            params={"attack": attack_kwargs(attack), "targets": params["targets"]},
            model_dir=model_dir, data={"images": dataset.images, "labels": dataset.labels})
        run.execute(work, executor, on_note=engines.update)
    run_id, resumed, todo = run.run_id, run.resumed, run.todo
    seconds = time.perf_counter() - start
    summary = summarise_onepixel(store.rows(ONEPIXEL_TABLE, run_id=run_id))
    summary["engine"] = attack.engine
    # every engine that scored this run's images, earlier sessions of a resumed run included
    before = (store.get_run(run_id).get("summary") or {}) if resumed else {}
    summary["engines_used"] = sorted(engines | set(before.get("engines_used", [])))
    summary["seconds_this_session"] = seconds
    # a rerun with nothing left keeps the rate of the session that did the work
    summary["images_per_second"] = len(todo) / seconds if seconds > 0 and todo \
        else before.get("images_per_second")
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
