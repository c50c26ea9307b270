"""Confidence maps for many images as a resumable store campaign.

Each finished image is one committed row (with its .npz and figure on disk); an image in
progress is checkpointed to a partial .npz, so a killed campaign loses neither finished images
nor most of the one it was on.
"""

from __future__ import annotations

import time
from pathlib import Path

from medrobust.analysis.confidence_figure import save_confidence_figure
from medrobust.analysis.confidence_map import confidence_map
from medrobust.analysis.periodicity import map_parity
from medrobust.campaigns.base import CampaignOutcome, batch_run
from medrobust.data.base import ImageDataset
from medrobust.models.checkpoint import model_provenance
from medrobust.models.classifier import Classifier
from medrobust.store import ResultTable, Store

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


def run_map_campaign(store: Store, classifier: Classifier, model_dir: str | Path,
                     dataset: ImageDataset, indices: list[int], out_dir: str | Path,
                     step: int = 5, engine: str = "fast", score_class: int | None = None,
                     show_progress: bool = True) -> CampaignOutcome:
    """Map ``dataset[indices]``; the run's rows are ``store.rows(MAP_TABLE, run_id=...)``."""
    out = Path(out_dir).resolve()
    params = {"step": step, "engine": engine, "score_class": score_class,
              "indices": [int(i) for i in indices], "out": str(out)}
    model_info = model_provenance(model_dir, classifier)
    began = time.perf_counter()
    # one image per batch: a map takes minutes, so each is committed the moment it is done (the
    # map itself checkpoints partial results inside, see confidence_map's ``checkpoint``)
    with batch_run(store, MAP_TABLE, "map", params, model=model_info,
                   dataset={**dataset.spec, "split": dataset.split},
                   items=[int(i) for i in indices], size=1, desc="maps",
                   show_progress=show_progress) as run:
        for (i,) in run.batches():
            start = time.perf_counter()
            image, label = dataset.images[i], int(dataset.labels[i])
            cmap = confidence_map(classifier, image, label, step=step, score_class=score_class,
                                  engine=engine, checkpoint=out / f"map_{i}.partial.npz",
                                  show_progress=show_progress)
            npz = cmap.save(out / f"map_{i}.npz")
            (out / f"map_{i}.partial.npz").unlink(missing_ok=True)
            fig = save_confidence_figure(cmap, image, out / f"map_{i}.png",
                                         title=f"{dataset.name} {dataset.split} #{i}")
            best = cmap.best_attack()
            run.record(i, {
                "dataset_index": i, "label": label, "score_name": cmap.score_name,
                "clean_score": cmap.clean_score, "min_score": float(cmap.min.min()),
                "max_score": float(cmap.max.max()), "robust": int(cmap.robust),
                "successful_pixels": best["successful_pixels"], "best_x": best["x"],
                "best_y": best["y"], "best_colour": best["colour"], "best_score": best["score"],
                "parity_min": map_parity(cmap.min, "low"),
                "parity_max": map_parity(cmap.max, "high"),
                "npz": str(npz), "figure": str(fig), "engine": cmap.engine,
                "seconds": time.perf_counter() - start, "passes": cmap.passes})
    rows = store.rows(MAP_TABLE, run_id=run.run_id)
    summary = {"images": len(rows), "robust": sum(r["robust"] for r in rows)}
    store.finish_run(run.run_id, "completed", summary)
    return CampaignOutcome(run.run_id, run.resumed, len(run.todo),
                           time.perf_counter() - began, summary)
