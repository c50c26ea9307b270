"""Periodicity of attack locations (Alatalo et al. 2022, section 3.2): are even pixels special?

The paper found 5,334 of 5,343 mitosis-to-normal attacks on pixels whose X and Y are both even,
where chance predicts 25 %. METHODS.md traces this to a stride-2 first convolution with Keras
"same" padding: an even coordinate feeds two first-layer outputs per axis, an odd one only one.
This module counts the parities of attack locations, tests the even/even share against chance
with an exact binomial test, and measures the same effect on any 2-D score map (a confidence map
of per-pixel scores reuses ``map_parity``).

Test: ``scipy.stats.binomtest`` against the chance share, TWO-SIDED by default (an excess and a
deficit of even/even attacks are both signs of a periodic model); pass ``alternative`` to change.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import binomtest

#: Share of pixels with both coordinates even in an even-sized image.
CHANCE_EVEN_EVEN = 0.25
PARITY_LABELS = ("even", "odd")
ALTERNATIVE = "two-sided"


def chance_even_even(height: int | None = None, width: int | None = None) -> float:
    """Share of an image's pixels with X and Y both even: 1/4 for even sizes, a bit more if odd."""
    if height is None or width is None:
        return CHANCE_EVEN_EVEN
    return (-(-int(width) // 2) / int(width)) * (-(-int(height) // 2) / int(height))


def parity_table(x: Sequence[int] | np.ndarray, y: Sequence[int] | np.ndarray) -> np.ndarray:
    """int64 2x2 counts: rows X even/odd, columns Y even/odd (so [0, 0] is even/even)."""
    xs = np.asarray(x, dtype=np.int64).reshape(-1)
    ys = np.asarray(y, dtype=np.int64).reshape(-1)
    if xs.shape != ys.shape:
        raise ValueError(f"x and y differ in length ({xs.size} vs {ys.size})")
    table = np.zeros((2, 2), dtype=np.int64)
    np.add.at(table, (xs % 2, ys % 2), 1)
    return table


def periodicity(x: Sequence[int] | np.ndarray, y: Sequence[int] | np.ndarray,
                expected: float = CHANCE_EVEN_EVEN, alternative: str = ALTERNATIVE
                ) -> dict[str, Any]:
    """Even/even count and share of attack locations, with an exact binomial test.

    Returns n, even_even, share (None if n = 0), expected, p_value (None if n = 0),
    ci_low/ci_high (exact Clopper-Pearson 95 % interval of the share), alternative, and the
    2x2 parity table both as ``table`` [[x even & y even, x even & y odd], [x odd & y even,
    x odd & y odd]] and as named counts.
    """
    table = parity_table(x, y)
    n = int(table.sum())
    k = int(table[0, 0])
    out: dict[str, Any] = {
        "n": n, "even_even": k, "share": k / n if n else None, "expected": float(expected),
        "p_value": None, "ci_low": None, "ci_high": None, "alternative": alternative,
        "test": "exact binomial (scipy.stats.binomtest)",
        "table": table.tolist(),
        "x_even_y_even": k, "x_even_y_odd": int(table[0, 1]),
        "x_odd_y_even": int(table[1, 0]), "x_odd_y_odd": int(table[1, 1]),
    }
    if n:
        result = binomtest(k, n, p=expected, alternative=alternative)
        ci = result.proportion_ci(confidence_level=0.95, method="exact")
        out.update(p_value=float(result.pvalue), ci_low=float(ci.low), ci_high=float(ci.high))
    return out


def map_parity(score_map: np.ndarray, extreme: str = "low", k: int | None = None
               ) -> dict[str, Any]:
    """Parity statistics of a 2-D (H, W) per-pixel map, indexed [y, x] like an image.

    Means: the map's mean at even/even pixels versus all others, and the 2x2 ``cell_means``
    (rows X even/odd, columns Y even/odd, as ``parity_table``). Ranks: the parity table of the
    ``k`` most extreme pixels (``extreme="low"``: lowest values, the most harmful pixels of a
    min map; ``"high"`` for a max map), ``k`` = 1/64 of the pixels (at least 16) by default,
    with the exact binomial test of their even/even count against chance. Ranks survive the
    saturation of confident models, whose maps may all lie within 1e-4 of 1. NaN cells are
    ignored.
    """
    if extreme not in ("low", "high"):
        raise ValueError(f"extreme must be 'low' or 'high', got {extreme!r}")
    m = np.asarray(score_map, dtype=np.float64)
    if m.ndim != 2:
        raise ValueError(f"a score map must be 2-D (H, W), got shape {m.shape}")
    ys, xs = np.indices(m.shape)
    even_even = (xs % 2 == 0) & (ys % 2 == 0)
    finite = np.isfinite(m)

    def mean(mask: np.ndarray) -> float | None:
        values = m[mask & finite]
        return float(values.mean()) if values.size else None

    cells = [[mean((xs % 2 == px) & (ys % 2 == py)) for py in (0, 1)] for px in (0, 1)]
    ee, other = mean(even_even), mean(~even_even)
    n_finite = int(finite.sum())
    top_k = min(n_finite, k if k is not None else max(16, m.size // 64))
    values = np.where(finite, m, np.inf if extreme == "low" else -np.inf).ravel()
    order = np.argsort(values if extreme == "low" else -values, kind="stable")[:top_k]
    top = periodicity(xs.ravel()[order], ys.ravel()[order],
                      chance_even_even(*m.shape))
    return {
        "even_even_mean": ee, "other_mean": other,
        "difference": None if ee is None or other is None else ee - other,
        "n_even_even": int((even_even & finite).sum()), "n_other": int((~even_even & finite).sum()),
        "cell_means": cells,
        "extreme": extreme, "top_k": top_k, "top_table": top["table"],
        "top_even_even": top["even_even"], "top_p_value": top["p_value"],
    }


def plot_parity(results: dict[str, dict[str, Any]], path: str | Path,
                title: str | None = None) -> Path:
    """Bar chart: share of attacks in each X/Y parity cell per direction, chance level dashed."""
    from matplotlib.figure import Figure

    cells = [("x_even_y_even", "X even, Y even"), ("x_even_y_odd", "X even, Y odd"),
             ("x_odd_y_even", "X odd, Y even"), ("x_odd_y_odd", "X odd, Y odd")]
    # Okabe-Ito colours (told apart under the common colour-vision deficiencies), even/even
    # the strong vermillion; hatches keep the cells apart in greyscale print too
    colours = ["#D55E00", "#0072B2", "#009E73", "#E69F00"]
    hatches = ["", "//", "..", "xx"]
    names = list(results)
    fig = Figure(figsize=(max(5.0, 2.2 * len(names) + 1.5), 4.0), layout="constrained")
    ax = fig.subplots()
    width = 0.2
    centres = np.arange(len(names))
    for j, ((key, label), colour, hatch) in enumerate(zip(cells, colours, hatches,
                                                          strict=True)):
        shares = [results[d][key] / results[d]["n"] if results[d]["n"] else 0.0 for d in names]
        ax.bar(centres + (j - 1.5) * width, shares, width, label=label, color=colour,
               hatch=hatch, edgecolor="white", linewidth=0.5)
    chance = {results[d]["expected"] for d in names} or {CHANCE_EVEN_EVEN}
    for level in sorted(chance):
        ax.axhline(level, color="black", linestyle="--", linewidth=1,
                   label=f"chance for even/even ({level:.0%})")
    labels = []
    for d in names:
        r = results[d]
        p = "p = -" if r["p_value"] is None else f"p = {r['p_value']:.2g}"
        labels.append(f"{d}\nn = {r['n']}, {p}")
    ax.set_xticks(centres, labels, fontsize=9)
    ax.set_ylim(0, 1.3)
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_ylabel("share of attacks")
    ax.legend(fontsize=8, loc="upper center", ncols=3, frameon=False)
    if title:
        ax.set_title(title, fontsize=11)
    out = Path(path)
    fig.savefig(out, dpi=110)
    return out
