"""Training the impulse autoencoder on clean images with impulse noise added on the fly.

Every batch draws fresh noise (pixel-level impulses of random, black/white and extreme colours,
plus a share of textbook channel-wise salt-and-pepper) at a density swept log-uniformly over
``densities``, so the network sees both the lone impulse of a one-pixel attack and crowded noise.
The loss has two parts: binary cross-entropy of the impulse mask against the locations the noise
really changed (this is what keeps clean pixels untouched; ``pos_weight`` > 1 trades a few
false alarms for faster learning on tiny data) and the L1 error of the output against
the clean image (this teaches the replacement colour). Large images train on random crops
(``patch``), which the fully convolutional network allows and which makes CPU training affordable.
Selection keeps the epoch with the lowest validation error on a fixed, seeded noisy set.

``noise="gaussian"`` trains the same network for denoised smoothing (Salman et al., NeurIPS
2020) instead: Gaussian noise of standard deviation ``gaussian_sd`` on every pixel, unclipped
(randomized smoothing adds it unclipped), every pixel marked as changed, so the mask learns to
replace everything and the output learns the clean image (the L1 term). This is Salman et
al.'s plain reconstruction objective, not their classifier-aware "stability" one: the
denoiser stays independent of any classifier.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medrobust.data.base import ImageDataset
from medrobust.defences.autoencoder import ImpulseAutoencoder
from medrobust.defences.noise import mixed_impulse
from medrobust.errors import ConfigError
from medrobust.training.loop import Judgement, check_fit_settings, fit
from medrobust.utils.seeding import numpy_rng, seed_everything
from medrobust.utils.validation import check_range

#: the noises a denoiser can be trained for
NOISES = ("impulse", "gaussian")
#: AdamW weight decay of the denoiser (light: the autoencoder is small and must stay near identity)
WEIGHT_DECAY = 1e-5


@dataclass
class DenoiserTrainConfig:
    """Hyper-parameters; the defaults train in a few CPU minutes on MedMNIST-sized data."""

    width: int = 16
    epochs: int = 8
    batch_size: int = 64
    lr: float = 2e-3
    densities: tuple[float, float] = (0.001, 0.05)
    channel_share: float = 0.1
    clean_share: float = 0.1
    patch: int | None = 32
    max_train: int | None = None
    val_images: int = 256
    mask_weight: float = 1.0
    pos_weight: float = 1.0
    seed: int = 0
    #: "impulse" (the one-pixel defence) or "gaussian" (denoised smoothing)
    noise: str = "impulse"
    gaussian_sd: float = 0.25

    def validate(self) -> None:
        check_range("width", self.width, 2)
        check_fit_settings(self.epochs, self.batch_size, self.lr, WEIGHT_DECAY)
        check_range("channel_share", self.channel_share, 0, 1)
        check_range("clean_share", self.clean_share, 0, 1)
        check_range("val_images", self.val_images, 1)
        check_range("mask_weight", self.mask_weight, 0)
        check_range("pos_weight", self.pos_weight, 0, low_inclusive=False)
        if self.noise not in NOISES:
            raise ConfigError(f"--noise must be one of {', '.join(NOISES)}, got {self.noise!r}")
        check_range("gaussian_sd", self.gaussian_sd, 0, low_inclusive=False)
        if self.patch is not None:
            check_range("patch", self.patch, 4)
        if self.max_train is not None:
            check_range("max_train", self.max_train, 1)
        lo, hi = self.densities
        if not 0 < lo <= hi <= 1:
            raise ConfigError(f"densities must satisfy 0 < low <= high <= 1, got {self.densities}")


@dataclass
class DenoiserTrainResult:
    model: ImpulseAutoencoder
    history: list[dict[str, float]]
    best_epoch: int
    val_metrics: dict[str, float]
    seconds: float


def _crop_flip(x: np.ndarray, patch: int | None, rng: np.random.Generator) -> np.ndarray:
    """Random crops of side ``patch`` (when the images are larger) and random flips, (N,H,W,C)."""
    n, h, w, _ = x.shape
    if patch is not None and (h > patch or w > patch):
        ph, pw = min(patch, h), min(patch, w)
        tops = rng.integers(0, h - ph + 1, size=n)
        lefts = rng.integers(0, w - pw + 1, size=n)
        x = np.stack([x[i, t:t + ph, s:s + pw] for i, (t, s) in enumerate(zip(tops, lefts, strict=True))])
    flips = rng.random((n, 2)) < 0.5
    out = x.copy()
    out[flips[:, 0]] = out[flips[:, 0], :, ::-1]
    out[flips[:, 1]] = out[flips[:, 1], ::-1, :]
    return out


def noisy_batch(clean: np.ndarray, config: DenoiserTrainConfig, seed: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """Noisy float32 images and their changed-location masks; ``clean_share`` stay clean."""
    if config.noise == "gaussian":
        noisy, mask = gaussian_noise(clean, config.gaussian_sd, seed)
    else:
        noisy, mask = mixed_impulse(clean, config.densities, seed=seed,
                                    channel_share=config.channel_share)
    keep = numpy_rng(seed, 1).random(clean.shape[0]) < config.clean_share
    base = clean.astype(np.float32) / 255.0 if clean.dtype == np.uint8 else clean.astype(np.float32)
    noisy[keep] = base[keep]
    mask[keep] = False
    return noisy, mask


def gaussian_noise(clean: np.ndarray, sd: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``clean`` (uint8 or [0,1]) plus unclipped N(0, sd^2) noise, and an all-changed mask."""
    base = clean.astype(np.float32) / 255.0 if clean.dtype == np.uint8 else clean.astype(np.float32)
    noise = numpy_rng(seed, 2).standard_normal(base.shape).astype(np.float32)
    return base + np.float32(sd) * noise, np.ones(base.shape[:3], dtype=bool)


def _to_t(x: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).float().to(device)


def _loss(model: ImpulseAutoencoder, noisy: torch.Tensor, clean: torch.Tensor, mask: torch.Tensor,
          mask_weight: float, pos_weight: float) -> torch.Tensor:
    logits, replacement = model.heads(noisy)
    m = torch.sigmoid(logits)
    out = noisy + m * (replacement - noisy)
    bce = F.binary_cross_entropy_with_logits(logits, mask, pos_weight=torch.tensor(pos_weight))
    return mask_weight * bce + 10.0 * (out - clean).abs().mean()


@torch.no_grad()
def _validate(model: ImpulseAutoencoder, noisy: torch.Tensor, clean: torch.Tensor,
              mask: torch.Tensor, batch: int) -> dict[str, float]:
    model.eval()
    outs, ms = [], []
    for s in range(0, noisy.shape[0], batch):
        logits, rep = model.heads(noisy[s:s + batch])
        m = torch.sigmoid(logits)
        outs.append(noisy[s:s + batch] + m * (rep - noisy[s:s + batch]))
        ms.append(m)
    out, m = torch.cat(outs), torch.cat(ms)
    clean_out = torch.cat([model(clean[s:s + batch]) for s in range(0, clean.shape[0], batch)])
    hit = m > 0.5
    tp = float((hit & (mask > 0.5)).sum())
    return {"noisy_mse_before": float(((noisy - clean) ** 2).mean()),
            "noisy_mse_after": float(((out - clean) ** 2).mean()),
            "clean_mse_after": float(((clean_out - clean) ** 2).mean()),
            "mask_recall": tp / max(float((mask > 0.5).sum()), 1.0),
            "mask_precision": tp / max(float(hit.sum()), 1.0)}


def train_denoiser(train: ImageDataset, val: ImageDataset, config: DenoiserTrainConfig,
                   device: torch.device | str = "cpu") -> DenoiserTrainResult:
    """Train an ``ImpulseAutoencoder`` for ``train``'s channel count; deterministic per seed."""
    config.validate()
    if train.channels != val.channels:
        raise ConfigError("train and validation splits differ in channels")
    seed_everything(config.seed)
    device = torch.device(device)
    model = ImpulseAutoencoder(train.channels, config.width).to(device)
    rng = numpy_rng(config.seed, 7)
    images = train.images
    if config.max_train is not None and len(images) > config.max_train:
        images = images[np.sort(rng.choice(len(images), config.max_train, replace=False))]
    val_idx = np.sort(numpy_rng(config.seed, 8).permutation(len(val))[:config.val_images])
    val_clean = val.images[val_idx]
    val_noisy, val_mask = noisy_batch(val_clean, config, seed=config.seed + 10_007)
    vn, vc = _to_t(val_noisy, device), _to_t(val_clean.astype(np.float32) / 255.0, device)
    vm = torch.from_numpy(val_mask[:, None].astype(np.float32)).to(device)

    def batch_loss(idx: np.ndarray) -> torch.Tensor:
        clean = _crop_flip(images[idx], config.patch, rng)
        noisy, mask = noisy_batch(clean, config, seed=int(rng.integers(0, 2**31)))
        return _loss(model, _to_t(noisy, device), _to_t(clean.astype(np.float32) / 255.0, device),
                     torch.from_numpy(mask[:, None].astype(np.float32)).to(device),
                     config.mask_weight, config.pos_weight)

    def judge() -> Judgement:
        metrics = _validate(model, vn, vc, vm, config.batch_size)
        # lower is better: impulses left in noisy images plus damage done to clean ones (a
        # Gaussian denoiser only ever sees noisy images: its error on them alone)
        damage = 0.0 if config.noise == "gaussian" else metrics["clean_mse_after"]
        key = (-(metrics["noisy_mse_after"] + damage),)
        return Judgement(metrics, key, metrics, {"val_mse": f"{metrics['noisy_mse_after']:.2e}",
                                                 "recall": f"{metrics['mask_recall']:.2f}"})

    done = fit(model, model, len(images), epochs=config.epochs, batch_size=config.batch_size,
               lr=config.lr, weight_decay=WEIGHT_DECAY, shuffle=rng.permutation, batch_loss=batch_loss,
               judge=judge, desc="train denoiser")
    return DenoiserTrainResult(model, done.history, done.best_epoch, done.best_metrics,
                               done.seconds)


def config_dict(config: DenoiserTrainConfig) -> dict[str, Any]:
    """JSON-able config (tuples as lists), for metadata and run parameters."""
    out = asdict(config)
    out["densities"] = list(config.densities)
    if config.noise == "impulse":  # impulse denoisers keep the records (and runs) they had
        out.pop("noise")
        out.pop("gaussian_sd")
    return out
