"""``AttackResult``: what every attack returns, so campaigns and users read one shape.

torchattacks returns bare tensors and Foolbox a tuple whose meaning varies per attack; here every
attack gives the adversarial images plus, per image, whether it succeeded (when the attack has a
success test), what it cost (model queries for black-box attacks, gradient steps for white-box
ones) and attack-specific extras (a one-pixel attack's pixels and colours, ASMA's target IoU).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


def perturbation_norms(adversarial: torch.Tensor, clean: torch.Tensor) -> dict[str, torch.Tensor]:
    """(N,) L2 and Linf of ``adversarial - clean`` on the [0,1] scale, float64 on the CPU.

    Float64 so a budget check reads the float32 images exactly, the way the ensemble's judge
    does; one function so every table measures a perturbation the same way, with or without an
    ``AttackResult`` at hand. Images without pixels measure 0.
    """
    d = adversarial.detach().double() - clean.detach().to(adversarial.device).double()
    flat = d.flatten(1)
    linf = flat.abs().amax(dim=1) if flat.shape[1] else flat.new_zeros(flat.shape[0])
    return {"l2": flat.norm(dim=1).cpu(), "linf": linf.cpu()}


@dataclass
class AttackResult:
    """Per image of the batch, in input order.

    ``adversarial``: float [0,1] (N,C,H,W) on the device of the images given.
    ``success``: (N,) bool, or None when the attack was given no success test.
    ``queries``: (N,) long forward passes spent (black-box attacks), or None.
    ``steps``: (N,) long gradient steps taken (early stop freezes an image), or None.
    ``extras``: attack-specific per-image values (tensors or lists with N rows); they are also
    readable as attributes (``result.target_iou``).
    """

    adversarial: torch.Tensor
    success: torch.Tensor | None = None
    queries: torch.Tensor | None = None
    steps: torch.Tensor | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup fails: per-attack extras read as attributes.
        extras = self.__dict__.get("extras", {})
        if name in extras:
            return extras[name]
        raise AttributeError(f"{type(self).__name__} has no field or extra {name!r} "
                             f"(extras: {', '.join(sorted(extras)) or 'none'})")

    def __len__(self) -> int:
        return int(self.adversarial.shape[0])

    @property
    def success_rate(self) -> float | None:
        """Fraction of images attacked successfully (None without a success test)."""
        if self.success is None or len(self) == 0:
            return None
        return float(self.success.float().mean())

    def perturbation_norms(self, clean: torch.Tensor) -> dict[str, torch.Tensor]:
        """(N,) L2 and Linf of ``adversarial - clean`` (``result.perturbation_norms``)."""
        return perturbation_norms(self.adversarial, clean)

    def numpy(self) -> np.ndarray:
        """The adversarial images as uint8 (N,H,W,C) when they are exact 0..255 levels (a
        one-pixel attack), else float32 (N,H,W,C) in [0,1]: the datasets' layout."""
        x = self.adversarial.detach().cpu().permute(0, 2, 3, 1).numpy()
        levels = np.rint(x * 255.0)
        if np.array_equal((levels / 255.0).astype(np.float32), x):
            return levels.astype(np.uint8)
        return x.astype(np.float32)
