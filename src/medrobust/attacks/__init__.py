"""Attacks: one per file on the small ``Attack`` base."""

from medrobust.attacks.asma import ASMA
from medrobust.attacks.base import Attack
from medrobust.attacks.criteria import hits_target, mask_iou_at_least, misclassified
from medrobust.attacks.ifgsm import BIM, IFGSM
from medrobust.attacks.losses import DiceLoss, cross_entropy, dice_loss
from medrobust.attacks.objective import Objective
from medrobust.attacks.onepixel import OnePixel, OnePixelResult
from medrobust.attacks.pgd import PGD
from medrobust.attacks.result import AttackResult

__all__ = [
    "ASMA",
    "BIM",
    "IFGSM",
    "PGD",
    "Attack",
    "AttackResult",
    "DiceLoss",
    "Objective",
    "OnePixel",
    "OnePixelResult",
    "cross_entropy",
    "dice_loss",
    "hits_target",
    "mask_iou_at_least",
    "misclassified",
]
