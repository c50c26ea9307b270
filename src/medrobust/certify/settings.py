"""``CertifySettings``: the knobs of every certificate, validated in one place.

The same settings serve every task: ``sigma`` is the Gaussian noise on the [0,1] pixel scale (so
a radius means the same L2 perturbation as an attack's budget), ``n0`` the samples that choose
(class, per-pixel classes) where a method chooses, ``n`` those that bound, ``alpha`` the
probability that an image's certificate is wrong, and ``radii`` the L2 radii summaries (and,
for segmentation and the median-smoothed tasks, the certificates themselves) are given at.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from medrobust.utils.validation import check_range


@dataclass(frozen=True)
class CertifySettings:
    """Cohen et al.'s defaults are n0 = 100, n = 100 000, alpha = 0.001; n = 10 000 here, which
    caps the certifiable radius at sigma * Phi^-1(alpha^(1/n)), about 3.2 sigma at alpha =
    0.001 (dense outputs, whose bounds hold jointly over pixels or coordinates, reach less)."""

    sigma: float = 0.25
    n0: int = 100
    n: int = 10_000
    alpha: float = 0.001
    radii: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0)
    batch_size: int = 200
    seed: int = 0

    def validate(self) -> CertifySettings:
        check_range("sigma", self.sigma, 0, low_inclusive=False)
        check_range("n0", self.n0, 1)
        check_range("n", self.n, 1)
        check_range("alpha", self.alpha, 0, 1, low_inclusive=False, high_inclusive=False)
        check_range("batch_size", self.batch_size, 1)
        for r in self.radii:
            check_range("radius", r, 0)
        return self

    def params(self) -> dict[str, Any]:
        return {**asdict(self), "radii": list(self.radii)}

    def certify_params(self, radii_free: bool = True) -> dict[str, Any]:
        """What decides the certificates (a run's fingerprint). ``radii_free``: the radii only
        summarise them (a classifier's certified radius is one number per image), so asking
        for other radii reuses the certificates already computed; where each radius is a
        certificate of its own (per-pixel tests, percentile bounds) they are part of it."""
        return {k: v for k, v in self.params().items() if k != "radii" or not radii_free}

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> CertifySettings:
        """The settings ``params()`` wrote (a Ray worker rebuilds them)."""
        return cls(**{**params, "radii": tuple(params["radii"])})
