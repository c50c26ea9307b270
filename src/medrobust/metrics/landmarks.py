"""Mean radial error and successful detection rates (the ISBI 2015 challenge's landmark metrics).

Errors are measured in ORIGINAL image pixels: a prediction and its truth, both in resized pixels,
differ by (dx / sx, dy / sy) in the original image (the resize is affine per axis, so this holds
for any pixel-centre convention), then times the pixel size when it is known.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from medrobust.metrics.base import CumulativeMetric

#: SDR radii of the ISBI challenge (mm, or px when the pixel size is unknown).
SDR_RADII = (2.0, 2.5, 3.0, 4.0)


def radial_errors(pred: torch.Tensor | np.ndarray, truth: torch.Tensor | np.ndarray,
                  scale: torch.Tensor | np.ndarray) -> torch.Tensor:
    """(B, K) Euclidean errors in original pixels; ``scale`` (B, 2) = (sx, sy) resized/original."""
    p = torch.as_tensor(np.asarray(pred) if not isinstance(pred, torch.Tensor) else pred,
                        dtype=torch.float64)
    t = torch.as_tensor(np.asarray(truth) if not isinstance(truth, torch.Tensor) else truth,
                        dtype=torch.float64)
    s = torch.as_tensor(np.asarray(scale) if not isinstance(scale, torch.Tensor) else scale,
                        dtype=torch.float64)
    if p.shape != t.shape or p.ndim != 3 or p.shape[-1] != 2:
        raise ValueError(f"pred and truth must both be (B, K, 2), got {tuple(p.shape)} and {tuple(t.shape)}")
    if s.shape != (p.shape[0], 2):
        raise ValueError(f"scale must be (B, 2), got {tuple(s.shape)}")
    d = (p.cpu() - t.cpu()) / s.cpu()[:, None, :]
    return d.square().sum(-1).sqrt()


class RadialError(CumulativeMetric):
    """MRE, its standard deviation, per-landmark MRE and SDR@2/2.5/3/4 over all updates.

    ``update(pred (B,K,2), truth (B,K,2), scale (B,2), pixel_size_mm (B,) or None)``. ``aggregate``
    reports mm when every image had a pixel size, else original pixels (and says which in
    ``unit``); the SDR radii are then read in the same unit. ``mre_std`` is the standard deviation of
    all radial errors (images x landmarks), as the challenge reports it.
    """

    def __init__(self, radii: tuple[float, ...] = SDR_RADII) -> None:
        super().__init__()
        self.radii = tuple(float(r) for r in radii)

    def update(self, pred: Any, truth: Any, scale: Any, pixel_size_mm: Any = None) -> None:
        err = radial_errors(pred, truth, scale)
        b = err.shape[0]
        if pixel_size_mm is None:
            ps = torch.full((b,), float("nan"), dtype=torch.float64)
        else:
            ps = torch.as_tensor(np.asarray(pixel_size_mm, dtype=np.float64).reshape(-1))
            if ps.shape != (b,):
                raise ValueError(f"pixel_size_mm must be (B,) = ({b},), got {tuple(ps.shape)}")
        self.extend(err, ps)

    def errors(self) -> tuple[np.ndarray, str]:
        """(N, K) radial errors in the reported unit, and the unit ("mm" or "px")."""
        buf = self.get_buffer()
        if buf is None:
            return np.zeros((0, 0)), "px"
        err, ps = (b.numpy() for b in buf)
        if ps.size and np.all(np.isfinite(ps)):
            return err * ps[:, None], "mm"
        return err, "px"

    def aggregate(self) -> dict[str, Any]:
        err, unit = self.errors()
        if err.size == 0:
            return {"mre": float("nan"), "mre_std": float("nan"), "unit": unit, "per_landmark": [],
                    "sdr": {str(r): float("nan") for r in self.radii}, "n": 0}
        return {
            "mre": float(err.mean()),
            "mre_std": float(err.std()),
            "unit": unit,
            "per_landmark": [float(v) for v in err.mean(axis=0)],
            "sdr": {str(r): float((err <= r).mean()) for r in self.radii},
            "n": int(err.shape[0]),
        }
