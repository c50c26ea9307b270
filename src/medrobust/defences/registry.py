"""Defences by name: ``make_denoiser("median3")``, or a folder holding a trained autoencoder.

One place maps the names used on the command line, in stores and in reports to defence objects,
so a recorded run can rebuild exactly the defence it evaluated.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from medrobust.defences.base import Denoiser
from medrobust.defences.filters import (
    ArtMedian,
    Bilateral,
    Identity,
    Median,
    NonLocalMeans,
    TotalVariation,
    Wavelet,
)
from medrobust.errors import ConfigError

_FILTERS: dict[str, Callable[[], Denoiser]] = {
    "none": Identity,
    "median3": lambda: Median(3),
    "median5": lambda: Median(5),
    "bilateral": Bilateral,
    "tv": TotalVariation,
    "nlmeans": NonLocalMeans,
    "wavelet": Wavelet,
    "art-median": ArtMedian,
}

#: The classical baselines, in table order.
CLASSICAL = ("median3", "median5", "bilateral", "tv", "nlmeans", "wavelet", "art-median")


def available_denoisers() -> list[str]:
    """Names accepted besides a denoiser folder."""
    return list(_FILTERS)


def make_denoiser(spec: str | Path, device: str | torch.device = "cpu") -> Denoiser:
    """A defence from a name (see ``available_denoisers``) or a trained autoencoder's folder."""
    from medrobust.defences.learned import AutoencoderDenoiser
    from medrobust.defences.storage import is_denoiser_dir

    text = str(spec)
    if text in _FILTERS:
        return _FILTERS[text]()
    path = Path(text).expanduser()
    if path.is_dir():
        if not is_denoiser_dir(path):
            raise ConfigError(f"{path} is not a trained denoiser folder (no meta.json with "
                              "kind 'denoiser'); train one with 'medrobust train-denoiser'")
        return AutoencoderDenoiser.load(path, device)
    raise ConfigError(f"unknown denoiser {text!r}: use a trained denoiser folder or one of "
                      f"{', '.join(_FILTERS)}")


def denoiser_label(spec: dict | None) -> str:
    """A short name for tables: the filter name, or 'autoencoder (folder name)'."""
    spec = spec or {}
    name = str(spec.get("name", "?"))
    if spec.get("dir"):
        return f"{name} ({Path(str(spec['dir'])).name})"
    return name


def dataset_name(spec: dict | None) -> str:
    """A dataset's short name from its spec (the MedMNIST flag when there is one)."""
    spec = spec or {}
    return str(spec.get("flag") or spec.get("dataset") or "?")


def rebuild_denoiser(spec: dict, device: str | torch.device = "cpu") -> Denoiser:
    """The defence a run recorded with ``Denoiser.spec()``."""
    if spec.get("dir"):
        return make_denoiser(spec["dir"], device)
    return make_denoiser(str(spec.get("name")), device)
