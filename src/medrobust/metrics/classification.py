"""Classification metrics from scores: accuracy, AUC, per-class recall, confusion matrix."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import confusion_matrix, roc_auc_score


def classification_metrics(probabilities: np.ndarray, labels: np.ndarray,
                           class_names: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """Metrics from (N,K) probabilities; AUC is binary, or macro one-vs-rest for K > 2."""
    k = len(class_names)
    pred = probabilities.argmax(axis=1)
    cm = confusion_matrix(labels, pred, labels=list(range(k)))
    support = cm.sum(axis=1)
    recall = np.divide(np.diag(cm), support, out=np.full(k, np.nan), where=support > 0)
    present = np.unique(labels)
    auc: float | None
    if len(present) < 2:
        auc = None  # undefined with one class present
    elif k == 2:
        auc = float(roc_auc_score(labels, probabilities[:, 1]))
    else:
        probs = probabilities[:, present] / probabilities[:, present].sum(axis=1, keepdims=True)
        auc = float(roc_auc_score(labels, probs, multi_class="ovr", average="macro",
                                  labels=present))
    return {
        "n": len(labels),
        "accuracy": float((pred == labels).mean()) if len(labels) else float("nan"),
        "auc": auc,
        "balanced_accuracy": float(np.nanmean(recall)),
        "recall": {n: (None if np.isnan(r) else float(r)) for n, r in zip(class_names, recall, strict=True)},
        "confusion_matrix": cm.tolist(),
    }
