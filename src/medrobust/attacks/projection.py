"""Step, projection and random-start maths shared by every attack (PGD, IFGSM, ASMA, APGD,
Square).

Kept in one place so every attack enforces budgets the same way: per-sample radii, the pixel box
[0,1], and ``enforce_budget``, which makes the Linf / L2 of ``adv - x`` hold after float32
rounding (a projection followed by clipping can overshoot by one ulp otherwise) whether it is
measured in float32 or in float64, as ``AttackResult`` and the ensemble's judge measure it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from medrobust.errors import ConfigError
from medrobust.utils.seeding import numpy_rng

NORMS = ("linf", "l2")

#: a radius or step: one number, or one value per image
Budget = float | Sequence[float] | np.ndarray | torch.Tensor


def plain_budget(value: Budget | None) -> Any:
    """A budget as JSON (for ``params()`` and stores): None, a float, or per-image floats."""
    if value is None or isinstance(value, float):
        return value
    return np.asarray(value.detach().cpu() if isinstance(value, torch.Tensor) else value,
                      dtype=float).tolist()


def per_sample(value: float | Sequence[float] | np.ndarray | torch.Tensor, n: int,
               device: torch.device, name: str = "eps") -> torch.Tensor:
    """A (N,) float32 tensor from a scalar or a per-sample sequence; negative values refused."""
    t = torch.as_tensor(np.asarray(value, dtype=np.float64) if not isinstance(value, torch.Tensor)
                        else value.detach().double().cpu())
    if t.ndim == 0:
        t = t.expand(n)
    if t.ndim != 1 or t.shape[0] != n:
        raise ConfigError(f"{name} must be a number or one value per image ({n}), "
                          f"got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all() or (t < 0).any():
        raise ConfigError(f"{name} must be finite and non-negative")
    return t.to(device=device, dtype=torch.float32).clone()


def check_budget(name: str, value: float | Sequence[float] | np.ndarray | torch.Tensor,
                 norm: str | None = None, *, positive: bool = False,
                 shape: Sequence[int] | None = None) -> None:
    """Refuse budgets no image can have: negative (or zero when ``positive``), not finite, or
    beyond the image range. On the [0,1] pixel scale no Linf change exceeds 1, and no L2 change
    exceeds sqrt(C*H*W) (checked when an image ``shape`` is known), so a larger budget is a unit
    mistake (``--eps 8`` for 8/255), not a stronger attack."""
    values = np.asarray(value.detach().cpu() if isinstance(value, torch.Tensor) else value,
                        dtype=np.float64).reshape(-1)
    if not np.isfinite(values).all():
        raise ConfigError(f"{name} must be finite")
    worst = float(values.max()) if values.size else 0.0
    lowest = float(values.min()) if values.size else 1.0
    if lowest < 0 or (positive and lowest <= 0):
        raise ConfigError(f"{name} must be {'positive' if positive else 'non-negative'}, "
                          f"got {lowest:g}")
    limit = None
    if norm == "linf":
        limit, where = 1.0, "Linf budgets are on the [0,1] pixel scale: write 8/255 for 8 levels"
    elif norm == "l2" and shape is not None:
        limit = float(np.sqrt(np.prod([int(d) for d in shape])))
        where = f"no L2 change of a {'x'.join(map(str, shape))} image exceeds {limit:.4g}"
    if limit is not None and worst > limit + 1e-9:
        raise ConfigError(f"{name} {worst:g} exceeds the image range ({where})")


def budget_param(name: str, value: Any, norm: str | None = None, positive: bool = False) -> Any:
    """A validated budget parameter (``check_budget``): None, a float, or the per-image values
    as given."""
    if value is None:
        return None
    check_budget(name, value, norm, positive=positive)
    if isinstance(value, (torch.Tensor, np.ndarray, list, tuple)):
        return value
    return float(value)


def _view(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * (like.ndim - 1)))


def flat_norm(t: torch.Tensor, norm: str) -> torch.Tensor:
    """(N,) per-sample Linf or L2 norm."""
    flat = t.reshape(t.shape[0], -1)
    if norm == "linf":
        return flat.abs().amax(dim=1) if flat.shape[1] else flat.new_zeros(flat.shape[0])
    return flat.norm(p=2, dim=1)


def ascent_direction(grad: torch.Tensor, norm: str) -> torch.Tensor:
    """The steepest-ascent unit step: sign(grad) for Linf, grad / ||grad||_2 for L2."""
    if norm == "linf":
        return grad.sign()
    g = flat_norm(grad, "l2")
    return grad / _view(g.clamp_min(1e-12), grad)


def project(delta: torch.Tensor, eps: torch.Tensor, norm: str) -> torch.Tensor:
    """``delta`` moved into the per-sample ball of radius ``eps`` (a new tensor)."""
    if norm == "linf":
        e = _view(eps, delta)
        return torch.maximum(torch.minimum(delta, e), -e)
    n = flat_norm(delta, "l2")
    scale = torch.where(n > eps, eps / n.clamp_min(1e-12), torch.ones_like(n))
    return delta * _view(scale, delta)


def clip_box(x0: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """The perturbation that keeps ``x0 + delta`` inside [0,1] (never larger than ``delta``)."""
    return (x0 + delta).clamp(0.0, 1.0) - x0


def random_start(x0: torch.Tensor, eps: torch.Tensor, norm: str, seed: int,
                 keys: Sequence[int]) -> torch.Tensor:
    """A uniform random point of each image's ball, one seeded stream per key.

    Linf: uniform in [-eps, eps] per pixel. L2: uniform in the ball (Gaussian direction, radius
    eps * u^(1/d)). Keyed streams give an image the same start alone or inside any batch.
    """
    out = torch.empty_like(x0)
    d = x0[0].numel()
    for i, key in enumerate(keys):
        g = torch.Generator().manual_seed(int(numpy_rng(seed, int(key)).integers(2**62)))
        if norm == "linf":
            r = torch.rand(x0[i].shape, generator=g, dtype=torch.float32) * 2 - 1
            out[i] = (r * float(eps[i])).to(out.device)
        else:
            z = torch.randn(x0[i].shape, generator=g, dtype=torch.float32)
            u = torch.rand((), generator=g, dtype=torch.float32)
            radius = float(eps[i]) * float(u) ** (1.0 / d)
            out[i] = (z / z.norm().clamp_min(1e-12) * radius).to(out.device)
    return out


def _linf_over(x0: torch.Tensor, out: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """Pixels whose change exceeds ``e`` in float32 or in float64: a float32 difference that
    rounds down to eps can hide an exact one just above it."""
    return ((out - x0).abs() > e) | ((out.double() - x0.double()).abs() > e.double())


def enforce_budget(x0: torch.Tensor, adv: torch.Tensor, eps: torch.Tensor, norm: str
                   ) -> torch.Tensor:
    """``adv`` with ``adv - x0`` inside the ball and [0,1], measured in float32 and in float64.

    Why both: attacks test their points in float32, while ``AttackResult.perturbation_norms``
    and the ensemble's judge measure the same float32 images in float64. Either can read a few
    ulps over where the other fits (a float32 difference rounds down to eps, a float32 L2 sum
    rounds low), and a point over in either would be a success the judge throws away. Images
    that already fit are left untouched, so an image's result never depends on its batch.
    Samples with eps = 0, and those no float32 image fits (absurdly small eps), come back
    bit-identical to ``x0``.
    """
    n = x0.shape[0]
    if norm == "linf":
        e = _view(eps, x0)
        out = torch.maximum(torch.minimum(adv, (x0 + e).clamp(max=1.0)), (x0 - e).clamp(min=0.0))
        # x0 +- e is rounded: step any pixel whose difference exceeds eps one ulp back.
        for _ in range(8):
            over = _linf_over(x0, out, e)
            if not bool(over.any()):
                break
            out = torch.where(over, torch.nextafter(out, x0), out)
        bad = _linf_over(x0, out, e).reshape(n, -1).any(dim=1)
    else:
        # Each check below is made only where the point may have changed since the last one:
        # APGD calls this twice per step, and on 320x320 images the repeated float64 copies
        # and norms were 40 % of its time. The points returned are the same as checking all.
        out = x0 + clip_box(x0, project(adv - x0, eps, "l2"))
        fits = False
        for k in range(12):
            size = flat_norm(out - x0, "l2")
            over = size > eps
            if not bool(over.any()):
                fits = True
                break
            # Rounding of x0 + d adds up to half an ulp per pixel; shrink with a growing margin.
            shrink = torch.where(over, eps / size.clamp_min(1e-12) * (1 - 1e-6 * 4**k),
                                 torch.ones_like(size))
            out = (x0 + (out - x0) * _view(shrink, x0)).clamp(0.0, 1.0)
        if not fits:  # the last shrink was not measured: give up on what still does not fit
            out = torch.where(_view(flat_norm(out - x0, "l2") > eps, x0), x0, out)
        # A point on the sphere can still measure a few 1e-9 over in float64: pull those in.
        # Here every point fits in float32 (it did above, or it is x0), so the first pass
        # measures float64 only.
        radius, x0d = eps.double(), x0.double()
        fits = False
        for k in range(8):
            size = flat_norm(out.double() - x0d, "l2")
            over = size > radius
            if k:
                over |= flat_norm(out - x0, "l2") > eps
            if not bool(over.any()):
                fits = True
                break
            shrink = (radius / size.clamp_min(1e-300) * (1 - 1e-7 * 4**k)).float()
            smaller = (x0 + (out - x0) * _view(shrink, x0)).clamp(0.0, 1.0)
            out = torch.where(_view(over, x0), smaller, out)
        bad = torch.zeros_like(over) if fits else \
            (flat_norm(out.double() - x0d, "l2") > radius) | (flat_norm(out - x0, "l2") > eps)
    zero = (eps == 0) | bad
    if bool(zero.any()):
        out = torch.where(_view(zero, x0), x0, out)
    return out
