"""Resuming a training run after a kill at an epoch boundary.

After each epoch a trainer writes everything the next epoch depends on (network weights,
optimizer and scheduler, the best epoch so far and its weights, the history, the generators'
and torch's RNG states, the objective's margins or ensemble, the epoch number) into one file,
``train_state.pt`` in the output folder. The file is written under a temporary name and renamed
over the old one, so a kill leaves either the previous epoch's state or the new one, never half
a file. Running the same command again finds it and continues; a state written by different
settings (``fingerprint``) is refused rather than silently mixed. The weights a run starts from
(``--xi-from``) are part of those settings by content, not by path.

Every trainer saves and restores through ``EpochState.save_epoch`` and ``EpochState.restore``,
so what a state holds, and the order it is put back in, is written once.

Loading uses ``torch.load(weights_only=True)``: tensors, numbers, strings, lists and dicts only,
no code. Anything else (metrics, history) travels as a JSON string inside it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medrobust.errors import CheckpointError

STATE_FILE = "train_state.pt"


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return value


def to_json(value: Any) -> str:
    return json.dumps(_plain(value))


def fingerprint(settings: Any) -> str:
    """A short hash of the settings a state belongs to."""
    return hashlib.sha256(to_json(settings).encode()).hexdigest()[:16]


def weights_digest(state: Mapping[str, torch.Tensor]) -> str:
    """A short hash of a state dict's names, dtypes, shapes and values: the starting weights
    as part of a resume key, so another ``--xi-from`` checkpoint (or the same folder trained
    again) never continues a run that began from different weights."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{list(t.shape)}|".encode())
        # bytes through a uint8 view: numpy has no bfloat16, and every dtype has bytes
        h.update(t.flatten().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


@dataclass
class Resumed:
    """What ``EpochState.restore`` hands back beyond what it loaded in place."""

    #: the last finished epoch: training continues with ``epoch + 1``
    epoch: int
    #: the weights of the best epoch so far
    best_model: dict[str, torch.Tensor]
    #: the trainer's own entries given to ``save_epoch`` (history, best key, ...)
    info: dict[str, Any]


class EpochState:
    """The resumable state of one training run in ``folder`` (None: resuming is off).

    ``settings`` is the run's key; ``init`` the weights it starts from (fine-tuning), keyed
    by content. Only a run with ``init`` gets the extra key, so the states of runs without
    one, written before the key held it, stay readable.
    """

    def __init__(self, folder: str | Path | None, settings: Any,
                 init: Mapping[str, torch.Tensor] | None = None) -> None:
        self.path = None if folder is None else Path(folder) / STATE_FILE
        if init is not None and self.path is not None:  # hashing costs a pass over the weights
            settings = {**settings, "init": weights_digest(init)}
        self.fingerprint = fingerprint(settings)

    @property
    def enabled(self) -> bool:
        return self.path is not None

    def load(self) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """(tensors and state dicts, JSON info) of the last finished epoch, or None."""
        if self.path is None or not self.path.is_file():
            return None
        try:
            blob = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a foreign or damaged file: say which, never unpickle code
            raise CheckpointError(f"cannot resume from {self.path}: {exc}") from None
        info = json.loads(blob.pop("info"))
        if info.get("fingerprint") != self.fingerprint:
            raise CheckpointError(f"{self.path} was written by a training run with other "
                                  "settings or data; remove it or choose another --out")
        return blob, info

    def save(self, payload: dict[str, Any], info: dict[str, Any]) -> None:
        """Write atomically (temporary file, fsync, rename)."""
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            torch.save({**payload, "info": to_json({**info, "fingerprint": self.fingerprint})},
                       f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def save_epoch(self, epoch: int, *, model: nn.Module, optimizer: torch.optim.Optimizer,
                   best_model: Mapping[str, torch.Tensor], generators: Sequence[torch.Generator],
                   objective: Any = None, scheduler: Any = None, **info: Any) -> None:
        """Save what epoch ``epoch + 1`` depends on: ``model``'s weights, the optimizer and
        scheduler, the best weights so far, the RNG of ``generators`` and torch, the robust
        ``objective``'s state; ``info`` (JSON: history, best key...) comes back from
        ``restore`` as ``Resumed.info``."""
        if self.path is None:  # off: spare the weight copies
            return
        payload = {"model": weights(model), "optimizer": optimizer.state_dict(),
                   "best_model": dict(best_model), "rng": rng_state(list(generators)),
                   "objective": objective.state_dict() if objective is not None else {}}
        if scheduler is not None:
            payload["scheduler"] = scheduler.state_dict()
        self.save(payload, {"epoch": int(epoch), **info})

    def restore(self, *, model: nn.Module, optimizer: torch.optim.Optimizer,
                generators: Sequence[torch.Generator], objective: Any = None,
                scheduler: Any = None) -> Resumed | None:
        """Put the last saved epoch back into these objects (the counterpart of
        ``save_epoch``, given the same ones); None when there is nothing to resume."""
        saved = self.load()
        if saved is None:
            return None
        blob, info = saved
        model.load_state_dict(blob["model"])
        optimizer.load_state_dict(blob["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(blob["scheduler"])
        set_rng_state(blob["rng"], list(generators))
        if objective is not None:
            objective.load_state_dict(blob["objective"])
        info.pop("fingerprint", None)
        return Resumed(int(info.pop("epoch")), blob["best_model"], info)

    def clear(self) -> None:
        """Remove the state once the run's checkpoint is saved."""
        if self.path is not None and self.path.is_file():
            self.path.unlink()


def rng_state(generators: list[torch.Generator]) -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "generators": [g.get_state() for g in generators]}


def set_rng_state(state: dict[str, Any], generators: list[torch.Generator]) -> None:
    torch.set_rng_state(state["torch"])
    for g, s in zip(generators, state["generators"], strict=True):
        g.set_state(s)


def weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of a state dict (what goes into the state file)."""
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
