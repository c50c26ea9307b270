"""When is a noisy sample still "correct"? The two rules of adaptive-margin training.

``LossRule``: every loss term of the sample is at most its threshold xi (the paper's vector
condition, section 2.4). ``DiceRule`` (segmentation, the authors' nnU-Net code): the hard Dice of
the sample's best foreground class is at least a threshold, the mean clean training Dice of a
standard model; a slice without foreground in its mask counts as a failure, since no Dice can be
computed for it. Both map (outputs, targets, per-sample terms) to an (N,) bool.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import torch

from medrobust.errors import ConfigError


class Rule(Protocol):
    def __call__(self, outputs: torch.Tensor, targets: Any,
                 terms: Mapping[str, torch.Tensor]) -> torch.Tensor: ...

    def describe(self) -> dict[str, Any]: ...


class LossRule:
    """Correct when ``terms[k] <= xi[k]`` for every thresholded term k."""

    def __init__(self, xi: Mapping[str, float]) -> None:
        if not xi:
            raise ConfigError("a loss rule needs at least one threshold")
        self.xi = {k: float(v) for k, v in xi.items()}

    def __call__(self, outputs: torch.Tensor, targets: Any,
                 terms: Mapping[str, torch.Tensor]) -> torch.Tensor:
        missing = sorted(set(self.xi) - set(terms))
        if missing:
            raise ConfigError(f"xi names loss terms {', '.join(missing)} the task does not have")
        ok = [terms[k].detach() <= v for k, v in self.xi.items()]
        return torch.stack(ok).all(dim=0)

    def describe(self) -> dict[str, Any]:
        return {"rule": "loss", "xi": dict(self.xi)}


def hard_dice(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """(N,) hard Dice of the best foreground class present in each mask; 0 without foreground.

    ``logits`` (N,K,H,W), ``masks`` (N,H,W) class indices (or (N,1,H,W)). Runs at every inner
    PGD iterate, so it compares class indices per class instead of building one-hot maps
    (``max(1).indices``: ``argmax`` over the class axis is ten times slower on a CPU).
    """
    if masks.ndim == 4:
        masks = masks[:, 0]
    pred = logits.detach().max(dim=1).indices.flatten(1)
    true = masks.to(pred.device).long().flatten(1)
    best = torch.zeros(pred.shape[0], device=pred.device)
    for c in range(1, logits.shape[1]):
        p, t = pred == c, true == c
        inter = (p & t).sum(1).float()
        size = (p.sum(1) + t.sum(1)).float()
        dice = torch.where(t.any(1), 2 * inter / size.clamp_min(1), torch.zeros_like(inter))
        best = torch.maximum(best, dice)
    return best


def has_foreground(masks: torch.Tensor) -> torch.Tensor:
    """(N,) whether a mask holds any foreground pixel."""
    return masks.reshape(masks.shape[0], -1).gt(0).any(dim=1)


class DiceRule:
    """Correct when the hard best-foreground Dice is >= ``threshold`` (and foreground exists)."""

    def __init__(self, threshold: float) -> None:
        self.threshold = float(threshold)

    def __call__(self, outputs: torch.Tensor, targets: Any,
                 terms: Mapping[str, torch.Tensor]) -> torch.Tensor:
        masks = targets
        return (hard_dice(outputs, masks) >= self.threshold) & has_foreground(masks).to(
            outputs.device)

    def describe(self) -> dict[str, Any]:
        return {"rule": "dice", "threshold": self.threshold}
