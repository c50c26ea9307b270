"""Robust training objectives for every task: VAT, TEAT and adaptive-margin adversarial training
(Ma & Liang, SPIE MI 2024), behind one interface (``objectives.Objective``).

One concept per file: ``config`` (settings), ``budget`` (L2 and per-pixel RMS scales),
``margins`` (per-sample margins), ``xi`` (threshold calibration), ``criteria`` ("correct"
rules), ``inner`` (the batched inner PGD), ``teat`` (temporal ensembling), ``objectives``.
"""

from medrobust.training.robust.budget import both_scales, l2_from_rms_255, rms_255
from medrobust.training.robust.config import METHODS, XI_RULES, RobustConfig
from medrobust.training.robust.criteria import DiceRule, LossRule, hard_dice
from medrobust.training.robust.inner import attack_seed, margin_pgd
from medrobust.training.robust.margins import Margins
from medrobust.training.robust.objectives import (
    OBJECTIVES,
    TEAT,
    VAT,
    AdaptiveMargin,
    LossSpec,
    Objective,
    build_objective,
)
from medrobust.training.robust.teat import TemporalEnsemble, sigmoid_ramp
from medrobust.training.robust.xi import calibrate_xi, huber_location_scale, threshold

__all__ = [
    "METHODS", "OBJECTIVES", "TEAT", "VAT", "XI_RULES", "AdaptiveMargin", "DiceRule", "LossRule",
    "LossSpec", "Margins", "Objective", "RobustConfig", "TemporalEnsemble", "attack_seed",
    "both_scales", "build_objective", "calibrate_xi", "hard_dice", "huber_location_scale",
    "l2_from_rms_255", "margin_pgd", "rms_255", "sigmoid_ramp", "threshold",
]
