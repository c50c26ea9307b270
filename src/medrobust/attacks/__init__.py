"""Attacks: one per file on the small ``Attack`` base."""

from medrobust.attacks.apgd import APGD, APGDT, dlr_loss, dlr_targeted_loss, margin_loss
from medrobust.attacks.asma import ASMA
from medrobust.attacks.base import Attack
from medrobust.attacks.criteria import hits_target, mask_iou_at_least, misclassified
from medrobust.attacks.dense_apgd import DenseAPGD
from medrobust.attacks.dense_square import DenseSquare
from medrobust.attacks.ensemble import AttackEnsemble, standard_attacks
from medrobust.attacks.ifgsm import BIM, IFGSM
from medrobust.attacks.losses import DiceLoss, cross_entropy, dice_loss
from medrobust.attacks.objective import Objective
from medrobust.attacks.onepixel import OnePixel, OnePixelResult
from medrobust.attacks.pgd import PGD
from medrobust.attacks.result import AttackResult
from medrobust.attacks.square import Square

__all__ = [
    "APGD",
    "APGDT",
    "ASMA",
    "BIM",
    "IFGSM",
    "PGD",
    "Attack",
    "AttackEnsemble",
    "AttackResult",
    "DenseAPGD",
    "DenseSquare",
    "DiceLoss",
    "Objective",
    "OnePixel",
    "OnePixelResult",
    "Square",
    "cross_entropy",
    "dice_loss",
    "dlr_loss",
    "dlr_targeted_loss",
    "hits_target",
    "margin_loss",
    "mask_iou_at_least",
    "misclassified",
    "standard_attacks",
]
