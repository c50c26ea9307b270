"""CenterNet's training loss as three per-sample terms (heatmap, size, offset) plus their total.

Kept per sample and per term so adversarial training can threshold each term on its own, as
adaptive-margin training does with YOLO's box / objectness / class losses, and so attacks can
maximise the total of one image without the others' objects diluting it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from medrobust.models.centernet import split_outputs
from medrobust.models.centernet_codec import encode, gather_cells

TERMS = ("heatmap", "size", "offset")


def focal_heatmap_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 2.0,
                       beta: float = 4.0) -> torch.Tensor:
    """CenterNet's penalty-reduced pixel focal loss per sample (B,), over the number of objects.

    Probabilities are clamped to [1e-4, 1 - 1e-4] as in CenterNet so a confident wrong cell
    cannot give an infinite loss; images without objects are normalised by 1.
    """
    p = torch.sigmoid(logits.float()).clamp(1e-4, 1 - 1e-4)
    pos = target.eq(1).float()
    neg = 1.0 - pos
    pos_loss = torch.log(p) * (1 - p) ** alpha * pos
    neg_loss = torch.log(1 - p) * p ** alpha * (1 - target) ** beta * neg
    n_pos = pos.flatten(1).sum(1)
    return -(pos_loss + neg_loss).flatten(1).sum(1) / n_pos.clamp(min=1)


def masked_l1(pred_maps: torch.Tensor, index: torch.Tensor, mask: torch.Tensor,
              target: torch.Tensor) -> torch.Tensor:
    """L1 between (B, 2, h, w) maps read at the object cells and (B, K, 2) targets, per sample.

    As CenterNet's RegL1Loss, divided by 2 x objects (both coordinates), 0 without objects.
    """
    pred = gather_cells(pred_maps.float(), index)
    m = mask[..., None].float()
    return ((pred - target).abs() * m).flatten(1).sum(1) / (2 * mask.float().sum(1) + 1e-4)


class DetectionLoss(nn.Module):
    """Per-sample CenterNet loss: ``{"heatmap", "size", "offset", "total"}``, each (B,).

    ``total`` = w_hm heatmap + w_size size + w_off offset with CenterNet's weights (1, 0.1, 1).
    Targets are the dict of ``centernet_codec.encode`` or a pair (boxes, labels) of per-image
    lists in input pixels, encoded here.
    """

    def __init__(self, num_classes: int, weights: tuple[float, float, float] = (1.0, 0.1, 1.0),
                 stride: int = 4, alpha: float = 2.0, beta: float = 4.0) -> None:
        super().__init__()
        self.num_classes, self.weights, self.stride = num_classes, tuple(weights), stride
        self.alpha, self.beta = alpha, beta

    def targets(self, outputs: torch.Tensor,
                targets: Mapping[str, torch.Tensor] | tuple[Sequence[torch.Tensor], Sequence[torch.Tensor]]
                ) -> Mapping[str, torch.Tensor]:
        if isinstance(targets, Mapping):
            return targets
        boxes, labels = targets
        boxes = [torch.as_tensor(b, dtype=torch.float32, device=outputs.device) for b in boxes]
        labels = [torch.as_tensor(lab, dtype=torch.long, device=outputs.device) for lab in labels]
        return encode(boxes, labels, tuple(outputs.shape[-2:]), self.num_classes, self.stride)

    def forward(self, outputs: torch.Tensor,
                targets: Mapping[str, torch.Tensor] | tuple[Sequence[torch.Tensor], Sequence[torch.Tensor]]
                ) -> dict[str, torch.Tensor]:
        t = self.targets(outputs, targets)
        logits, size, offset = split_outputs(outputs, self.num_classes)
        terms = {
            "heatmap": focal_heatmap_loss(logits, t["heatmap"], self.alpha, self.beta),
            "size": masked_l1(size, t["index"], t["mask"], t["size"]),
            "offset": masked_l1(offset, t["index"], t["mask"], t["offset"]),
        }
        terms["total"] = sum(w * terms[k] for w, k in zip(self.weights, TERMS, strict=True))
        return terms
