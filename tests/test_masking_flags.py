"""Gradient-masking flags and the long adaptive table: what the report warns about."""

from __future__ import annotations

from medrobust.campaigns.adaptive_defence import masking_flags, summarise_adaptive
from medrobust.defences.table import ADAPTIVE_COLUMNS, adaptive_rows, masking_warnings


def _rows(attack: str, eps: float, correct: list[int]) -> list[dict]:
    return [{"dataset_index": i, "attack": attack, "eps": eps, "correct": c}
            for i, c in enumerate(correct)]


def test_pgd_far_above_square_is_flagged_and_close_is_not():
    eps = 8 / 255
    rows = (_rows("clean", 0.0, [1] * 20) + _rows("pgd-linf", eps, [1] * 15 + [0] * 5)
            + _rows("square-linf", eps, [1] * 2 + [0] * 18)
            + _rows("pgd-l2", 0.5, [1] * 10 + [0] * 10)
            + _rows("square-l2", 0.5, [1] * 9 + [0] * 11))
    summary = summarise_adaptive(rows)
    flags = summary["gradient_masking"]
    assert [(f["norm"], round(f["gap"], 2)) for f in flags] == [("linf", 0.65)]
    assert summary["n"]["pgd-linf"][f"{eps:.6g}"] == 20
    lo, hi = summary["ci95"]["square-linf"][f"{eps:.6g}"]
    assert 0.0 < lo < 0.1 < hi < 0.35  # Wilson interval of 2/20
    summary.update(label="median3", dataset="PneumoniaMNIST")
    (warning,) = masking_warnings([summary])
    assert "median3" in warning and "75.0 %" in warning and "10.0 %" in warning
    assert "8/255" in warning
    assert masking_flags(summary, gap=0.7) == []


def test_adaptive_table_has_one_row_per_attack_and_budget():
    rows = (_rows("clean", 0.0, [1, 1, 0]) + _rows("pgd-linf", 2 / 255, [1, 0, 0])
            + _rows("pgd-linf", 8 / 255, [0, 0, 0]))
    summary = {**summarise_adaptive(rows), "label": "none", "dataset": "synthetic"}
    table = adaptive_rows([summary])
    assert [r[2:5] for r in table] == [["none (clean)", "-", "3"], ["PGD-Linf", "2/255", "3"],
                                       ["PGD-Linf", "8/255", "3"]]
    assert all(len(r) == len(ADAPTIVE_COLUMNS) for r in table)
    assert table[1][5] == "33.3 %" and table[2][6].startswith("0-")
