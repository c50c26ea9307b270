"""Per-sample loss callables for gradient attacks: ``loss(outputs, target) -> (N,)``.

Why per-sample: attacks step, stop and track each image on its own, so a batch-mean loss would
hide which image is done and would scale every gradient by 1/N. Targeted attacks use the same
callables and minimise them (the attack flips the sign), so no ``targeted_*`` twins are needed.

Shapes: classification logits (N,K) with integer targets (N,), a single-logit sigmoid head (N,1)
with 0/1 targets (N,), or segmentation logits (N,K,H,W) with integer masks (N,H,W).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from medrobust.errors import ConfigError

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _check(outputs: torch.Tensor, target: torch.Tensor) -> None:
    if outputs.ndim < 2 or target.shape[0] != outputs.shape[0]:
        raise ConfigError(f"loss: outputs {tuple(outputs.shape)} and target "
                          f"{tuple(target.shape)} do not describe the same batch")
    if outputs.ndim > 2 and tuple(target.shape) != (outputs.shape[0], *outputs.shape[2:]):
        raise ConfigError(f"loss: a segmentation target must be (N,H,W) = "
                          f"{(outputs.shape[0], *outputs.shape[2:])}, got {tuple(target.shape)}")


def cross_entropy(outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy per sample; for segmentation the mean over pixels.

    A single-logit head (N,1) gets binary cross-entropy with logits, so sigmoid detectors work
    with the same attacks as softmax classifiers.
    """
    _check(outputs, target)
    if outputs.shape[1] == 1:
        logit = outputs.reshape(outputs.shape[0], -1)
        return F.binary_cross_entropy_with_logits(
            logit, target.reshape(logit.shape[0], -1).to(logit.dtype).expand_as(logit),
            reduction="none").mean(dim=1)
    per = F.cross_entropy(outputs, target.long(), reduction="none")
    return per.reshape(per.shape[0], -1).mean(dim=1)


class DiceLoss:
    """Soft Dice loss per sample from segmentation logits (MONAI's ``DiceLoss``, softmax).

    ``include_background=False`` scores only the foreground classes, which is what a targeted
    mask attack usually cares about; the loss is averaged over the classes kept.
    """

    def __init__(self, include_background: bool = True) -> None:
        # MONAI takes ~3 s to import; only users of the Dice loss should pay for it.
        from monai.losses import DiceLoss as MonaiDiceLoss

        self.include_background = bool(include_background)
        self._loss = MonaiDiceLoss(include_background=self.include_background, to_onehot_y=True,
                                   softmax=True, reduction="none")

    def __call__(self, outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check(outputs, target)
        if outputs.ndim < 3 or outputs.shape[1] < 2:
            raise ConfigError("dice loss needs segmentation logits (N,K,H,W) with K >= 2")
        per = self._loss(outputs, target.long().unsqueeze(1))
        return per.reshape(per.shape[0], -1).mean(dim=1)

    def __repr__(self) -> str:
        return f"DiceLoss(include_background={self.include_background})"


dice_loss = DiceLoss()

LOSSES: dict[str, LossFn] = {"ce": cross_entropy, "dice": dice_loss}


def get_loss(name: str) -> LossFn:
    """A loss by its CLI name (``ce`` or ``dice``)."""
    if name not in LOSSES:
        raise ConfigError(f"unknown loss {name!r}: use one of {', '.join(LOSSES)}")
    return LOSSES[name]


def loss_name(loss: LossFn) -> str:
    """A short name for provenance records."""
    for name, fn in LOSSES.items():
        if fn is loss:
            return name
    return getattr(loss, "__name__", None) or repr(loss)
