"""BPDA (Athalye, Carlini & Wagner 2018): a non-differentiable filter forward, identity backward.

Median, bilateral, total-variation, non-local-means and wavelet filters run in NumPy (SciPy and
scikit-image), so gradients cannot flow through them and a plain gradient attack would be stopped
by a broken gradient, not by a robust defence. BPDA replaces the filter's Jacobian by the
identity on the backward pass, since each filter's output stays close to its input, which lets
PGD attack the composed model end to end.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

ArrayFilter = Callable[[np.ndarray], np.ndarray]


class _BPDAFunction(torch.autograd.Function):
    """y = f(x) forward (in NumPy), dL/dx = dL/dy backward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, fn: ArrayFilter) -> torch.Tensor:
        arr = x.detach().permute(0, 2, 3, 1).cpu().numpy().astype(np.float32, copy=True)
        out = fn(np.clip(arr, 0.0, 1.0))
        return torch.from_numpy(np.ascontiguousarray(out)).permute(0, 3, 1, 2).to(x.device, x.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


def bpda(x: torch.Tensor, fn: ArrayFilter) -> torch.Tensor:
    """Apply ``fn`` (float32 (N,H,W,C) [0,1] -> same) to (N,C,H,W) ``x`` with an identity gradient."""
    return _BPDAFunction.apply(x, fn)


class BPDA(nn.Module):
    """A module wrapping a NumPy image filter so it sits in a torch model (identity gradient)."""

    def __init__(self, fn: ArrayFilter, name: str = "filter") -> None:
        super().__init__()
        self.fn = fn
        self.name = name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return bpda(x, self.fn)

    def extra_repr(self) -> str:
        return self.name
