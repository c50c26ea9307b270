"""Confidence maps for many images as a resumable store campaign.

Each finished image is one committed row (with its .npz and figure on disk); an image in
progress is checkpointed to a partial .npz, so a killed campaign loses neither finished images
nor most of the one it was on.

In process, each image is one job (the map checkpoints itself as it goes). On Ray, every image
is split into tiles of consecutive pixels (row-major), the (image, tile) jobs of all images run
across the workers, and the driver merges each tile into the image's partial map, checkpoints it
(the same file the in-process map resumes from) and records the image once its last tile is in.
A pixel's numbers depend only on the pixel (tiles are whole multiples of the engine's packing
group), so a tiled map equals the in-process one cell for cell.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medrobust.analysis.confidence_figure import save_confidence_figure
from medrobust.analysis.confidence_map import (
    ConfidenceMap,
    _State,
    confidence_map,
    map_key,
    packing_group,
)
from medrobust.analysis.periodicity import map_parity
from medrobust.campaigns.base import CampaignOutcome, batch_run
from medrobust.campaigns.executor import Executor, LocalExecutor, Work
from medrobust.data.base import ImageDataset
from medrobust.models.checkpoint import model_provenance
from medrobust.models.classifier import Classifier
from medrobust.store import ResultTable, Store
from medrobust.utils.validation import check_range

#: pixels per tile on Ray when not given (rounded up to whole packing groups)
TILE_PIXELS = 256

MAP_TABLE = ResultTable(
    "confidence_maps",
    {
        "dataset_index": "INTEGER", "label": "INTEGER", "score_name": "TEXT",
        "clean_score": "REAL", "min_score": "REAL", "max_score": "REAL", "robust": "INTEGER",
        "successful_pixels": "INTEGER", "best_x": "INTEGER", "best_y": "INTEGER",
        "best_colour": "JSON", "best_score": "REAL", "parity_min": "JSON", "parity_max": "JSON",
        "npz": "TEXT", "figure": "TEXT", "engine": "TEXT", "seconds": "REAL", "passes": "INTEGER",
    },
)


@dataclass
class MapContext:
    """What a worker needs to map pixels: the model, the images and the grid settings."""

    classifier: Classifier
    images: np.ndarray
    labels: np.ndarray
    step: int
    score_class: int | None
    engine: str
    out: Path
    show_progress: bool = False


def map_context(classifier: Classifier, data: dict[str, Any], params: dict[str, Any]
                ) -> MapContext:
    return MapContext(classifier, data["images"], data["labels"], int(params["step"]),
                      params["score_class"], str(params["engine"]), Path(params["out"]))


def map_job(ctx: MapContext, job: tuple[int, np.ndarray | None],
            emit: Callable[[Any, Any], None] | None) -> tuple[Any, None]:
    """One image's whole map (``pixels`` None: checkpointed as it goes), or the numbers of one
    tile's pixels (flat row-major indices) in their order."""
    i, pixels = job
    image, label = ctx.images[i], int(ctx.labels[i])
    if pixels is None:
        cmap = confidence_map(ctx.classifier, image, label, step=ctx.step,
                              score_class=ctx.score_class, engine=ctx.engine,
                              checkpoint=ctx.out / f"map_{i}.partial.npz",
                              show_progress=ctx.show_progress)
        return cmap, None
    w = image.shape[1]
    ys, xs = np.divmod(np.asarray(pixels, dtype=np.int64), w)
    cmap = confidence_map(ctx.classifier, image, label, step=ctx.step,
                          score_class=ctx.score_class, engine=ctx.engine,
                          pixels=list(zip(xs.tolist(), ys.tolist(), strict=True)))
    return {"min": cmap.min[ys, xs], "max": cmap.max[ys, xs], "mean": cmap.mean[ys, xs],
            "argmin": cmap.argmin_colour[ys, xs], "argmax": cmap.argmax_colour[ys, xs],
            "success": cmap.success[ys, xs], "clean_score": cmap.clean_score,
            "score_name": cmap.score_name, "objective": cmap.objective, "engine": cmap.engine,
            "seconds": cmap.seconds, "passes": cmap.passes}, None


class _TiledImage:
    """The driver's partial map of one image: tiles merged as they arrive, checkpointed."""

    def __init__(self, state: _State, checkpoint: Path) -> None:
        self.state, self.checkpoint = state, checkpoint
        self.outstanding = 0
        self.meta: dict[str, Any] = {}
        self.seconds = 0.0
        self.passes = 0

    def merge(self, pixels: np.ndarray, part: dict[str, Any]) -> None:
        st = self.state
        ys, xs = np.divmod(np.asarray(pixels, dtype=np.int64), st.min.shape[1])
        st.min[ys, xs], st.max[ys, xs], st.mean[ys, xs] = part["min"], part["max"], part["mean"]
        st.argmin[ys, xs], st.argmax[ys, xs] = part["argmin"], part["argmax"]
        st.success[ys, xs] = part["success"]
        st.done[ys, xs] = True
        self.seconds += float(part["seconds"])
        self.passes += int(part["passes"])
        engine = self.meta.get("engine")
        self.meta = {k: part[k] for k in ("clean_score", "score_name", "objective", "engine")}
        if engine == "reference":  # one tile's fallback holds for the map
            self.meta["engine"] = engine
        self.outstanding -= 1
        # Saved after every tile, unlike the in-process map's 20-second rhythm: a tile is
        # minutes of a worker's time and a save a few milliseconds, and a killed driver then
        # loses only the tiles still in flight.
        st.save(self.checkpoint)

    def finish(self, step: int, label: int) -> ConfidenceMap:
        st = self.state
        return ConfidenceMap(min=st.min, max=st.max, mean=st.mean, argmin_colour=st.argmin,
                             argmax_colour=st.argmax, success=st.success, step=step,
                             label=label, seconds=self.seconds, passes=self.passes, **self.meta)


def run_map_campaign(store: Store, classifier: Classifier, model_dir: str | Path,
                     dataset: ImageDataset, indices: list[int], out_dir: str | Path,
                     step: int = 5, engine: str = "fast", score_class: int | None = None,
                     show_progress: bool = True, executor: Executor | None = None,
                     tile_pixels: int | None = None) -> CampaignOutcome:
    """Map ``dataset[indices]``; the run's rows are ``store.rows(MAP_TABLE, run_id=...)``.

    ``executor``: in process (default), one image at a time; on Ray, (image, tile) jobs of
    ``tile_pixels`` pixels (default ``TILE_PIXELS``, rounded up to whole packing groups).
    """
    out = Path(out_dir).resolve()
    params = {"step": step, "engine": engine, "score_class": score_class,
              "indices": [int(i) for i in indices], "out": str(out)}
    model_info = model_provenance(model_dir, classifier)
    executor = executor or LocalExecutor()
    tiled = not isinstance(executor, LocalExecutor)
    if tile_pixels is not None:
        check_range("tile_pixels", tile_pixels, 1)
    began = time.perf_counter()
    # one image per batch: a map takes minutes, so each is committed the moment it is done (the
    # map itself checkpoints partial results inside, see confidence_map's ``checkpoint``)
    with batch_run(store, MAP_TABLE, "map", params, model=model_info,
                   dataset={**dataset.spec, "split": dataset.split},
                   items=[int(i) for i in indices], size=1, desc="maps",
                   show_progress=show_progress) as run:
        started: dict[int, float] = {}

        def record(i: int, cmap: ConfidenceMap, seconds: float) -> None:
            run.record(i, _save_map(dataset, i, cmap, out, seconds))
            run.advance()

        images: dict[int, _TiledImage] = {}
        jobs: list[tuple[int, np.ndarray | None]] = [(i, None) for i in run.todo]
        if tiled:
            images, jobs = _tile_jobs(classifier, dataset, run.todo, out, step, score_class,
                                      tile_pixels)

        def on_result(job: tuple[int, np.ndarray | None], result: Any, note: Any) -> None:
            i, pixels = job
            if pixels is None:
                record(i, result, time.perf_counter() - started.pop(i, began))
                return
            tile = images[i]
            tile.merge(pixels, result)
            if tile.outstanding == 0:
                record(i, tile.finish(step, int(dataset.labels[i])), tile.seconds)

        out.mkdir(parents=True, exist_ok=True)
        ctx_params = {"step": step, "score_class": score_class, "engine": engine,
                      "out": str(out)}

        def local() -> MapContext:
            return MapContext(classifier, dataset.images, dataset.labels, step, score_class,
                              engine, out, show_progress)

        def timed(ctx: MapContext, job: tuple[int, Any], emit: Any) -> tuple[Any, None]:
            started[job[0]] = time.perf_counter()
            return map_job(ctx, job, emit)

        work = Work(compute=map_job if tiled else timed, local=local, remote=map_context,
                    params=ctx_params, model_dir=model_dir,
                    data={"images": dataset.images, "labels": dataset.labels})
        executor.run(work, jobs, on_result)
        # an image whose every pixel was already in its partial map has no job: finish it here
        for i, tile in images.items():
            if tile.outstanding == 0 and not tile.meta:
                record(i, confidence_map_of(classifier, dataset, i, tile, step, score_class,
                                            engine), 0.0)
    rows = store.rows(MAP_TABLE, run_id=run.run_id)
    summary = {"images": len(rows), "robust": sum(r["robust"] for r in rows)}
    store.finish_run(run.run_id, "completed", summary)
    return CampaignOutcome(run.run_id, run.resumed, len(run.todo),
                           time.perf_counter() - began, summary)


def _save_map(dataset: ImageDataset, i: int, cmap: ConfidenceMap, out: Path,
              seconds: float) -> dict[str, Any]:
    """Write image i's finished map (.npz, figure), drop its partial file; its store row."""
    image, label = dataset.images[i], int(dataset.labels[i])
    npz = cmap.save(out / f"map_{i}.npz")
    (out / f"map_{i}.partial.npz").unlink(missing_ok=True)
    fig = save_confidence_figure(cmap, image, out / f"map_{i}.png",
                                 title=f"{dataset.name} {dataset.split} #{i}")
    best = cmap.strongest_change()
    return {
        "dataset_index": i, "label": label, "score_name": cmap.score_name,
        "clean_score": cmap.clean_score, "min_score": float(cmap.min.min()),
        "max_score": float(cmap.max.max()), "robust": int(cmap.robust),
        "successful_pixels": best["successful_pixels"], "best_x": best["x"],
        "best_y": best["y"], "best_colour": best["colour"], "best_score": best["score"],
        "parity_min": map_parity(cmap.min, "low"),
        "parity_max": map_parity(cmap.max, "high"),
        "npz": str(npz), "figure": str(fig), "engine": cmap.engine,
        "seconds": seconds, "passes": cmap.passes}


def _tile_jobs(classifier: Classifier, dataset: ImageDataset, todo_images: list[int], out: Path,
               step: int, score_class: int | None, tile_pixels: int | None
               ) -> tuple[dict[int, _TiledImage], list[tuple[int, np.ndarray | None]]]:
    """Each image's partial map (resumed from its checkpoint) and the (image, tile) jobs of the
    pixels it still lacks."""
    images: dict[int, _TiledImage] = {}
    jobs: list[tuple[int, np.ndarray | None]] = []
    group = packing_group(step, dataset.channels)
    size = -(-(tile_pixels or TILE_PIXELS) // group) * group
    for i in todo_images:
        image, label = dataset.images[i], int(dataset.labels[i])
        h, w, c = image.shape
        ckpt = out / f"map_{i}.partial.npz"
        state = _State.start(h, w, c, ckpt, map_key(classifier, image, label, step,
                                                     score_class))
        images[i] = _TiledImage(state, ckpt)
        todo = np.flatnonzero(~state.done.reshape(-1))
        # tiles keep their place in the whole image's order, so a resumed map's
        # remaining pixels are cut where a fresh map's tiles are
        for s in range(0, h * w, size):
            part = todo[(todo >= s) & (todo < s + size)]
            if part.size:
                jobs.append((i, part))
                images[i].outstanding += 1
    return images, jobs


def confidence_map_of(classifier: Classifier, dataset: ImageDataset, i: int, tile: _TiledImage,
                      step: int, score_class: int | None, engine: str) -> ConfidenceMap:
    """A map whose partial file already held every pixel: ``confidence_map`` reads it back
    (nothing left to score) and supplies the clean score and names."""
    return confidence_map(classifier, dataset.images[i], int(dataset.labels[i]), step=step,
                          score_class=score_class, engine=engine, checkpoint=tile.checkpoint)
