"""TEAT (temporal-ensembling adversarial training, Dong et al. ICLR 2022) adapted as the
adaptive-margin authors did: soft labels are a moving average of each sample's past softmax
outputs, and the training loss adds a penalty on the squared gap to them.

Per sample and per output head (a classifier's logits; a segmenter's, landmark model's or
detector's whole output map) the head is flattened to (D,) and softmaxed over all D values; the
store keeps ``p <- m p + (1 - m) softmax`` (m = 0.9, starting from zeros) and the soft label is
p renormalised to sum 1 (which also undoes the zero start). The penalty is the mean over the D
values of the squared gap (the authors' code; note it shrinks with D, which is why their weight
is as large as 300), summed over heads, and its weight is ramped in with the usual sigmoid ramp
exp(-5 (1 - t)^2) from 50 % to 70 % of the epochs.

Memory: the store holds n_train x D floats per head on the CPU (a 19-landmark model at 200x160
holds 1.8 M values per sample).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from medrobust.errors import CheckpointError


def sigmoid_ramp(epoch: int, epochs: int, start: float = 0.5, end: float = 0.7) -> float:
    """Ramp factor in [0, 1] for the 1-based ``epoch`` of ``epochs``: 0 before ``start`` of the
    epochs, exp(-5 (1 - t)^2) in between (t the fraction of the ramp done), 1 after ``end``."""
    e0, e1 = start * epochs, end * epochs
    done = epoch - 1  # completed epochs when this one starts
    if done < e0:
        return 0.0
    if e1 <= e0:
        return 1.0
    t = min((done - e0) / (e1 - e0), 1.0)
    return float(math.exp(-5.0 * (1.0 - t) ** 2))


class TemporalEnsemble:
    """Moving averages of per-sample softmax outputs, one store per head, indexed by dataset
    index. ``update`` folds new outputs in; ``targets`` gives the renormalised soft labels."""

    def __init__(self, n: int, momentum: float = 0.9) -> None:
        self.n, self.momentum = int(n), float(momentum)
        self.stores: list[torch.Tensor] = []

    @staticmethod
    def flat_softmax(head: torch.Tensor) -> torch.Tensor:
        return head.flatten(1).float().softmax(dim=1)

    def _ensure(self, heads: Sequence[torch.Tensor]) -> None:
        if not self.stores:
            self.stores = [torch.zeros(self.n, h[0].numel()) for h in heads]
        if len(heads) != len(self.stores) or any(
                h[0].numel() != s.shape[1] for h, s in zip(heads, self.stores, strict=True)):
            raise CheckpointError("TEAT outputs changed shape between batches")

    def targets(self, idx: torch.Tensor, heads: Sequence[torch.Tensor]
                ) -> list[torch.Tensor | None]:
        """Per head, the (N, D) soft labels of ``idx`` (None where no sample has history)."""
        self._ensure(heads)
        out: list[torch.Tensor | None] = []
        i = idx.long().cpu()
        for store, h in zip(self.stores, heads, strict=True):
            p = store[i].to(h.device)
            total = p.sum(1, keepdim=True)
            out.append(None if bool((total == 0).all()) else p / total.clamp_min(1e-30))
        return out

    def penalty(self, idx: torch.Tensor, heads: Sequence[torch.Tensor]) -> torch.Tensor:
        """(N,) mean squared gap between each head's softmax and its soft label, summed over
        heads; samples without history contribute 0."""
        soft = self.targets(idx, heads)
        total = heads[0].new_zeros(heads[0].shape[0], dtype=torch.float32)
        for h, t in zip(heads, soft, strict=True):
            if t is None:
                continue
            has = (t.sum(1) > 0).float()
            total = total + has * (self.flat_softmax(h) - t).square().mean(1)
        return total

    @torch.no_grad()
    def update(self, idx: torch.Tensor, heads: Sequence[torch.Tensor]) -> None:
        self._ensure(heads)
        i = idx.long().cpu()
        for store, h in zip(self.stores, heads, strict=True):
            store[i] = self.momentum * store[i] + (1 - self.momentum) * self.flat_softmax(
                h.detach()).cpu()

    def state_dict(self) -> dict[str, Any]:
        return {"momentum": self.momentum, "stores": [s.clone() for s in self.stores]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        stores = [torch.as_tensor(s).float() for s in state["stores"]]
        if any(s.shape[0] != self.n for s in stores):
            raise CheckpointError(f"saved TEAT ensemble is not for {self.n} samples")
        self.stores = stores
