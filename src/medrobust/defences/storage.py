"""Saving and loading trained autoencoders: safetensors weights plus JSON metadata, never pickles.

The folder layout matches classifier checkpoints (``model.safetensors`` + ``meta.json``, written
with the same helpers), with ``"kind": "denoiser"`` in the metadata so a classifier folder given
where a denoiser is expected fails with a clear message.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from medrobust.defences.autoencoder import ImpulseAutoencoder
from medrobust.errors import CheckpointError
from medrobust.models.checkpoint import META, WEIGHTS, library_versions, load_weights, read_meta

KIND = "denoiser"
ARCHITECTURE = "impulse-autoencoder"


def save_denoiser(model: ImpulseAutoencoder, out_dir: str | Path, meta: dict[str, Any]) -> Path:
    """Write weights and metadata (training config, data, metrics) to ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / WEIGHTS))
    full = {**meta, "kind": KIND, "architecture": ARCHITECTURE, "config": model.config(),
            "versions": library_versions(),
            "saved_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    (out / META).write_text(json.dumps(full, indent=2))
    return out


def is_denoiser_dir(path: str | Path) -> bool:
    """Whether ``path`` is a folder holding a saved denoiser (cheap; no weights are read)."""
    try:
        return json.loads((Path(path) / META).read_text()).get("kind") == KIND
    except (OSError, ValueError, AttributeError):
        return False


def load_autoencoder(ckpt_dir: str | Path, device: str | torch.device = "cpu"
                     ) -> tuple[ImpulseAutoencoder, dict[str, Any]]:
    """The saved network (eval mode) and its metadata."""
    meta = read_meta(ckpt_dir)
    if meta.get("kind") != KIND:
        raise CheckpointError(f"{ckpt_dir} is not a denoiser (a classifier checkpoint?); "
                              "train one with 'medrobust train-denoiser'")
    if meta.get("architecture") != ARCHITECTURE:
        raise CheckpointError(f"{ckpt_dir}: unknown denoiser architecture {meta.get('architecture')!r}")
    try:
        # Folders saved before the neighbour-median cue existed have no "cue" and were built without it.
        model = ImpulseAutoencoder(**{"cue": False, **meta["config"]})
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"{ckpt_dir}/{META} has no usable 'config': {exc}") from None
    try:
        model.load_state_dict(load_weights(Path(ckpt_dir) / WEIGHTS))
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise CheckpointError(f"weights in {ckpt_dir} do not fit the autoencoder: {first}") from None
    return model.to(device).eval(), meta
