"""A classifier's certificates as store rows and summaries (randomized smoothing, Cohen et al.).

One row per image: the smoothed prediction (or abstain), its certified L2 radius, the bound
``pA`` and the counts behind it. Certified accuracy at a radius is the share of images correct
and certified at least that far, with its Wilson interval; the radii only summarise the rows.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from medrobust.certify.settings import CertifySettings
from medrobust.certify.smoothing import SmoothedClassifier
from medrobust.metrics.proportion import proportion
from medrobust.store import ResultTable

TABLE = ResultTable(
    "certify_results",
    {
        "dataset_index": "INTEGER",
        "label": "INTEGER",
        "prediction": "INTEGER",
        "correct": "INTEGER",
        "radius": "REAL",
        "p_lower": "REAL",
        "top_count": "INTEGER",
        "n": "INTEGER",
        "counts": "JSON",
        "selection_counts": "JSON",
        "seconds": "REAL",
    },
)


def smoothed(model: Any, s: CertifySettings) -> SmoothedClassifier:
    return SmoothedClassifier(model, s.sigma, max(2, int(model.num_classes)),
                              batch_size=s.batch_size, seed=s.seed)


def certifier(model: Any, s: CertifySettings) -> Callable[[Any, int], dict[str, Any]]:
    """(dataset, index) -> the image's row: CERTIFY on its own keyed noise streams."""
    smooth = smoothed(model, s)

    def certify_one(dataset: Any, i: int) -> dict[str, Any]:
        x = model.to_tensor(dataset.images[i:i + 1])[0]
        cert = smooth.certify(x, s.n0, s.n, s.alpha, key=int(i))
        label = int(dataset.labels[i])
        return {"label": label, "prediction": cert.prediction,
                "correct": int(cert.prediction == label), "radius": cert.radius,
                "p_lower": cert.p_lower, "top_count": int(cert.counts[cert.top]), "n": s.n,
                "counts": cert.counts.tolist(),
                "selection_counts": cert.selection_counts.tolist()}

    return certify_one


def certified_accuracy(rows: list[dict[str, Any]], radius: float) -> dict[str, Any]:
    """Share of images correct and certified at ``radius`` or more (abstentions count as
    wrong), with its 95 % Wilson interval."""
    p = proportion(sum(r["correct"] and r["radius"] >= radius for r in rows), len(rows))
    return {"radius": radius, "certified": p.k, "images": p.n, "accuracy": p.rate,
            "ci95": p.ci95}


def summarise(rows: list[dict[str, Any]], settings: CertifySettings) -> dict[str, Any]:
    abstained = proportion(sum(r["prediction"] < 0 for r in rows), len(rows))
    correct = [r["radius"] for r in rows if r["correct"]]
    cells = [certified_accuracy(rows, r) for r in settings.radii]
    return {"images": len(rows), "sigma": settings.sigma, "n": settings.n,
            "alpha": settings.alpha, "metric": "accuracy", "certified_accuracy": cells,
            # every task's summary: per radius the certified headline and its interval
            "certified": [{"radius": c["radius"], "value": c["accuracy"], "ci95": c["ci95"]}
                          for c in cells],
            "abstain_rate": abstained.rate, "abstain_ci95": abstained.ci95,
            "mean_radius_correct": float(np.mean(correct)) if correct else None,
            "median_radius_correct": float(np.median(correct)) if correct else None}


def describe(s: dict[str, Any]) -> list[str]:
    """One line per radius for the command's output."""
    out = []
    for c in s.get("certified_accuracy") or []:
        lo, hi = c["ci95"] or (None, None)
        out.append(f"certified accuracy at L2 {c['radius']:g}: {_pct(c['accuracy'])} "
                   f"({c['certified']}/{c['images']}, 95 % CI {_pct(lo)}-{_pct(hi)})")
    return out


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f} %"
