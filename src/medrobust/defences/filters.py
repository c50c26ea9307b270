"""Classical denoising filters as defences, from SciPy and scikit-image (and IBM ART's median).

Median filters are the textbook answer to impulse noise; bilateral, total variation, non-local
means and wavelet shrinkage are the usual general-purpose denoisers a reader will ask about. All
run per channel-aware image in [0,1] with the libraries' common settings, stated here so a table
row can be reproduced. ART's ``SpatialSmoothing`` is the median defence of a well-known
adversarial-robustness library, kept as the reference the 3x3 median must match; ART is an
optional dependency (the ``bench`` extra) and is imported only when used.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.ndimage import median_filter
from skimage.restoration import (
    denoise_bilateral,
    denoise_nl_means,
    denoise_tv_chambolle,
    denoise_wavelet,
)
from torch import nn

from medrobust.defences.base import Denoiser
from medrobust.errors import ConfigError
from medrobust.utils.validation import check_range


class Identity(Denoiser):
    """No defence: the undefended baseline in every table."""

    name = "none"
    differentiable = True

    def _denoise(self, x: np.ndarray) -> np.ndarray:
        return x

    def module(self) -> nn.Module:
        return nn.Identity()


class Median(Denoiser):
    """Median over a ``size`` x ``size`` window per channel (SciPy, mirrored edges as ART does)."""

    def __init__(self, size: int = 3) -> None:
        self.size = int(check_range("median size", size, 2))
        self.name = f"median{self.size}"

    def _denoise(self, x: np.ndarray) -> np.ndarray:
        return median_filter(x, size=(1, self.size, self.size, 1), mode="reflect")

    def spec(self) -> dict[str, Any]:
        return {"name": self.name, "size": self.size}


class _PerImage(Denoiser):
    """A scikit-image filter applied image by image with the channel axis last."""

    params: dict[str, Any]

    def _one(self, image: np.ndarray, channel_axis: int | None) -> np.ndarray:
        raise NotImplementedError

    def _denoise(self, x: np.ndarray) -> np.ndarray:
        # scikit-image treats a one-channel image as greyscale only without a channel axis
        # (with one, some filters drop it and the wavelet filter warns), so pass greyscale as 2-D.
        if x.shape[-1] == 1:
            return np.stack([self._one(img[..., 0], None)[..., None] for img in x]).astype(np.float32)
        return np.stack([self._one(img, -1) for img in x]).astype(np.float32)

    def spec(self) -> dict[str, Any]:
        return {"name": self.name, **self.params}


class Bilateral(_PerImage):
    """Edge-preserving bilateral filter (scikit-image ``denoise_bilateral``)."""

    name = "bilateral"

    def __init__(self, sigma_color: float = 0.1, sigma_spatial: float = 1.0) -> None:
        self.params = {"sigma_color": float(check_range("sigma_color", sigma_color, 0, low_inclusive=False)),
                       "sigma_spatial": float(check_range("sigma_spatial", sigma_spatial, 0,
                                                          low_inclusive=False))}

    def _one(self, image: np.ndarray, channel_axis: int | None) -> np.ndarray:
        return denoise_bilateral(image.astype(np.float64), channel_axis=channel_axis, **self.params)


class TotalVariation(_PerImage):
    """Chambolle total-variation denoising (scikit-image ``denoise_tv_chambolle``)."""

    name = "tv"

    def __init__(self, weight: float = 0.1) -> None:
        self.params = {"weight": float(check_range("tv weight", weight, 0, low_inclusive=False))}

    def _one(self, image: np.ndarray, channel_axis: int | None) -> np.ndarray:
        return denoise_tv_chambolle(image, channel_axis=channel_axis, **self.params)


class NonLocalMeans(_PerImage):
    """Non-local means (scikit-image ``denoise_nl_means``, fast mode, 3x3 patches, 11x11 search)."""

    name = "nlmeans"

    def __init__(self, h: float = 0.1, patch_size: int = 3, patch_distance: int = 5) -> None:
        self.params = {"h": float(check_range("nlmeans h", h, 0, low_inclusive=False)),
                       "patch_size": int(check_range("patch_size", patch_size, 1)),
                       "patch_distance": int(check_range("patch_distance", patch_distance, 1))}

    def _one(self, image: np.ndarray, channel_axis: int | None) -> np.ndarray:
        return denoise_nl_means(image, channel_axis=channel_axis, fast_mode=True, **self.params)


class Wavelet(_PerImage):
    """Wavelet shrinkage (scikit-image ``denoise_wavelet``, BayesShrink, soft, noise estimated)."""

    name = "wavelet"

    def __init__(self, wavelet: str = "db1") -> None:
        try:
            import pywt
        except ImportError:  # scikit-image's wavelet denoising needs PyWavelets
            raise ConfigError("the wavelet defence needs PyWavelets: pip install PyWavelets"
                              ) from None
        if wavelet not in pywt.wavelist():
            raise ConfigError(f"unknown wavelet {wavelet!r}: see pywt.wavelist()")
        self.params = {"wavelet": str(wavelet), "method": "BayesShrink", "mode": "soft"}

    def _one(self, image: np.ndarray, channel_axis: int | None) -> np.ndarray:
        out = denoise_wavelet(image.astype(np.float64), channel_axis=channel_axis,
                              rescale_sigma=True, **self.params)
        return np.clip(out, 0.0, 1.0)


class ArtMedian(Denoiser):
    """IBM ART's ``SpatialSmoothing`` (a median filter), the reference median defence."""

    def __init__(self, window_size: int = 3) -> None:
        try:
            from art.defences.preprocessor import SpatialSmoothing
        except ImportError:
            raise ConfigError("the art-median defence needs IBM ART: pip install medrobust[bench]"
                              ) from None
        self.window_size = int(check_range("window_size", window_size, 2))
        self.name = "art-median" if self.window_size == 3 else f"art-median{self.window_size}"
        self._smoother = SpatialSmoothing(window_size=self.window_size, channels_first=False,
                                          clip_values=(0.0, 1.0))

    def _denoise(self, x: np.ndarray) -> np.ndarray:
        out, _ = self._smoother(x)
        return out

    def spec(self) -> dict[str, Any]:
        return {"name": self.name, "window_size": self.window_size}
