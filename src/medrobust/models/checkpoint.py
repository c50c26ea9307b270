"""Checkpoints: safetensors weights plus JSON metadata, never pickles.

A checkpoint directory holds ``model.safetensors`` and ``meta.json`` (model name and arguments,
dataset provenance, classes, channels, size, normalisation, head, metrics, library versions), which
is everything needed to rebuild the ``Classifier`` without running code from the file.
"""

from __future__ import annotations

import json
import math
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from medrobust.errors import CheckpointError
from medrobust.models.base import PixelModel
from medrobust.models.classifier import Classifier
from medrobust.models.registry import Factory, build_with, checkpoint_factory

WEIGHTS = "model.safetensors"
META = "meta.json"


def library_versions() -> dict[str, str]:
    import monai
    import numpy

    import medrobust

    return {"medrobust": medrobust.__version__, "torch": torch.__version__,
            "monai": monai.__version__, "numpy": numpy.__version__,
            "python": platform.python_version()}


def save_model(model: PixelModel, out_dir: str | Path, meta: dict[str, Any]) -> Path:
    """Write any task's wrapper: the network's weights as safetensors, and ``meta`` (which must
    name ``model``, the zoo name it was built from) plus what the wrapper needs to be rebuilt."""
    if "model" not in meta:
        raise CheckpointError("checkpoint metadata must name its 'model'")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.model.state_dict().items()}
    save_file(state, str(out / WEIGHTS))
    full = {**meta, **model.checkpoint_meta(), "versions": library_versions(),
            "saved_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    (out / META).write_text(json.dumps(full, indent=2))
    return out


def save_checkpoint(classifier: Classifier, out_dir: str | Path, meta: dict[str, Any]) -> Path:
    """Write a classifier's weights and metadata (``save_model`` for classifiers)."""
    return save_model(classifier, out_dir, meta)


def model_input_size(meta: dict[str, Any]) -> tuple[int, int] | None:
    """(H, W) the checkpoint was trained at, when its metadata records it (classifiers and
    segmenters: ``image_size``; landmark models and detectors: their dataset's size)."""
    size = meta.get("image_size")
    if size is None:
        size = (meta.get("dataset") or {}).get("size")
    if isinstance(size, int) and not isinstance(size, bool):
        return size, size
    return (int(size[0]), int(size[1])) if isinstance(size, list) and len(size) == 2 else None


def read_meta(ckpt_dir: str | Path) -> dict[str, Any]:
    """The checkpoint's metadata as a JSON object (its fields are checked by the loaders)."""
    path = Path(ckpt_dir) / META
    if not path.is_file():
        raise CheckpointError(f"{ckpt_dir} is not a medrobust checkpoint (no {META})")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path} must hold a JSON object, not a {type(meta).__name__}")
    return meta


def _numbers(meta: dict[str, Any], key: str, channels: int, where: Path) -> list[float]:
    values = meta[key]
    if (not isinstance(values, list) or len(values) != channels
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                       and math.isfinite(v) for v in values)):
        raise CheckpointError(f"{where}: {key!r} must be {channels} finite number(s), one per "
                              f"channel, got {values!r}")
    return [float(v) for v in values]


def check_model_meta(meta: dict[str, Any], ckpt_dir: str | Path, fields: tuple[str, ...] = (),
                     min_names: int = 2) -> None:
    """One clear line for metadata a model cannot be rebuilt from (checked here, once, so no
    command meets a KeyError or a division by a zero std later). ``fields``: extra required keys."""
    where = Path(ckpt_dir) / META
    for key in ("model", "channels", "class_names", "mean", "std", *fields):
        if key not in meta:
            raise CheckpointError(f"{where} lacks the field {key!r}")
    channels = meta["channels"]
    if not isinstance(channels, int) or isinstance(channels, bool) or channels < 1:
        raise CheckpointError(f"{where}: 'channels' must be a positive integer, got {channels!r}")
    names = meta["class_names"]
    if (not isinstance(names, list) or len(names) < min_names
            or not all(isinstance(n, str) for n in names)):
        raise CheckpointError(f"{where}: 'class_names' must list at least {min_names} class "
                              f"name(s), got {names!r}")
    _numbers(meta, "mean", channels, where)
    std = _numbers(meta, "std", channels, where)
    if min(std) <= 0:
        raise CheckpointError(f"{where}: 'std' must be positive (it divides the input), got {std}")
    if not isinstance(meta.get("model_kwargs", {}), dict):
        raise CheckpointError(f"{where}: 'model_kwargs' must be a JSON object")


def build_checkpoint_model(meta: dict[str, Any], ckpt_dir: str | Path, num_outputs: int,
                           model_factory: str | Factory | None, trust_model_code: bool
                           ) -> nn.Module:
    """The network a checkpoint's metadata names, with its weights loaded and checked."""
    factory = checkpoint_factory(meta["model"], model_factory, trust_model_code)
    model = build_with(factory, str(meta["model"]), meta["channels"], num_outputs,
                       **meta.get("model_kwargs", {}))
    fit_weights(model, load_weights(Path(ckpt_dir) / WEIGHTS), ckpt_dir, str(meta["model"]))
    return model


def fit_weights(model: nn.Module, state: dict[str, torch.Tensor], ckpt_dir: str | Path,
                name: str) -> None:
    """Load ``state`` into ``model``, or say in one line which tensors do not fit (the weights
    of another architecture, width or channel count)."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected
             if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    problems = []
    if missing:
        problems.append(f"{len(missing)} tensor(s) missing (first: {missing[0]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected (first: {unexpected[0]})")
    if wrong:
        k = wrong[0]
        problems.append(f"{k} is {tuple(state[k].shape)} in the file but "
                        f"{tuple(expected[k].shape)} in the model")
    if problems:
        raise CheckpointError(f"weights in {Path(ckpt_dir) / WEIGHTS} do not fit the model "
                              f"{name!r} named in {META}: {'; '.join(problems)}")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise CheckpointError(f"weights in {ckpt_dir} do not fit {name}: {first}") from None


def model_provenance(ckpt_dir: str | Path, classifier: Classifier) -> dict[str, Any]:
    """What a store run records about the model it attacked or analysed."""
    meta = read_meta(ckpt_dir)
    return {"dir": str(Path(ckpt_dir).resolve()), "model": meta.get("model"),
            "model_kwargs": meta.get("model_kwargs", {}), "saved_at": meta.get("saved_at"),
            "head": classifier.head, "class_names": list(classifier.class_names)}


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """State dict from .safetensors, or from a .pt/.pth file with ``weights_only=True``."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"weights file {p} does not exist")
    if p.suffix == ".safetensors":
        try:
            return load_file(str(p))
        except (SafetensorError, OSError, ValueError) as exc:
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise CheckpointError(f"cannot read {p}: not a complete safetensors file "
                                  f"({reason})") from None
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot load {p} as plain weights (weights_only=True): {exc}") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{p} does not hold a state dict")
    return state


def load_classifier(ckpt_dir: str | Path, device: str | torch.device = "cpu",
                    batch_size: int | None = None, *,
                    model_factory: str | Factory | None = None,
                    trust_model_code: bool = False) -> Classifier:
    """Rebuild the Classifier saved in ``ckpt_dir`` (``batch_size`` None: sized to the images,
    see ``default_batch_size``).

    A checkpoint may name only zoo models. For a user model (``module:factory`` in meta.json)
    pass ``model_factory`` (the factory, or its ``module:factory`` name) or
    ``trust_model_code=True``; nothing named in the file is imported otherwise.
    """
    meta = read_meta(ckpt_dir)
    task = meta.get("task", Classifier.task)  # checkpoints from before tasks were recorded
    if task != Classifier.task:
        raise CheckpointError(f"{ckpt_dir} holds a {task} model; this needs a classifier "
                              "(attack pgd / ifgsm and evaluate take a model of any task)")
    if meta.get("kind") is not None:
        raise CheckpointError(f"{ckpt_dir} holds a {meta['kind']}, not a classifier")
    check_model_meta(meta, ckpt_dir, ("head",))
    if meta["head"] not in ("softmax", "sigmoid"):
        raise CheckpointError(f"{Path(ckpt_dir) / META}: 'head' must be softmax or sigmoid, "
                              f"got {meta['head']!r}")
    model = build_checkpoint_model(meta, ckpt_dir, len(meta["class_names"]), model_factory,
                                   trust_model_code)
    return Classifier(model, mean=meta["mean"], std=meta["std"], class_names=meta["class_names"],
                      head=meta["head"], batch_size=batch_size, device=device)
