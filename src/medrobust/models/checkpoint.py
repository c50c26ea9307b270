"""Checkpoints: safetensors weights plus JSON metadata, never pickles.

A checkpoint directory holds ``model.safetensors`` and ``meta.json`` (model name and arguments,
dataset provenance, classes, channels, size, normalisation, head, metrics, library versions), which
is everything needed to rebuild the ``Classifier`` without running code from the file.
"""

from __future__ import annotations

import json
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from medrobust.errors import CheckpointError
from medrobust.models.classifier import Classifier
from medrobust.models.registry import build_model

WEIGHTS = "model.safetensors"
META = "meta.json"


def library_versions() -> dict[str, str]:
    import monai
    import numpy

    import medrobust

    return {"medrobust": medrobust.__version__, "torch": torch.__version__,
            "monai": monai.__version__, "numpy": numpy.__version__,
            "python": platform.python_version()}


def save_checkpoint(classifier: Classifier, out_dir: str | Path, meta: dict[str, Any]) -> Path:
    """Write weights and metadata; ``meta`` must name ``model`` and may hold anything JSON-able."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in classifier.model.state_dict().items()}
    save_file(state, str(out / WEIGHTS))
    full = {
        **meta,
        "head": classifier.head,
        "class_names": list(classifier.class_names),
        "channels": classifier.channels,
        "mean": classifier.mean.flatten().tolist(),
        "std": classifier.std.flatten().tolist(),
        "versions": library_versions(),
        "saved_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    (out / META).write_text(json.dumps(full, indent=2))
    return out


def read_meta(ckpt_dir: str | Path) -> dict[str, Any]:
    path = Path(ckpt_dir) / META
    if not path.is_file():
        raise CheckpointError(f"{ckpt_dir} is not a medrobust checkpoint (no {META})")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from None


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
        return load_file(str(p))
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
                    batch_size: int | None = None) -> Classifier:
    """Rebuild the Classifier saved in ``ckpt_dir`` (``batch_size`` None: sized to the images,
    see ``default_batch_size``)."""
    meta = read_meta(ckpt_dir)
    try:
        model = build_model(meta["model"], meta["channels"], len(meta["class_names"]),
                            **meta.get("model_kwargs", {}))
    except KeyError as exc:
        raise CheckpointError(f"{ckpt_dir}/{META} lacks the field {exc}") from None
    state = load_weights(Path(ckpt_dir) / WEIGHTS)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise CheckpointError(f"weights in {ckpt_dir} do not fit {meta['model']}: {first}") from None
    return Classifier(model, mean=meta["mean"], std=meta["std"], class_names=meta["class_names"],
                      head=meta["head"], batch_size=batch_size, device=device)
