"""Segmentation metrics per image: Dice and IoU from MONAI, plus pixel accuracy.

Foreground only (``include_background=False``): on nuclei images the background is most of the
picture, and counting it would flatter every model. An image whose reference mask is empty
scores 1 when the prediction is empty too and 0 otherwise (MONAI's ``ignore_empty=False``), so
"erase everything" targets are scored the same way as any other.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from monai.metrics import DiceMetric, MeanIoU
from monai.networks.utils import one_hot

from medrobust.errors import ConfigError


def _as_masks(a: np.ndarray | torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(a) if not isinstance(a, torch.Tensor) else a.detach().cpu())
    if t.ndim == 2:
        t = t[None]
    if t.ndim != 3:
        raise ConfigError(f"masks must be (N,H,W) or (H,W), got shape {tuple(t.shape)}")
    return t.long()


def per_image_metrics(pred: np.ndarray | torch.Tensor, reference: np.ndarray | torch.Tensor,
                      num_classes: int | None = None) -> dict[str, np.ndarray]:
    """(N,) arrays ``dice``, ``iou`` (foreground, averaged over foreground classes present) and
    ``pixel_accuracy`` of predicted masks against reference masks."""
    p, r = _as_masks(pred), _as_masks(reference)
    if p.shape != r.shape:
        raise ConfigError(f"prediction {tuple(p.shape)} and reference {tuple(r.shape)} differ")
    k = max(2, int(num_classes or 0), int(p.max()) + 1 if p.numel() else 2,
            int(r.max()) + 1 if r.numel() else 2)
    if p.shape[0] == 0:
        empty = np.zeros(0)
        return {"dice": empty, "iou": empty, "pixel_accuracy": empty}
    ph, rh = one_hot(p[:, None], k), one_hot(r[:, None], k)
    dice = DiceMetric(include_background=False, reduction="none", ignore_empty=False)(ph, rh)
    iou = MeanIoU(include_background=False, reduction="none", ignore_empty=False)(ph, rh)
    if k > 2:
        # Average over the foreground classes present in either mask (absent ones score 1).
        present = (ph[:, 1:] + rh[:, 1:]).flatten(2).amax(dim=2) > 0
        denom = present.sum(dim=1).clamp_min(1)
        dice_m = torch.where(present.any(1), (dice * present).sum(1) / denom, torch.ones(len(p)))
        iou_m = torch.where(present.any(1), (iou * present).sum(1) / denom, torch.ones(len(p)))
    else:
        dice_m, iou_m = dice[:, 0], iou[:, 0]
    acc = (p == r).flatten(1).double().mean(dim=1)
    return {"dice": dice_m.double().numpy(), "iou": iou_m.double().numpy(),
            "pixel_accuracy": acc.numpy()}


def segmentation_metrics(pred: np.ndarray | torch.Tensor, reference: np.ndarray | torch.Tensor,
                         num_classes: int | None = None) -> dict[str, Any]:
    """Means over images of Dice, IoU and pixel accuracy (JSON-able)."""
    m = per_image_metrics(pred, reference, num_classes)
    n = len(m["dice"])

    def mean(a: np.ndarray) -> float | None:
        return float(a.mean()) if n else None

    return {"n": n, "dice": mean(m["dice"]), "iou": mean(m["iou"]),
            "pixel_accuracy": mean(m["pixel_accuracy"]),
            "dice_median": float(np.median(m["dice"])) if n else None}
