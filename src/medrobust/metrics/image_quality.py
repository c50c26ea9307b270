"""Image-quality metrics of a defence: MSE, PSNR and SSIM against the clean image.

MONAI computes PSNR and SSIM (batched, in torch). SSIM is configured like scikit-image's
``structural_similarity`` (7x7 uniform window, K1 = 0.01, K2 = 0.03, data range 1, mean over
channels and over the window positions that fit inside the image). One difference remains:
MONAI uses the population (co)variance in each window, which is scikit-image's
``use_sample_covariance=False``; scikit-image's default (sample covariance, n - 1) differs by up
to about 1e-3 on low-contrast images. The tests check agreement with that scikit-image setting (to about
1e-5: MONAI computes SSIM in float32). All metrics work on the [0,1] scale whatever the input dtype.
"""

from __future__ import annotations

import numpy as np
import torch
from monai.metrics import PSNRMetric, SSIMMetric

from medrobust.errors import ConfigError
from medrobust.utils.images import as_float_batch

#: PSNR of two identical images is infinite; per-image values are capped here so means stay finite.
PSNR_CAP = 100.0
SSIM_WINDOW = 7


def _pair(clean: np.ndarray, other: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    a, _ = as_float_batch(clean, "clean images")
    b, _ = as_float_batch(other, "compared images")
    if a.shape != b.shape:
        raise ConfigError(f"clean and compared images differ in shape: {a.shape} vs {b.shape}")
    to_t = lambda v: torch.from_numpy(np.ascontiguousarray(v.transpose(0, 3, 1, 2)))  # noqa: E731
    return to_t(a).double(), to_t(b).double()


def mse(clean: np.ndarray, other: np.ndarray) -> np.ndarray:
    """Per-image mean squared error on the [0,1] scale, (N,) float64."""
    a, b = _pair(clean, other)
    return ((a - b) ** 2).flatten(1).mean(1).numpy()


def psnr(clean: np.ndarray, other: np.ndarray) -> np.ndarray:
    """Per-image PSNR in dB (peak 1.0 on the [0,1] scale), capped at ``PSNR_CAP``; (N,) float64."""
    a, b = _pair(clean, other)
    if a.shape[0] == 0:
        return np.zeros(0)
    value = PSNRMetric(max_val=1.0, reduction="none")(b, a).reshape(-1).numpy()
    return np.minimum(np.nan_to_num(value, posinf=PSNR_CAP), PSNR_CAP)


def ssim(clean: np.ndarray, other: np.ndarray) -> np.ndarray:
    """Per-image SSIM (scikit-image's default settings, data range 1), (N,) float64."""
    a, b = _pair(clean, other)
    if a.shape[0] == 0:
        return np.zeros(0)
    if min(a.shape[2:]) < SSIM_WINDOW:
        raise ConfigError(f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels, "
                          f"got {a.shape[2]}x{a.shape[3]}")
    metric = SSIMMetric(spatial_dims=2, data_range=1.0, kernel_type="uniform",
                        win_size=SSIM_WINDOW, reduction="none")
    return metric(b, a).reshape(-1).double().numpy()


def quality(clean: np.ndarray, other: np.ndarray) -> dict[str, np.ndarray]:
    """All three per-image metrics at once: {"mse", "psnr", "ssim"}."""
    return {"mse": mse(clean, other), "psnr": psnr(clean, other), "ssim": ssim(clean, other)}
