"""``RobustConfig``: which training objective to use and its budgets, validated in one place.

Every budget is an L2 norm on medrobust's [0,1] pixel scale (the wrapper normalises inside), so
the same number means the same perturbation for every task; ``budget.rms_255`` converts it to a
per-pixel RMS in 1/255 units, which is what a reader can compare across image sizes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from medrobust.errors import ConfigError

METHODS = ("none", "vat", "teat", "adaptive-margin")
XI_RULES = ("mean", "mean+2std", "huber")
#: which epoch a robust run keeps (``selection.py``): the final one (the authors' code), the best
#: clean validation epoch (standard training's rule) or the best under the cheap validation attack
KEEP = ("final", "best-clean", "best-robust")
#: inner PGD steps per method when ``steps`` is not given: the authors' 20 for adaptive margins
#: and VAT (segmentation code), 10 for TEAT
DEFAULT_STEPS = {"vat": 20, "teat": 10, "adaptive-margin": 20}


@dataclass
class RobustConfig:
    """Settings of the robust objectives (``none`` = standard training, unchanged).

    eps: VAT / TEAT fixed L2 budget. delta: adaptive-margin expansion step D (margins start at
    D). alpha: inner step multiplier (step = alpha * budget / steps; authors: 4 for
    segmentation, 5 for detection). xi: threshold rule for "correct" (loss terms; segmentation
    uses the mean clean training Dice instead). max_margin: cap on margins (None: no cap).
    refine: bisect the boundary between the last correct and first wrong iterate (10 steps) so
    margins can shrink to it, and compute the noisy loss of a sample that failed on that
    boundary point instead of the final iterate (the authors' landmark code). teat_weight /
    teat_momentum: TEAT's penalty weight (the authors' 300) and moving-average momentum (0.9).
    vat_clean_weight: weight of the clean loss in VAT (0 = adversarial only, as Madry and the
    authors' stored code).

    delta may be ``"auto"``: D is searched on the validation split (``search.py``) with
    ``delta_search_epochs`` epochs per candidate (None: a quarter of the run's). keep: which
    epoch is kept (``KEEP``; the authors keep the final one). select_eps: the L2 budget of the
    cheap validation attack behind ``keep="best-robust"``, ``delta="auto"`` and the final
    epoch's record (None: ``selection.selection_budget``'s default).
    """

    method: str = "none"
    eps: float | None = None
    delta: float | str | None = None
    alpha: float = 4.0
    steps: int | None = None
    xi: str = "mean+2std"
    max_margin: float | None = None
    refine: bool = False
    teat_weight: float = 300.0
    teat_momentum: float = 0.9
    vat_clean_weight: float = 0.0
    keep: str = "final"
    select_eps: float | None = None
    delta_search_epochs: int | None = None

    @property
    def active(self) -> bool:
        return self.method != "none"

    @property
    def searches_delta(self) -> bool:
        """D is chosen by the validation search (``--delta auto``)."""
        return self.delta == "auto"

    @property
    def inner_steps(self) -> int:
        return int(self.steps) if self.steps is not None else DEFAULT_STEPS.get(self.method, 0)

    def validate(self) -> RobustConfig:
        """Refuse inconsistent settings with one line (before any data is loaded)."""
        if self.method not in METHODS:
            raise ConfigError(f"--robust must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.xi not in XI_RULES:
            raise ConfigError(f"--xi must be one of {', '.join(XI_RULES)}, got {self.xi!r}")

        def positive(name: str, value: float | None) -> None:
            if value is not None and (not math.isfinite(value) or value <= 0):
                raise ConfigError(f"--{name} must be a positive L2 budget on the [0,1] pixel "
                                  f"scale, got {value}")

        if isinstance(self.delta, str) and not self.searches_delta:
            raise ConfigError(f"--delta must be a positive L2 budget on the [0,1] pixel scale "
                              f"or auto, got {self.delta!r}")
        positive("eps", self.eps)
        if not self.searches_delta:
            positive("delta", self.delta)  # type: ignore[arg-type]
        if not math.isfinite(self.alpha) or self.alpha <= 0:
            raise ConfigError(f"--alpha must be positive (the inner PGD step is alpha * budget "
                              f"/ steps), got {self.alpha:g}")
        positive("max-margin", self.max_margin)
        positive("select-eps", self.select_eps)
        if self.keep not in KEEP:
            raise ConfigError(f"--keep must be one of {', '.join(KEEP)}, got {self.keep!r}")
        if self.max_margin is not None and isinstance(self.delta, (int, float)) \
                and self.max_margin <= self.delta:
            # margins start at D and never fall below it: a cap at or below D pins every
            # margin to the cap, i.e. fixed-budget training under an adaptive-margin label
            raise ConfigError(f"--max-margin {self.max_margin:g} must exceed --delta "
                              f"{self.delta:g}: margins start at D and grow by D up to the cap")
        if self.steps is not None and int(self.steps) < 1:
            raise ConfigError(f"inner PGD steps must be >= 1, got {self.steps}")
        if not 0 <= self.teat_momentum < 1:
            raise ConfigError(f"TEAT momentum must be in [0, 1), got {self.teat_momentum}")
        if self.teat_weight < 0:
            raise ConfigError(f"TEAT weight must be >= 0, got {self.teat_weight}")
        if not 0 <= self.vat_clean_weight <= 1:
            raise ConfigError(f"--clean-weight must be in [0, 1] (the clean loss's share of "
                              f"VAT's loss), got {self.vat_clean_weight}")
        if self.vat_clean_weight != 0 and self.method != "vat":
            raise ConfigError("--clean-weight applies to --robust vat only (adaptive-margin "
                              "weighs clean and noisy losses 0.5/0.5, TEAT trains on "
                              "adversarial images only)")
        if self.delta_search_epochs is not None:
            if not self.searches_delta:
                raise ConfigError("--delta-search-epochs applies to --delta auto only")
            if int(self.delta_search_epochs) < 1:
                raise ConfigError(f"--delta-search-epochs must be >= 1, got "
                                  f"{self.delta_search_epochs}")
        if self.searches_delta and self.max_margin is not None and self.select_eps is not None \
                and self.select_eps / 2 >= self.max_margin:
            # the grid's largest D is half the selection budget (search.FRACTIONS)
            raise ConfigError(f"--delta auto tries D up to half of --select-eps "
                              f"{self.select_eps:g}, which must stay below --max-margin "
                              f"{self.max_margin:g}")
        if self.method in ("vat", "teat") and self.eps is None:
            raise ConfigError(f"--robust {self.method} needs --eps (an L2 budget on the [0,1] "
                              "pixel scale)")
        if self.method == "adaptive-margin" and self.delta is None:
            raise ConfigError("--robust adaptive-margin needs --delta (the margin step D, L2 on "
                              "the [0,1] pixel scale, or auto to search it on the validation "
                              "split)")
        if self.method != "adaptive-margin" and (self.delta is not None
                                                 or self.max_margin is not None or self.refine):
            raise ConfigError("--delta, --max-margin and margin refinement apply to "
                              "--robust adaptive-margin only")
        if not self.active and self.select_eps is not None:
            raise ConfigError("--select-eps applies to robust training only")
        if self.method not in ("vat", "teat") and self.eps is not None:
            raise ConfigError("--eps applies to --robust vat and teat (adaptive-margin uses "
                              "--delta)")
        return self

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "steps": self.inner_steps if self.active else None}
