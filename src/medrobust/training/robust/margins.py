"""Per-sample L2 margins E(i) of adaptive-margin training (Ma & Liang 2024, the authors' code).

Margins are indexed by the dataset index of each training sample, so they follow the sample
through any shuffling. During an epoch nothing is applied: each draw folds the achieved noise
norm into E_new(i) = (E_new(i) + ||delta||_2) / 2 (E_new starts at E) and ANDs the "correct at
every inner iterate" flag. At the epoch end a sample that stayed correct grows by D (it can take
more noise), any other sample moves to max(E_new, D) (back towards the noise it could take), and
all margins are clamped to [0, max_margin]. Applying updates only at the epoch end keeps the
margins a batch sees independent of where in the epoch it is drawn.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from medrobust.errors import CheckpointError, ConfigError


class Margins:
    """E(i) for ``n`` samples, initialised to ``delta`` (D)."""

    def __init__(self, n: int, delta: float, max_margin: float | None = None) -> None:
        if n < 1 or not delta > 0:
            raise ConfigError(f"margins need n >= 1 samples and delta > 0, got {n} and {delta}")
        self.delta = float(delta)
        self.max_margin = None if max_margin is None else float(max_margin)
        self.values = torch.full((n,), self.delta, dtype=torch.float64)
        self._clamp()
        self.begin_epoch()

    def __len__(self) -> int:
        return int(self.values.shape[0])

    def _clamp(self) -> None:
        self.values.clamp_(min=0.0, max=self.max_margin)

    def begin_epoch(self) -> None:
        """Start accumulating: E_new = E, nobody drawn, everybody correct so far."""
        self._new = self.values.clone()
        self._drawn = torch.zeros(len(self), dtype=torch.bool)
        self._correct = torch.ones(len(self), dtype=torch.bool)

    def budgets(self, idx: torch.Tensor) -> torch.Tensor:
        """(N,) float32 margins of the dataset indices ``idx`` (the budgets of the inner PGD)."""
        return self.values[idx.long().cpu()].float()

    def record(self, idx: torch.Tensor, norms: torch.Tensor, correct: torch.Tensor) -> None:
        """Fold one draw of samples ``idx``: achieved L2 norms and whether every check held."""
        i = idx.long().cpu()
        if i.unique().numel() != i.numel():
            raise ConfigError("a batch drew the same sample twice; margins need distinct indices")
        self._new[i] = (self._new[i] + norms.detach().double().cpu()) / 2
        self._drawn[i] = True
        self._correct[i] &= correct.detach().bool().cpu()

    def end_epoch(self) -> dict[str, Any]:
        """Apply the epoch's update and return its summary (histogram and counts)."""
        grow = self._drawn & self._correct
        shrink = self._drawn & ~self._correct
        self.values[grow] += self.delta
        self.values[shrink] = torch.clamp(self._new[shrink], min=self.delta)
        self._clamp()
        summary = self.summary()
        summary.update(grew=int(grow.sum()), shrank=int(shrink.sum()),
                       drawn=int(self._drawn.sum()))
        self.begin_epoch()
        return summary

    def summary(self, bins: int = 10) -> dict[str, Any]:
        """Histogram (``bins`` equal bins from 0 to the largest margin) and moments."""
        v = self.values.numpy()
        top = max(float(v.max()), self.delta)
        counts, edges = np.histogram(v, bins=bins, range=(0.0, top))
        return {"mean": float(v.mean()), "median": float(np.median(v)), "min": float(v.min()),
                "max": float(v.max()), "edges": edges.tolist(), "counts": counts.tolist()}

    # --- persistence: plain tensors (resume state) and a safetensors file (checkpoint) ---

    def state_dict(self) -> dict[str, Any]:
        return {"values": self.values.clone(), "delta": self.delta,
                "max_margin": self.max_margin}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        values = torch.as_tensor(state["values"], dtype=torch.float64)
        if values.shape != self.values.shape:
            raise CheckpointError(f"saved margins are for {values.shape[0]} samples, this "
                                  f"training set has {len(self)}")
        self.values = values.clone()
        self.begin_epoch()

    def save(self, path: str | Path) -> Path:
        """Write the margins as safetensors (never a pickle), D and the cap as metadata."""
        p = Path(path)
        save_file({"margins": self.values.contiguous()}, str(p),
                  metadata={"delta": repr(self.delta), "max_margin": repr(self.max_margin),
                            "scale": "L2 on the [0,1] pixel scale, per dataset index"})
        return p

    @classmethod
    def load(cls, path: str | Path) -> Margins:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        values = load_file(str(path))["margins"]
        cap = meta.get("max_margin", "None")
        out = cls(int(values.shape[0]), float(meta["delta"]),
                  None if cap == "None" else float(cap))
        out.values = values.double().clone()
        out.begin_epoch()
        return out
