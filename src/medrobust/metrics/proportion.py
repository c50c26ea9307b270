"""A proportion with its 95 % Wilson score interval: every accuracy and success rate a report
states comes with its sample size and uncertainty (32 images give +-17 points, not +-0)."""

from __future__ import annotations

import math
from dataclasses import dataclass

#: two-sided 95 % normal quantile
Z95 = 1.959963984540054


@dataclass(frozen=True)
class Proportion:
    """``k`` of ``n``; ``rate`` and the Wilson interval are None for n = 0."""

    k: int
    n: int

    @property
    def rate(self) -> float | None:
        return self.k / self.n if self.n else None

    @property
    def ci95(self) -> tuple[float, float] | None:
        """Wilson score interval: unlike the normal approximation it stays inside [0, 1] and
        is honest at 0 or n successes, which small medical test sets hit often."""
        if not self.n:
            return None
        p, n, z2 = self.k / self.n, self.n, Z95 * Z95
        centre = (p + z2 / (2 * n)) / (1 + z2 / n)
        half = Z95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
        # exact at the ends (the formula leaves rounding dust there)
        lo = 0.0 if self.k == 0 else max(0.0, centre - half)
        hi = 1.0 if self.k == self.n else min(1.0, centre + half)
        return (lo, hi)


def proportion(k: int, n: int) -> Proportion:
    """A validated ``Proportion`` (0 <= k <= n)."""
    k, n = int(k), int(n)
    if n < 0 or not 0 <= k <= n:
        raise ValueError(f"a proportion needs 0 <= k <= n, got k={k}, n={n}")
    return Proportion(k, n)
