"""Iterative FGSM / BIM (Kurakin et al. 2017): PGD without the random start.

It shares every step and projection with ``PGD`` (only the defaults differ), so the two cannot
drift apart. The default step is eps / steps, so the last iterate can just reach the boundary;
with ``norm="l2"`` it is the normalised-gradient IFGSM used for L2 noise levels (Ma & Liang).
"""

from __future__ import annotations

import torch

from medrobust.attacks.pgd import PGD


class IFGSM(PGD):
    """Sign-gradient (Linf) or normalised-gradient (L2) steps from the clean image."""

    name = "ifgsm"
    default_random_start = False

    def default_step(self, eps: torch.Tensor) -> torch.Tensor:
        return eps / max(self.steps, 1)


BIM = IFGSM
