"""Seeding: every random choice in medrobust takes a seed, and the same seed gives the same result."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed Python, NumPy and torch; optionally ask torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        if torch.backends.cudnn.is_available():
            torch.backends.cudnn.benchmark = False


def numpy_rng(seed: int, *keys: int) -> np.random.Generator:
    """A NumPy generator for ``seed`` and sub-stream ``keys``.

    Sub-streams let a per-item computation (one image of a batch) draw the same numbers whether it
    runs alone or beside others.
    """
    return np.random.default_rng(np.random.SeedSequence(entropy=seed, spawn_key=tuple(keys)))
