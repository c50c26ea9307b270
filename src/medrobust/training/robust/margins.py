"""Per-sample L2 margins E(i) of adaptive-margin training (Ma & Liang 2024, the authors' code).

Margins are indexed by the dataset index of each training sample, so they follow the sample
through any shuffling. During an epoch nothing is applied: each draw folds the achieved noise
norm into E_new(i) = (E_new(i) + ||delta||_2) / 2 (E_new starts at E) and ANDs the "correct at
every inner iterate" flag. At the epoch end a sample that stayed correct grows by D (it can take
more noise), any other sample moves to max(E_new, D) (back towards the noise it could take), and
all margins are clamped to [0, max_margin]. Applying updates only at the epoch end keeps the
margins a batch sees independent of where in the epoch it is drawn.

Each epoch's summary says how many margins grew, shrank and stayed (by value: a failed sample
already at the floor D stays, a correct one at the cap stays), how many samples the rule judged
correct or failed, and two histograms: ``counts``/``edges`` (10 equal bins from 0 to the
largest margin, which the report refines) and ``d_histogram`` (fixed bins in units of D, the
same for every epoch and run, so epochs compare bin by bin). Margins that never move beyond D
mean the run was fixed-budget training at D (``never_moved``): every sample failed every epoch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from medrobust.errors import CheckpointError, ConfigError

#: lower edges of ``d_histogram``'s bins in units of D; the last bin is open (>= 32 D). Margins
#: never fall below D, so the first bin [1, 1.5) holds every margin still at the floor.
D_BINS = (1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0)
#: relative slack of "beyond D" (margins at the floor are exactly D in float64)
MOVED_TOL = 1e-9


class MarginsNeverMoved(UserWarning):
    """Adaptive margins stayed at D for the whole run: it trained at one fixed budget."""


def d_histogram(values: np.ndarray, delta: float) -> dict[str, Any]:
    """Counts of ``values`` in ``D_BINS`` (units of ``delta``); values below D fall in the first
    bin, so the counts always sum to the number of margins."""
    idx = np.searchsorted(np.asarray(D_BINS), np.asarray(values) / delta, side="right") - 1
    counts = np.bincount(np.clip(idx, 0, len(D_BINS) - 1), minlength=len(D_BINS))
    return {"unit": "D", "lower_edges": list(D_BINS), "counts": counts.tolist()}


def never_moved(rows: list[dict[str, Any]], delta: float | None = None) -> bool:
    """Whether the per-epoch margin summaries ``rows`` never saw a margin beyond D (each row's
    own ``delta``, else ``delta``); False without rows or without a known D."""
    if not rows:
        return False
    for r in rows:
        d = r.get("delta", delta)
        if d is None or float(r["max"]) > float(d) * (1 + MOVED_TOL):
            return False
    return True


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
        """Fold one draw of samples ``idx``: achieved L2 norms and whether every check held.

        A norm is capped at the sample's margin, the budget it was attacked with: measured on
        float32 images it can read a few ulps over it (0.1 in float32 is 0.1000000015), which
        would otherwise let a failing margin creep above D by rounding alone."""
        i = idx.long().cpu()
        if i.unique().numel() != i.numel():
            raise ConfigError("a batch drew the same sample twice; margins need distinct indices")
        achieved = torch.minimum(norms.detach().double().cpu(), self.values[i])
        self._new[i] = (self._new[i] + achieved) / 2
        self._drawn[i] = True
        self._correct[i] &= correct.detach().bool().cpu()

    def end_epoch(self) -> dict[str, Any]:
        """Apply the epoch's update and return its summary (see the module doc): grew + shrank
        + stayed = n, correct + failed = drawn."""
        before = self.values.clone()
        correct = self._drawn & self._correct
        failed = self._drawn & ~self._correct
        self.values[correct] += self.delta
        self.values[failed] = torch.clamp(self._new[failed], min=self.delta)
        self._clamp()
        grew, shrank = self.values > before, self.values < before
        summary = self.summary()
        summary.update(grew=int(grew.sum()), shrank=int(shrank.sum()),
                       stayed=int((~grew & ~shrank).sum()), correct=int(correct.sum()),
                       failed=int(failed.sum()), drawn=int(self._drawn.sum()))
        self.begin_epoch()
        return summary

    def summary(self, bins: int = 10) -> dict[str, Any]:
        """Histograms (``bins`` equal bins from 0 to the largest margin; fixed bins in units of
        D), moments, D and how many margins are beyond it."""
        v = self.values.numpy()
        top = max(float(v.max()), self.delta)
        counts, edges = np.histogram(v, bins=bins, range=(0.0, top))
        return {"mean": float(v.mean()), "median": float(np.median(v)), "min": float(v.min()),
                "max": float(v.max()), "edges": edges.tolist(), "counts": counts.tolist(),
                "delta": self.delta,
                "beyond_delta": int((v > self.delta * (1 + MOVED_TOL)).sum()),
                "d_histogram": d_histogram(v, self.delta)}

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
