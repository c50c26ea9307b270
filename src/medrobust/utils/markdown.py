"""Markdown tables, the one writer every table file and console table uses.

Markdown renderers pass raw HTML through, and class names, filter names and folder names come
from users, so every cell is escaped here rather than by each caller.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np


def md_text(value: Any) -> str:
    """Text safe in Markdown: ``&`` and ``<`` are escaped (no tag or entity can start; ``>``
    alone is inert, so directions stay readable as ``a->b``); ``|`` is escaped so a cell cannot
    split a table row; line breaks are folded."""
    text = str(value).replace("&", "&amp;").replace("<", "&lt;").replace("|", "\\|")
    return " ".join(text.splitlines())


def md_value(value: Any) -> str:
    """A cell's text: None and non-finite numbers as '-', floats to 3 decimals (3 significant
    digits when very small or large), everything else as written."""
    if value is None or (isinstance(value, (float, np.floating)) and not math.isfinite(value)):
        return "-"
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
            return f"{v:.3g}"
        return f"{v:.3f}"
    return str(value)


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[Any]],
                   align: Sequence[str] | None = None) -> str:
    """A GitHub-style table, every cell escaped; ``align`` per column: ``l`` or ``r``."""
    rule = ["---:" if a == "r" else "---" for a in (align or ["l"] * len(columns))]
    lines = ["| " + " | ".join(md_text(c) for c in columns) + " |", "|" + "|".join(rule) + "|"]
    lines += ["| " + " | ".join(md_text(md_value(v)) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
