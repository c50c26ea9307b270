"""Denoising defences against one-pixel attacks, and their honest evaluation.

Noise generators for training (``noise``), the residual impulse autoencoder (``autoencoder``,
``training``, ``storage``, ``learned``), classical filters (``filters``) by name (``registry``),
the defended model (``composed``, with ``bpda`` for filters) and the one-pixel adversarial
images a defence is judged on (``source``). The store-backed evaluations (defence on recorded
attacks, attacks that see the defence) are campaigns: ``medrobust.campaigns.defence`` and
``medrobust.campaigns.adaptive_defence``; image quality is ``medrobust.metrics.image_quality``.
"""

from medrobust.defences.autoencoder import ImpulseAutoencoder
from medrobust.defences.base import Denoiser
from medrobust.defences.bpda import BPDA, bpda
from medrobust.defences.composed import DefendedClassifier
from medrobust.defences.filters import (
    ArtMedian,
    Bilateral,
    Identity,
    Median,
    NonLocalMeans,
    TotalVariation,
    Wavelet,
)
from medrobust.defences.learned import AutoencoderDenoiser
from medrobust.defences.noise import channel_salt_pepper, mixed_impulse, pixel_impulse
from medrobust.defences.registry import CLASSICAL, available_denoisers, make_denoiser
from medrobust.defences.storage import load_autoencoder, save_denoiser
from medrobust.defences.training import DenoiserTrainConfig, train_denoiser

__all__ = [
    "BPDA",
    "CLASSICAL",
    "ArtMedian",
    "AutoencoderDenoiser",
    "Bilateral",
    "DefendedClassifier",
    "Denoiser",
    "DenoiserTrainConfig",
    "Identity",
    "ImpulseAutoencoder",
    "Median",
    "NonLocalMeans",
    "TotalVariation",
    "Wavelet",
    "available_denoisers",
    "bpda",
    "channel_salt_pepper",
    "load_autoencoder",
    "make_denoiser",
    "mixed_impulse",
    "pixel_impulse",
    "save_denoiser",
    "train_denoiser",
]
