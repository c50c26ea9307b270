"""Success tests for ``early_stop``: ``fn(outputs, target) -> (N,) bool``.

A gradient attack freezes an image once its test passes, so the perturbation stays as small as
the goal allows and the remaining images get the compute.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from medrobust.utils.validation import check_range

Criterion = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def predictions(outputs: torch.Tensor) -> torch.Tensor:
    """Class indices from logits: argmax over dim 1, or logit > 0 for a single-logit head."""
    if outputs.shape[1] == 1:
        return (outputs[:, 0] > 0).long()
    return outputs.argmax(dim=1)


def misclassified(outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Untargeted classification success: the prediction is no longer the label."""
    return predictions(outputs) != labels


def hits_target(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Targeted classification success: the prediction equals the target."""
    return predictions(outputs) == targets


def foreground_iou(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(N,) foreground IoU of two (N,H,W) class masks; 1 when both have no foreground.

    Binary masks: IoU of the class-1 pixels. More classes: the mean IoU over the foreground
    classes present in either mask. Why our own few lines and not MONAI's MeanIoU: this runs
    inside attack loops on every step, where MONAI's one-hot conversion costs more than the
    comparison; the reported metrics (metrics/segmentation.py) use MONAI.
    """
    n = pred.shape[0]
    p = pred.reshape(n, -1)
    t = target.reshape(n, -1)
    top = int(max(int(p.max()) if p.numel() else 0, int(t.max()) if t.numel() else 0))
    total = torch.zeros(n, dtype=torch.float64, device=pred.device)
    count = torch.zeros(n, dtype=torch.float64, device=pred.device)
    for c in range(1, top + 1):
        pc, tc = p == c, t == c
        union = (pc | tc).sum(dim=1).double()
        inter = (pc & tc).sum(dim=1).double()
        seen = union > 0
        total += torch.where(seen, inter / union.clamp_min(1), torch.zeros_like(union))
        count += seen.double()
    return torch.where(count > 0, total / count.clamp_min(1), torch.ones_like(total))


def mask_iou_at_least(threshold: float) -> Criterion:
    """Segmentation success: foreground IoU between the predicted and the goal mask >= threshold."""
    threshold = float(check_range("stop_iou", threshold, 0, 1, low_inclusive=False))

    def criterion(outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return foreground_iou(predictions(outputs), target) >= threshold

    criterion.__name__ = f"mask_iou_at_least({threshold:g})"
    return criterion
