"""Batch augmentation on float tensors, seeded through a torch.Generator.

Kept on whole batches (not per-sample Python) so augmentation costs little next to the model on
two CPU cores. Policies: ``flips`` (histology/cells are orientation-free: flips and 90 degree
turns), ``shift`` (X-rays have an up and a side: small translations only), ``none``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from medrobust.utils.validation import check_choice

POLICIES = ("flips", "shift", "none")


def augment_batch(x: torch.Tensor, policy: str, generator: torch.Generator) -> torch.Tensor:
    """A new augmented copy of the (N,C,H,W) batch; ``x`` is not modified."""
    check_choice("augmentation", policy, POLICIES)
    if policy == "none":
        return x
    n = x.shape[0]
    if policy == "flips":
        out = x.clone()
        flip_h = torch.rand(n, generator=generator) < 0.5
        flip_v = torch.rand(n, generator=generator) < 0.5
        out[flip_h] = out[flip_h].flip(-1)
        out[flip_v] = out[flip_v].flip(-2)
        if x.shape[-1] == x.shape[-2]:
            turn = torch.rand(n, generator=generator) < 0.5
            out[turn] = out[turn].transpose(-1, -2)
        return out
    # shift: pad by ~1/10 of the size (reflect) and crop a random window per sample.
    pad = max(1, x.shape[-1] // 10)
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    h, w = x.shape[-2:]
    rows = (dy[:, None] + torch.arange(h)[None]).to(x.device)
    cols = (dx[:, None] + torch.arange(w)[None]).to(x.device)
    idx_n = torch.arange(n, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[idx_n, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()


def default_policy(dataset_spec: dict) -> str:
    """Orientation-free microscopy gets flips; radiographs and others get small shifts."""
    name = str(dataset_spec.get("dataset", ""))
    flag = str(dataset_spec.get("flag", ""))
    if name in ("synthetic", "bccd") or flag in ("pathmnist", "bloodmnist", "dermamnist"):
        return "flips"
    return "shift"


def noisy_validation(images: np.ndarray, sd: float, seed: int) -> torch.Tensor | None:
    """uint8 (N,H,W,C) validation images as float (N,C,H,W) under one fixed draw of Gaussian
    noise ``sd`` (None when ``sd`` is 0): a model trained under noise (the base model of
    randomized smoothing or SegCertify) is selected on the noise it will be smoothed with, and
    every epoch on the same noisy images."""
    if sd <= 0:
        return None
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    gen = torch.Generator().manual_seed(int(seed) + 1)
    return x + sd * torch.randn(x.shape, generator=gen)
