"""The trained autoencoder as a ``Denoiser``: NumPy in and out for evaluation, its own module for attacks.

The network is differentiable, so the composed model (denoiser then classifier) is attacked with
its true gradients, no BPDA needed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medrobust.defences.autoencoder import ImpulseAutoencoder
from medrobust.defences.base import Denoiser
from medrobust.defences.storage import load_autoencoder


class AutoencoderDenoiser(Denoiser):
    """An ``ImpulseAutoencoder`` run in batches without gradients on NumPy images."""

    name = "autoencoder"
    differentiable = True

    def __init__(self, model: ImpulseAutoencoder, source: str | None = None,
                 batch_size: int = 256, saved_at: str | None = None) -> None:
        self.model = model.eval()
        self.channels = model.channels
        self.source = source
        self.saved_at = saved_at
        self.batch_size = int(batch_size)

    @classmethod
    def load(cls, ckpt_dir: str | Path, device: str | torch.device = "cpu") -> AutoencoderDenoiser:
        model, meta = load_autoencoder(ckpt_dir, device)
        return cls(model, source=str(Path(ckpt_dir).resolve()), saved_at=meta.get("saved_at"))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def _denoise(self, x: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(x).permute(0, 3, 1, 2)
        outs = [self.model(t[s:s + self.batch_size].to(self.device)).cpu()
                for s in range(0, t.shape[0], self.batch_size)]
        return torch.cat(outs).permute(0, 2, 3, 1).numpy()

    def module(self) -> nn.Module:
        return self.model

    def spec(self) -> dict[str, Any]:
        # saved_at: a retrained denoiser in the same folder is a different defence (new run).
        return {"name": self.name, "dir": self.source, "saved_at": self.saved_at,
                **self.model.config()}
