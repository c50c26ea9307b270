"""The multi-task landmark loss, per sample and per term (heatmap, offsets).

Authors' loss (Yao et al. code, METHODS.md section 6 continued): ``2 * BCE(heatmap) + L1(offsets)``
where BCE compares the sigmoid heatmap with the Gaussian-weighted disk (mean over landmarks and
pixels) and L1 is the absolute x and y offset error summed over the disk pixels and divided by the
number of disk pixels (x and y each, so the term is L1_x + L1_y). The Dice variant the
adversarial-training paper found more robust replaces the heatmap term with ``0.5 * (1 - Dice)``.
Terms are returned per sample so adaptive-margin training can threshold each one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medrobust.models.landmark_codec import split_outputs

HEATMAP_LOSSES = ("bce", "dice")


class LandmarkLoss(nn.Module):
    """``forward(outputs (B,3K,H,W), heat (B,K,H,W), offsets (B,2K,H,W), mask (B,K,H,W))``.

    Returns ``{"heatmap": (B,), "offset": (B,), "total": (B,)}`` with
    total = heatmap_weight * heatmap + offset. ``heatmap="bce"``: mean BCE-with-logits against the
    soft Gaussian target (default weight 2, as the authors). ``heatmap="dice"``: 0.5 * (1 - soft
    Dice) with Dice computed per landmark over the pixels (sigmoid probabilities vs the Gaussian
    target, smoothed by 1) and averaged over landmarks; pass ``heatmap_weight=1`` for the paper's
    ``0.5 (1 - Dice) + L1``.
    """

    def __init__(self, heatmap: str = "bce", heatmap_weight: float = 2.0, smooth: float = 1.0) -> None:
        super().__init__()
        if heatmap not in HEATMAP_LOSSES:
            raise ValueError(f"heatmap loss must be one of {', '.join(HEATMAP_LOSSES)}, got {heatmap!r}")
        self.heatmap = heatmap
        self.heatmap_weight = float(heatmap_weight)
        self.smooth = float(smooth)

    def terms(self, outputs: torch.Tensor, heat: torch.Tensor, offsets: torch.Tensor,
              mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """The per-sample terms {"heatmap": (B,), "offset": (B,)}."""
        logits, xoff, yoff = split_outputs(outputs)
        k = logits.shape[1]
        if heat.shape != logits.shape or mask.shape != logits.shape or offsets.shape[1] != 2 * k:
            raise ValueError(f"targets {tuple(heat.shape)} / {tuple(offsets.shape)} do not match "
                             f"outputs {tuple(outputs.shape)}")
        if self.heatmap == "bce":
            h = F.binary_cross_entropy_with_logits(logits, heat, reduction="none").flatten(1).mean(1)
        else:
            p = torch.sigmoid(logits).flatten(2)
            t = heat.flatten(2)
            dice = (2 * (p * t).sum(-1) + self.smooth) / (p.sum(-1) + t.sum(-1) + self.smooth)
            h = 0.5 * (1.0 - dice.mean(1))
        m = mask.flatten(1)
        count = m.sum(1).clamp_min(1.0)
        l1 = ((xoff.flatten(1) - offsets[:, :k].flatten(1)).abs() * m).sum(1) / count \
            + ((yoff.flatten(1) - offsets[:, k:].flatten(1)).abs() * m).sum(1) / count
        return {"heatmap": h, "offset": l1}

    def forward(self, outputs: torch.Tensor, heat: torch.Tensor, offsets: torch.Tensor,
                mask: torch.Tensor) -> dict[str, torch.Tensor]:
        t = self.terms(outputs, heat, offsets, mask)
        t["total"] = self.total(t)
        return t

    def total(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        """Per-sample weighted sum of the terms (B,); ``.mean()`` it for a batch loss."""
        return self.heatmap_weight * terms["heatmap"] + terms["offset"]
