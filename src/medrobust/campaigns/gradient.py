"""The table release 0.1.0 wrote classifier PGD / IFGSM runs to, kept so its stores still report.

``attack pgd|ifgsm`` on classifiers now runs the task-attack campaign (``campaigns.task_attack``,
rows in ``task_attack_results``); stores written before hold those runs in ``gradient_results``:
each image's label, goal, predictions, correctness and success, and the perturbation's size.
The report reads them here and summarises them with the function that wrote their summaries.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medrobust.campaigns.task_attack import PERTURBATION_COLUMNS, perturbation_means
from medrobust.store import ResultTable

GRADIENT_TABLE = ResultTable(
    "gradient_results",
    {
        "dataset_index": "INTEGER",
        "attack": "TEXT",
        "label": "INTEGER",
        "target": "INTEGER",
        "clean_pred": "INTEGER",
        "adv_pred": "INTEGER",
        "clean_correct": "INTEGER",
        "adv_correct": "INTEGER",
        "success": "INTEGER",
        **PERTURBATION_COLUMNS,
    },
)


def summarise_gradient(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Clean and robust accuracy, success rate among clean-correct images, mean sizes."""
    def mean(key: str, group: list[dict[str, Any]]) -> float | None:
        vals = [r[key] for r in group if r.get(key) is not None]
        return float(np.mean(vals)) if vals else None

    right = [r for r in rows if r["clean_correct"]]
    return {"images": len(rows), "clean_accuracy": mean("clean_correct", rows),
            "robust_accuracy": mean("adv_correct", rows), "attacked": len(right),
            "success_rate": mean("success", right), **perturbation_means(rows)}
