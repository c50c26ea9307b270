"""``load_model``: one loader for every task's checkpoint, dispatched on ``meta.json``'s ``task``.

Every checkpoint is safetensors weights plus JSON metadata; the metadata names a zoo model (user
code only with ``model_factory`` or ``trust_model_code``, see ``models/registry.py``) and what
the task's wrapper needs. A checkpoint without ``task`` is a classifier (older files).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from medrobust.errors import CheckpointError
from medrobust.models.base import PixelModel
from medrobust.models.checkpoint import (
    META,
    build_checkpoint_model,
    check_model_meta,
    load_classifier,
    read_meta,
)
from medrobust.models.detector import Detector
from medrobust.models.landmark_unet import LandmarkModel
from medrobust.models.registry import Factory
from medrobust.models.segmenter import load_segmenter


def _positive(meta: dict[str, Any], key: str, ckpt_dir: str | Path, kind: type = float) -> Any:
    value = meta[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0 or (
            kind is int and not isinstance(value, int)):
        raise CheckpointError(f"{Path(ckpt_dir) / META}: {key!r} must be a positive "
                              f"{'integer' if kind is int else 'number'}, got {value!r}")
    return kind(value)


def load_landmark_model(ckpt_dir: str | Path, device: str | torch.device = "cpu", *,
                        model_factory: str | Factory | None = None,
                        trust_model_code: bool = False) -> LandmarkModel:
    """Rebuild a ``LandmarkModel`` (the file's ``class_names`` are the landmark names)."""
    meta = read_meta(ckpt_dir)
    check_model_meta(meta, ckpt_dir, ("num_landmarks", "radius"), min_names=1)
    k = _positive(meta, "num_landmarks", ckpt_dir, int)
    if len(meta["class_names"]) != k:
        raise CheckpointError(f"{Path(ckpt_dir) / META}: {len(meta['class_names'])} landmark "
                              f"names for {k} landmarks")
    radius = _positive(meta, "radius", ckpt_dir)
    net = build_checkpoint_model(meta, ckpt_dir, k, model_factory, trust_model_code)
    # files from before the loss was recorded were trained with the default BCE
    return LandmarkModel(net, meta["mean"], meta["std"], k, radius, device=device,
                         names=meta["class_names"],
                         heatmap_loss=str(meta.get("heatmap_loss", "bce")),
                         heatmap_weight=float(meta.get("heatmap_weight", 2.0)))


def load_detector(ckpt_dir: str | Path, device: str | torch.device = "cpu", *,
                  model_factory: str | Factory | None = None,
                  trust_model_code: bool = False) -> Detector:
    """Rebuild a ``Detector`` around the network the checkpoint names."""
    meta = read_meta(ckpt_dir)
    check_model_meta(meta, ckpt_dir)
    net = build_checkpoint_model(meta, ckpt_dir, len(meta["class_names"]), model_factory,
                                 trust_model_code)
    return Detector(net, mean=meta["mean"], std=meta["std"], class_names=meta["class_names"],
                    max_detections=int(meta.get("max_detections", 100)),
                    score_threshold=float(meta.get("score_threshold", 0.01)), device=device)


LOADERS: dict[str, Callable[..., PixelModel]] = {
    "classification": load_classifier,
    "segmentation": load_segmenter,
    "landmarks": load_landmark_model,
    "detection": load_detector,
}


def register_loader(task: str, loader: Callable[..., PixelModel]) -> None:
    """The loader of a task registered after import (``medrobust.tasks.register_task``)."""
    LOADERS[task] = loader


def checkpoint_task(ckpt_dir: str | Path) -> str:
    """The task a checkpoint was trained for (``classification`` when the file does not say)."""
    task = read_meta(ckpt_dir).get("task", "classification")
    if task not in LOADERS:
        raise CheckpointError(f"{Path(ckpt_dir) / META} names task {task!r}; medrobust knows "
                              f"{', '.join(LOADERS)}")
    return str(task)


def load_model(ckpt_dir: str | Path, device: str | torch.device = "cpu", **options: Any
               ) -> PixelModel:
    """Any task's checkpoint as its ``PixelModel`` wrapper; ``options`` go to the task's loader
    (``model_factory``, ``trust_model_code``, ...)."""
    return LOADERS[checkpoint_task(ckpt_dir)](ckpt_dir, device, **options)
