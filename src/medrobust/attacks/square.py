"""Square attack (Andriushchenko et al. 2020): a score-based black-box attack by random squares.

Why it belongs beside APGD: it never looks at a gradient, so a defence that only breaks
gradients (a non-differentiable filter, a quantiser, stochastic layers without EOT) does not
stop it. Robustness claimed against gradient attacks alone is suspect until Square agrees.

Each query changes one random square window of the perturbation and is kept only if it lowers
the margin loss z_y - max_{j != y} z_j (logits; the signed logit for a sigmoid head). The
window's share of the image, p, follows the paper's schedule: p_init until 1% of the budget
(rescaled to 10,000 queries), then halved at 0.5%, 2%, 5%, 10%, 20%, 40%, 60% and 80%.

* Linf: the start is vertical stripes of +-eps; a window is set to +-eps per channel (redrawn
  when that would leave the image unchanged, so no query is wasted).
* L2: the start is a grid of the paper's "pseudo-Gaussian" blocks rescaled to norm eps; a
  window gets a new block of that shape while a second window gives up its mass, and the whole
  perturbation is rescaled to norm eps.

Queries: every forward pass of an image counts, the check of the clean image included (one
more than AutoAttack counts), and an image is queried only until it is misclassified, so
``queries`` per image never exceeds ``max_queries``. Every queried point holds its budget
exactly (``projection.enforce_budget``), so the success recorded is that of the returned image.

Randomness: each image draws from its own counter-based stream (named by its ``key``), so its
windows and signs are the same alone or in any batch, at no per-image Python cost.

The candidates are module functions (``square_candidate`` and the Linf / L2 pieces), shared
with ``dense_square.DenseSquare``, which searches a task's metric instead of the margin.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from medrobust.attacks.apgd import margin_loss
from medrobust.attacks.base import Attack, AttackProgress, output_device
from medrobust.attacks.criteria import misclassified
from medrobust.attacks.projection import (
    NORMS,
    Budget,
    budget_param,
    enforce_budget,
    plain_budget,
)
from medrobust.attacks.result import AttackResult
from medrobust.utils.seeding import numpy_rng
from medrobust.utils.validation import check_choice, check_range

#: (upper bound of the rescaled iteration, divisor of p_init) from the paper's schedule
P_SCHEDULE = ((10, 1), (50, 2), (200, 4), (500, 8), (1000, 16), (2000, 32), (4000, 64),
              (6000, 128), (8000, 256), (10000, 512))
#: sign vectors tried at once per Linf query; all 16 leaving the image unchanged is rare
LINF_TRIES = 16
_DRAWS_PER_QUERY = 1 << 20  # room in each image's stream per query (the L2 start needs most)
_GAMMA = np.uint64(0x9E3779B97F4A7C15)


def p_schedule(p_init: float, iteration: int, iterations: int) -> float:
    """The window share at ``iteration`` of ``iterations`` (the paper's piecewise halving,
    written for 10,000 iterations and rescaled)."""
    it = int(iteration / max(iterations, 1) * 10000)
    if it <= 10:
        return p_init
    for bound, divisor in P_SCHEDULE[1:]:
        if it <= bound:
            return p_init / divisor
    return p_init


def _mix(z: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: consecutive counters become independent-looking 64-bit words."""
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def keyed_uniforms(bases: np.ndarray, draw: int, count: int) -> np.ndarray:
    """(N, count) float64 uniforms in [0, 1): draw number ``draw`` of each image's stream.

    A counter-based generator (SplitMix64 over base + index * gamma): vectorised over images,
    yet each row depends only on its own base, so batching never changes an image's numbers.
    """
    index = np.arange(count, dtype=np.uint64) + np.uint64(draw) * np.uint64(_DRAWS_PER_QUERY)
    with np.errstate(over="ignore"):
        z = bases[:, None] + (index[None, :] + np.uint64(1)) * _GAMMA
    return (_mix(z) >> np.uint64(11)).astype(np.float64) * 2.0 ** -53


def _rectangle(a: int, b: int) -> np.ndarray:
    """The paper's pseudo-Gaussian block: nested rectangles around the centre weighted
    1/(k+1)^2, unit L2 norm."""
    out = np.zeros((a, b))
    r, c = a // 2, b // 2
    for k in range(max(a // 2 + 1, b // 2 + 1)):
        out[max(r - k, 0):min(r - k + 2 * k + 1, a), max(c - k, 0):min(c - k + 2 * k + 1, b)] \
            += 1.0 / (k + 1) ** 2
    norm = np.sqrt((out ** 2).sum())
    return out / norm if norm > 0 else out


@functools.lru_cache(maxsize=64)
def block(s: int) -> np.ndarray:
    """An s x s update for L2: a positive pseudo-Gaussian over the top half and a negative one
    over the bottom half (the paper's two sub-squares), unit L2 norm."""
    out = np.zeros((s, s))
    out[:s // 2] = _rectangle(s // 2, s)
    out[s // 2:] = -_rectangle(s - s // 2, s)
    norm = np.sqrt((out ** 2).sum())
    return out / norm if norm > 0 else out


def _span(start: torch.Tensor, size: int, length: int) -> torch.Tensor:
    """(m, length) bool: positions inside [start, start + size) per image."""
    pos = torch.arange(length, device=start.device)
    return (pos[None, :] >= start[:, None]) & (pos[None, :] < start[:, None] + size)


def _window_index(start_h: torch.Tensor, start_w: torch.Tensor, s: int
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ar = torch.arange(s, device=start_h.device)
    rows = (start_h[:, None] + ar)[:, :, None]
    cols = (start_w[:, None] + ar)[:, None, :]
    return torch.arange(start_h.shape[0], device=start_h.device)[:, None, None], rows, cols


class Square(Attack):
    """Untargeted Square attack, Linf or L2, with a per-image query budget.

    Parameters
    ----------
    model: any module mapping float [0,1] (N,C,H,W) to class logits (N,K) or a sigmoid
        logit (N,1); only its outputs are used.
    norm: ``linf`` or ``l2``.
    eps: the radius, a number or one per image of ``run``'s batch.
    max_queries: forward passes allowed per image, the clean check included (AutoAttack: 5000).
    p_init: the first window share of the image (AutoAttack uses 0.8 for both norms; the paper
        0.05 for Linf on ImageNet, 0.1 for L2).
    batch_size: images attacked together (all queried at once, each query).
    progress: show a bar on stderr that moves every query (``Attack``).
    """

    name = "square"

    def __init__(self, model: nn.Module, norm: str = "linf", eps: Budget = 8 / 255,
                 max_queries: int = 5000, p_init: float = 0.8, batch_size: int = 256,
                 seed: int = 0, progress: bool = False) -> None:
        super().__init__(model, seed, progress)
        self.norm = check_choice("norm", norm, NORMS)
        self.eps = budget_param("eps", eps, self.norm)
        self.max_queries = int(check_range("max_queries", max_queries, 1))
        self.p_init = float(check_range("p_init", p_init, 0.0, 1.0, low_inclusive=False))
        self.batch_size = int(check_range("batch_size", batch_size, 1))

    @property
    def label(self) -> str:
        return self.name

    def params(self) -> dict[str, Any]:
        return {"attack": self.name, "norm": self.norm, "eps": plain_budget(self.eps),
                "max_queries": self.max_queries, "p_init": self.p_init, "seed": self.seed}

    def run(self, images: Any, labels: Any, keys: Sequence[int] | None = None,
            **kwargs: Any) -> AttackResult:
        """Attack ``images`` (pixel space: torch (N,C,H,W) or NumPy (N,H,W,C), uint8 or float)
        away from their true ``labels``. ``keys`` name each image's random stream (default
        0..N-1). The result's ``success`` is misclassification of the returned images and
        ``queries`` the forward passes each image cost."""
        batch = self.labelled_batch(images, labels, keys, kwargs)
        device, x, y, keys, eps = batch.device, batch.x, batch.y, batch.keys, batch.eps
        n = x.shape[0]
        out = x.clone()
        success = torch.zeros(n, dtype=torch.bool)
        queries = torch.zeros(n, dtype=torch.long)
        with self.progress_bar(n) as bar:
            for s in range(0, n, self.batch_size):
                e = min(s + self.batch_size, n)
                out[s:e], success[s:e], queries[s:e] = self._attack(x[s:e], y[s:e], eps[s:e],
                                                                    keys[s:e], bar)
                bar.settle(e - s)
        return AttackResult(out.to(output_device(images, device)), success=success,
                            queries=queries)

    # --- one batch ----------------------------------------------------------------------------
    @torch.no_grad()
    def _attack(self, x0: torch.Tensor, y: torch.Tensor, eps: torch.Tensor, keys: list[int],
                bar: AttackProgress | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n = x0.shape[0]
        bases = square_bases(self.seed, keys)
        queries = torch.zeros(n, dtype=torch.long)
        out = self.model(x0)
        queries += 1
        done = misclassified(out, y)
        best = x0.clone()
        loss = -margin_loss(out, y)
        todo = ~done & (eps > 0)
        plus, minus = linf_vertices(x0, eps) if self.norm == "linf" else (x0, x0)
        for it in range(-1, self.max_queries - 2):
            idx = todo.nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            b = bases[idx.cpu().numpy()]
            cand = square_candidate(self.norm, b, it, self.p_init, self.max_queries, x0[idx],
                                    eps[idx], plus[idx], minus[idx], best[idx])
            o = self.model(cand)
            queries[idx.cpu()] += 1
            fooled = misclassified(o, y[idx])
            new_loss = -margin_loss(o, y[idx])
            # the start replaces the clean image whatever its loss (as in the paper)
            keep = fooled | (new_loss < loss[idx]) | (it < 0)
            ki = idx[keep]
            best[ki], loss[ki] = cand[keep], new_loss[keep]
            done[idx[fooled]] = True
            todo[idx[fooled]] = False
            if bar is not None:  # each query is 1/max_queries of an image's budget
                bar.advance(idx.numel() / self.max_queries)
        return best, done.cpu(), queries


# --- the candidates (shared with dense_square) ---------------------------------------------
def linf_start(bases: np.ndarray, plus: torch.Tensor, minus: torch.Tensor) -> torch.Tensor:
    """Linf's first candidate: vertical stripes of +-eps (one sign per channel and column)."""
    m, c, _, w = plus.shape
    u = torch.from_numpy(keyed_uniforms(bases, 0, c * w)).to(plus.device)
    up = (u < 0.5).view(m, c, 1, w)
    return torch.where(up, plus, minus)


def linf_step(bases: np.ndarray, it: int, p: float, plus: torch.Tensor, minus: torch.Tensor,
              best: torch.Tensor) -> torch.Tensor:
    """Linf's candidate at iteration ``it``: a window of share ``p`` of ``best`` set to +eps
    or -eps per channel (redrawn when that would change nothing)."""
    m, c, h, w = best.shape
    s = max(1, min(round(math.sqrt(p * h * w)), min(h, w) - 1))
    u = torch.from_numpy(keyed_uniforms(bases, it + 1, 2 + LINF_TRIES * c)).to(best.device)
    top = (u[:, 0] * (h - s + 1)).long().clamp(max=h - s)
    left = (u[:, 1] * (w - s + 1)).long().clamp(max=w - s)
    win = (_span(top, s, h)[:, :, None] & _span(left, s, w)[:, None, :]).unsqueeze(1)
    signs = (u[:, 2:] < 0.5).view(m, LINF_TRIES, c)
    # does setting a channel's window to +eps (or -eps) change the image at all?
    moves_up = (((plus - best).abs() >= 1e-7) & win).flatten(2).any(dim=2)
    moves_down = (((minus - best).abs() >= 1e-7) & win).flatten(2).any(dim=2)
    changes = torch.where(signs, moves_up[:, None, :], moves_down[:, None, :]).any(dim=2)
    first = changes.int().argmax(dim=1)  # the first try that changes something (else try 0)
    chosen = signs[torch.arange(m, device=best.device), first].view(m, c, 1, 1)
    return torch.where(win, torch.where(chosen, plus, minus), best)


def l2_start(bases: np.ndarray, x0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """L2's first candidate: a grid of pseudo-Gaussian blocks of random signs, norm eps."""
    m, c, h, w = x0.shape
    s = max(1, min(h, w) // 5)
    top0, left0 = max(0, (h - 5 * s) // 2), max(0, (w - 5 * s) // 2)
    tiles = [(top0 + i * s, left0 + j * s) for i in range(h // s) for j in range(w // s)
             if top0 + i * s < h and left0 + j * s < w]
    u = torch.from_numpy(keyed_uniforms(bases, 0, len(tiles) * (1 + c))).to(x0.device)
    u = u.view(m, len(tiles), 1 + c)
    pattern = torch.from_numpy(block(s)).to(x0)
    delta = torch.zeros_like(x0)
    for t, (r0, c0) in enumerate(tiles):
        hh, ww = min(s, h - r0), min(s, w - c0)
        pat = torch.where((u[:, t, 0] < 0.5).view(m, 1, 1), pattern.T, pattern)
        sign = torch.where(u[:, t, 1:] < 0.5, 1.0, -1.0).to(x0).view(m, c, 1, 1)
        delta[:, :, r0:r0 + hh, c0:c0 + ww] += (pat[:, None, :hh, :ww] * sign)
    return l2_scale(x0, delta, eps)


def l2_scale(x0: torch.Tensor, delta: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """x0 + delta rescaled to norm eps, in [0,1], budget exact."""
    norm = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
    cand = (x0 + delta * (eps / norm).view(-1, 1, 1, 1)).clamp(0.0, 1.0)
    return enforce_budget(x0, cand, eps, "l2")


def l2_step(bases: np.ndarray, it: int, p: float, x0: torch.Tensor, eps: torch.Tensor,
            best: torch.Tensor) -> torch.Tensor:
    """L2's candidate at iteration ``it``: a new block in one window of share ``p``, the mass
    of a second window moved into it, the whole rescaled to norm eps."""
    m, c, h, w = x0.shape
    s = max(round(math.sqrt(p * h * w)), 3)
    s += 1 - s % 2  # odd, so the block has a centre
    s = min(s, h, w)
    u = torch.from_numpy(keyed_uniforms(bases, it + 1, 5 + c)).to(x0.device)
    starts = [(u[:, k] * (lim - s + 1)).long().clamp(max=lim - s)
              for k, lim in ((0, h), (1, w), (2, h), (3, w))]
    delta = best - x0
    win1 = (_span(starts[0], s, h)[:, :, None] & _span(starts[1], s, w)[:, None, :])
    win2 = (_span(starts[2], s, h)[:, :, None] & _span(starts[3], s, w)[:, None, :])
    win1, win2 = win1.unsqueeze(1), win2.unsqueeze(1)
    ar, rows, cols = _window_index(starts[0], starts[1], s)
    old = delta[ar, :, rows, cols].permute(0, 3, 1, 2)  # (m, c, s, s) of window 1
    old_norm = old.pow(2).sum(dim=(2, 3), keepdim=True).sqrt()
    image_norm = delta.flatten(1).norm(dim=1).view(m, 1, 1, 1)
    union_norm = (delta * (win1 | win2)).pow(2).sum(dim=(2, 3), keepdim=True).sqrt()
    pattern = torch.from_numpy(block(s)).to(x0)
    pat = torch.where((u[:, 4] < 0.5).view(m, 1, 1), pattern.T, pattern).unsqueeze(1)
    sign = torch.where(u[:, 5:] < 0.5, 1.0, -1.0).to(x0).view(m, c, 1, 1)
    new = pat * sign + old / (old_norm + 1e-10)
    e2 = eps.view(m, 1, 1, 1) ** 2
    # the mass window 1 may hold: what is left of the budget plus what both windows held
    mass = ((e2 - image_norm ** 2).clamp_min(0) / c + union_norm ** 2).sqrt()
    new = new / new.pow(2).sum(dim=(2, 3), keepdim=True).sqrt().clamp_min(1e-12) * mass
    delta = delta.masked_fill(win2, 0.0)
    delta[ar, :, rows, cols] = new.permute(0, 2, 3, 1)
    return l2_scale(x0, delta, eps)


def square_bases(seed: int, keys: Sequence[int]) -> np.ndarray:
    """Each image's counter-based stream (``keyed_uniforms``), named by its key."""
    return np.array([numpy_rng(seed, int(k)).integers(2**63, dtype=np.uint64) for k in keys],
                    dtype=np.uint64)


def linf_vertices(x0: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x0 + eps and x0 - eps in [0,1], budget exact: every Linf candidate is made of them."""
    e = eps.view(-1, 1, 1, 1)
    return (enforce_budget(x0, x0 + e, eps, "linf"), enforce_budget(x0, x0 - e, eps, "linf"))


def square_candidate(norm: str, bases: np.ndarray, it: int, p_init: float, iterations: int,
                     x0: torch.Tensor, eps: torch.Tensor, plus: torch.Tensor,
                     minus: torch.Tensor, best: torch.Tensor) -> torch.Tensor:
    """The candidate of iteration ``it`` (-1: the start) of ``iterations`` for the images
    whose streams are ``bases``; ``plus``/``minus`` are ``linf_vertices`` (unused for L2).
    Shared by ``Square`` and ``dense_square.DenseSquare``."""
    if it < 0:
        return linf_start(bases, plus, minus) if norm == "linf" else l2_start(bases, x0, eps)
    p = p_schedule(p_init, it, iterations)
    if norm == "linf":
        return linf_step(bases, it, p, plus, minus, best)
    return l2_step(bases, it, p, x0, eps, best)
