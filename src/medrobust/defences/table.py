"""The one table across defences and datasets, from the summaries of ``defend`` runs.

CLI output, the HTML report and the benchmark all show the same columns, built here once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from medrobust.utils.markdown import markdown_table

#: the accuracy half and the image-quality half of a defence's row (two tables that fit a
#: page instead of one 17-column table)
ACCURACY_COLUMNS = [
    "Dataset", "Defence", "Fooled", "Recovered", "Recovery rate",
    "Clean acc (no defence)", "Clean acc (defence)", "Clean acc cost (points)",
    "Adv acc (no defence)", "Adv acc (defence)",
]
QUALITY_COLUMNS = [
    "Dataset", "Defence", "PSNR attacked", "PSNR denoised", "SSIM attacked", "SSIM denoised",
    "MSE attacked", "MSE denoised", "PSNR clean->denoised",
]
COLUMNS = ACCURACY_COLUMNS + QUALITY_COLUMNS[2:]
ADAPTIVE_COLUMNS = ["Dataset", "Defence", "Attack", "Budget", "Images", "Robust acc", "95 % CI"]
#: how each adaptive attack is named in tables
ATTACK_LABELS = {"clean": "none (clean)", "onepixel": "one-pixel (adaptive)",
                 "pgd-linf": "PGD-Linf", "pgd-l2": "PGD-L2", "square-linf": "Square-Linf",
                 "square-l2": "Square-L2", "ensemble-linf": "Ensemble-Linf (robust = survives all)",
                 "ensemble-l2": "Ensemble-L2 (robust = survives all)"}


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


def accuracy_rows(summaries: Sequence[dict[str, Any]]) -> list[list[str]]:
    """The ``ACCURACY_COLUMNS`` cells of each defence."""
    return [table_row(s)[:len(ACCURACY_COLUMNS)] for s in summaries]


def quality_rows(summaries: Sequence[dict[str, Any]]) -> list[list[str]]:
    """The ``QUALITY_COLUMNS`` cells of each defence."""
    return [table_row(s)[:2] + table_row(s)[len(ACCURACY_COLUMNS):] for s in summaries]


def budget_label(attack: str, eps: float) -> str:
    """One unit convention: Linf in k/255, L2 on the [0,1] scale."""
    if attack.endswith("-linf"):
        return f"{eps * 255:.3g}/255"
    if attack.endswith("-l2"):
        return f"L2 {eps:g}"
    return "-"


def _ci(value: Any) -> str:
    if not value:
        return "-"
    lo, hi = value
    return f"{100 * lo:.0f}-{100 * hi:.0f} %"


def adaptive_cells(summary: dict[str, Any]) -> list[tuple[str, float, Any, Any, Any]]:
    """(attack, eps, robust accuracy, n, 95 % CI) of every cell of an adaptive run's summary,
    attacks in ``ATTACK_LABELS`` order, budgets increasing."""
    n, ci = summary.get("n") or {}, summary.get("ci95") or {}
    out = []
    for attack in ATTACK_LABELS:
        value = summary.get(attack)
        if value is None:
            continue
        if isinstance(value, dict):
            for eps in sorted(value, key=float):
                out.append((attack, float(eps), value[eps], (n.get(attack) or {}).get(eps),
                            (ci.get(attack) or {}).get(eps)))
        else:
            out.append((attack, 0.0, value, n.get(attack, summary.get(f"{attack}_n")),
                        ci.get(attack)))
    return out


def adaptive_columns(summaries: Sequence[dict[str, Any]]) -> list[str]:
    """Columns of the adaptive table (one row per defence, attack and budget)."""
    return list(ADAPTIVE_COLUMNS)


def adaptive_rows(summaries: Sequence[dict[str, Any]]) -> list[list[str]]:
    """Robust accuracy with its sample size and 95 % interval, one row per defence, dataset,
    attack and budget (a long table fits a page; a wide one grew a column per budget)."""
    rows = []
    for s in summaries:
        for attack, eps, acc, n, ci in adaptive_cells(s):
            rows.append([str(s.get("dataset", "?")), str(s.get("label", "?")),
                         ATTACK_LABELS[attack], budget_label(attack, eps),
                         "-" if n is None else str(n), _pct(acc), _ci(ci)])
    return rows


def masking_warnings(summaries: Sequence[dict[str, Any]]) -> list[str]:
    """One sentence per defence and budget where PGD and Square disagree (gradient masking)."""
    lines = []
    for s in summaries:
        for f in s.get("gradient_masking") or []:
            budget = budget_label(f"x-{f['norm']}", float(f["eps"]))
            lines.append(f"Likely gradient masking: {s.get('label', '?')} on "
                         f"{s.get('dataset', '?')} keeps {_pct(f['pgd'])} under PGD at "
                         f"{budget} but {_pct(f['square'])} under the black-box Square attack "
                         f"({100 * f['gap']:.0f} points lower). Its PGD number flatters it; quote "
                         "the ensemble's.")
    return lines


def markdown(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured markdown table (cells escaped: defence names come from users)."""
    return markdown_table(columns, rows).rstrip("\n")
