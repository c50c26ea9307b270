"""Robust training objectives for every task: VAT, TEAT and adaptive-margin adversarial training
(Ma & Liang, SPIE MI 2024), behind one interface (``objectives.Objective``).

One concept per file: ``config`` (settings), ``budget`` (L2 and per-pixel RMS scales),
``margins`` (per-sample margins), ``xi`` (threshold calibration), ``criteria`` ("correct"
rules), ``inner`` (the batched inner PGD), ``teat`` (temporal ensembling), ``objectives``,
``selection`` (which epoch is kept, the cheap validation attack), ``search`` (``--delta auto``).

Where the paper and the authors' code differ (METHODS.md section 6 continued), this follows:
- margins: the code (E_new accumulated per draw, applied at the epoch end, floored at D,
  clamped to [0, max margin]; "correct" over all 21 checks including the random start);
  boundary refinement is an option (``refine``), off by default as in the paper's text, and
  when on, the noisy loss of a failed sample is computed on the bisected boundary point, as the
  authors' landmark code trains (the recorded norm is that point's either way);
- the kept epoch: the final one by default (the authors' code; the paper does not say), or the
  best clean or best attacked validation epoch (``keep``, ``selection.py``);
- D: given, or searched on the validation split over five values (``search.py``), as the
  authors search it per dataset;
- xi: the paper's vector (one threshold per loss term, all must hold) for every task, with the
  landmark code's Huber rule available as ``xi="huber"`` (applied per term, not to one scalar);
  segmentation uses the code's Dice rule;
- VAT: the code's L2 segmentation variant (adversarial loss only, step alpha * eps / steps) for
  every task; the code's Linf VAT for landmarks/detection is not reproduced (budgets here are
  always L2 on the [0,1] scale, per-pixel RMS via ``budget.rms_255``);
- network mode during inner attacks: eval for all three (the code uses train mode for margins and
  VAT): see ``inner.py``.
"""

from medrobust.training.robust.budget import both_scales, l2_from_rms_255, rms_255
from medrobust.training.robust.config import KEEP, METHODS, XI_RULES, RobustConfig
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
    "KEEP", "METHODS", "OBJECTIVES", "TEAT", "VAT", "XI_RULES", "AdaptiveMargin", "DiceRule", "LossRule",
    "LossSpec", "Margins", "Objective", "RobustConfig", "TemporalEnsemble", "attack_seed",
    "both_scales", "build_objective", "calibrate_xi", "hard_dice", "huber_location_scale",
    "l2_from_rms_255", "margin_pgd", "rms_255", "sigmoid_ramp", "threshold",
]
