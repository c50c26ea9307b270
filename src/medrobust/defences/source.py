"""The one-pixel adversarial images a defence is evaluated on, rebuilt from a store.

Images are not stored with attack results: the dataset is reloaded from the run's recorded spec
and each adversarial image is rebuilt by writing the recorded colours at the recorded pixels
(x = column, y = row). The recorded original colours are checked against the reloaded image, so
a dataset that changed since the attack fails loudly instead of evaluating the wrong pictures.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medrobust.analysis.study import ONEPIXEL_COMMAND, ONEPIXEL_TABLE_NAME, load_run_dataset
from medrobust.data.base import ImageDataset
from medrobust.errors import DataError, MedrobustError
from medrobust.store import Store


@dataclass
class AttackedSet:
    """The attacked images of one one-pixel run (skipped images excluded), in row order."""

    run: dict[str, Any]
    dataset: ImageDataset
    indices: np.ndarray  # dataset indices (N,)
    clean: np.ndarray  # uint8 (N,H,W,C)
    adversarial: np.ndarray  # uint8 (N,H,W,C), the attack's best candidate (also for failures)
    labels: np.ndarray  # (N,)
    status: list[str]  # success | failed

    def __len__(self) -> int:
        return int(self.indices.shape[0])


def find_onepixel_run(store: Store, model_dir: str | Path | None = None,
                      run_id: int | None = None) -> dict[str, Any]:
    """Run ``run_id`` (checked to be a one-pixel run), or the newest one on ``model_dir``."""
    if run_id is not None:
        run = store.get_run(run_id)
        if run["command"] != ONEPIXEL_COMMAND:
            raise MedrobustError(f"run {run_id} is a {run['command']!r} run, not a one-pixel attack")
        return run
    runs = store.runs(ONEPIXEL_COMMAND)
    if model_dir is not None:
        want = str(Path(model_dir).resolve())
        runs = [r for r in runs if (r.get("model") or {}).get("dir") == want]
    if not runs:
        where = f" on the model {model_dir}" if model_dir is not None else ""
        raise MedrobustError(f"no one-pixel attack run{where} in {store.path}: run "
                             "'medrobust attack onepixel' first")
    done = [r for r in runs if r["status"] == "completed"]
    return (done or runs)[-1]


def rebuild(image: np.ndarray, pixels: list[Any], colours: list[Any]) -> np.ndarray:
    """A copy of uint8 (H,W,C) ``image`` with each (x, y) pixel set to its colour."""
    out = np.array(image, copy=True)
    for (x, y), colour in zip(pixels, colours, strict=True):
        out[int(y), int(x), :] = colour
    return out


def attacked_set(store: Store, run: dict[str, Any]) -> AttackedSet:
    """Reload the run's dataset and rebuild its attacked images (successes and failures)."""
    if not run.get("dataset"):
        raise DataError(f"run {run['id']} recorded no dataset, so its images cannot be rebuilt")
    try:
        dataset = load_run_dataset(run["dataset"])
    except MedrobustError:
        raise
    except Exception as exc:
        raise DataError(f"cannot reload the dataset of run {run['id']}: {exc}") from None
    rows = store.rows(ONEPIXEL_TABLE_NAME, run_id=run["id"]) if ONEPIXEL_TABLE_NAME in \
        store.tables() else []
    rows = [r for r in rows if r["status"] != "skipped" and r.get("pixels")]
    idx, clean, adv, labels, status = [], [], [], [], []
    for r in rows:
        i = int(r["dataset_index"])
        if not 0 <= i < len(dataset):
            raise DataError(f"run {run['id']}: dataset index {i} is outside the reloaded split "
                            f"({len(dataset)} images); the dataset changed since the attack")
        image = dataset.images[i]
        for (x, y), colour in zip(r["pixels"], r.get("original_colours") or [], strict=False):
            if [int(v) for v in image[int(y), int(x)]] != [int(v) for v in colour]:
                raise DataError(f"run {run['id']}: image {i} differs from the attacked one at "
                                f"({x}, {y}); the dataset changed since the attack")
        idx.append(i)
        clean.append(image)
        adv.append(rebuild(image, r["pixels"], r["colours"]))
        labels.append(int(r["label"]))
        status.append(str(r["status"]))
    shape = (0, *dataset.images.shape[1:])
    return AttackedSet(run, dataset, np.asarray(idx, dtype=np.int64),
                       np.stack(clean) if clean else np.zeros(shape, np.uint8),
                       np.stack(adv) if adv else np.zeros(shape, np.uint8),
                       np.asarray(labels, dtype=np.int64), status)
