"""The two statistical tests randomized smoothing rests on (Cohen et al. 2019, Section 3.2).

Both come from SciPy's beta and binomial distributions rather than a normal approximation: the
certificate's guarantee is only as good as its bound, and at n = 100 000 samples with counts
near n the approximation is neither conservative nor accurate.
"""

from __future__ import annotations

from scipy.stats import beta, binomtest

from medrobust.utils.validation import check_range


def clopper_pearson_lower(successes: int, n: int, alpha: float) -> float:
    """The one-sided (1 - alpha) Clopper-Pearson lower bound on a binomial proportion: the
    largest p for which seeing ``successes`` or more of ``n`` has probability <= alpha
    (0 when nothing succeeded). Cohen et al.'s LowerConfBound."""
    check_range("n", n, 1)
    check_range("successes", successes, 0, n)
    check_range("alpha", alpha, 0, 1, low_inclusive=False, high_inclusive=False)
    if successes == 0:
        return 0.0
    return float(beta.ppf(alpha, successes, n - successes + 1))


def binomial_p_value(top: int, runner_up: int) -> float:
    """Two-sided p-value that the top class and the runner-up are equally likely under noise
    (Cohen et al.'s PREDICT abstains unless it is <= alpha)."""
    total = int(top) + int(runner_up)
    if total == 0:
        return 1.0
    return float(binomtest(int(top), total, 0.5).pvalue)
