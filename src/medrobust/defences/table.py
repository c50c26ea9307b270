"""The one table across defences and datasets, from the summaries of ``defend`` runs.

CLI output, the HTML report and the benchmark all show the same columns, built here once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from medrobust.utils.markdown import markdown_table

COLUMNS = [
    "Dataset", "Defence", "Fooled", "Recovered", "Recovery rate",
    "Clean acc (no defence)", "Clean acc (defence)", "Clean acc cost (points)",
    "Adv acc (no defence)", "Adv acc (defence)",
    "PSNR attacked", "PSNR denoised", "SSIM attacked", "SSIM denoised",
    "MSE attacked", "MSE denoised", "PSNR clean->denoised",
]


def _f(value: Any, digits: int) -> str:
    if value is None:
        return "-"
    return f"{float(value):.{digits}f}"


def _pct(value: Any) -> str:
    return "-" if value is None else f"{100.0 * float(value):.1f} %"


def table_row(summary: dict[str, Any]) -> list[str]:
    """Formatted cells of one defence on one dataset (a ``defend`` run's summary)."""
    qa = summary.get("quality_attacked") or {}
    qd = summary.get("quality_denoised") or {}
    qc = summary.get("quality_clean_denoised") or {}
    cost = summary.get("clean_accuracy_cost")
    return [
        str(summary.get("dataset", "?")), str(summary.get("label", "?")),
        str(summary.get("fooled", "-")), str(summary.get("recovered", "-")),
        _pct(summary.get("recovery_rate")),
        _pct(summary.get("clean_accuracy_plain")), _pct(summary.get("clean_accuracy_defended")),
        "-" if cost is None else f"{100.0 * float(cost):.1f}",
        _pct(summary.get("adversarial_accuracy_plain")),
        _pct(summary.get("adversarial_accuracy_defended")),
        _f(qa.get("psnr"), 2), _f(qd.get("psnr"), 2), _f(qa.get("ssim"), 4), _f(qd.get("ssim"), 4),
        _f(qa.get("mse"), 6), _f(qd.get("mse"), 6), _f(qc.get("psnr"), 2),
    ]


def table_rows(summaries: Sequence[dict[str, Any]]) -> list[list[str]]:
    return [table_row(s) for s in summaries]


def adaptive_columns(summaries: Sequence[dict[str, Any]]) -> list[str]:
    """Columns of the adaptive table: every budget that occurs, in order."""
    linf = sorted({float(e) for s in summaries for e in (s.get("pgd-linf") or {})})
    l2 = sorted({float(e) for s in summaries for e in (s.get("pgd-l2") or {})})
    return (["Dataset", "Defence", "Images", "Clean acc", "One-pixel (adaptive)"]
            + [f"PGD-Linf {e * 255:.3g}/255" for e in linf] + [f"PGD-L2 {e:g}" for e in l2])


def adaptive_rows(summaries: Sequence[dict[str, Any]]) -> list[list[str]]:
    """Robust accuracy per budget, one row per defence and dataset."""
    linf = sorted({float(e) for s in summaries for e in (s.get("pgd-linf") or {})})
    l2 = sorted({float(e) for s in summaries for e in (s.get("pgd-l2") or {})})
    rows = []
    for s in summaries:
        li = {float(k): v for k, v in (s.get("pgd-linf") or {}).items()}
        l2d = {float(k): v for k, v in (s.get("pgd-l2") or {}).items()}
        rows.append([str(s.get("dataset", "?")), str(s.get("label", "?")), str(s.get("images", "-")),
                     _pct(s.get("clean")), _pct(s.get("onepixel"))]
                    + [_pct(li.get(e)) for e in linf] + [_pct(l2d.get(e)) for e in l2])
    return rows


def markdown(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured markdown table (cells escaped: defence names come from users)."""
    return markdown_table(columns, rows).rstrip("\n")
