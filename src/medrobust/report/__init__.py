"""The HTML report: one self-contained page summarising a run store.

``build_report(store, out_dir)`` writes ``report.html``. To add a section, write a function
``fn(ctx: ReportContext) -> Section | None`` using the blocks in ``report.blocks`` and the helpers
in ``report.plots``, and pass it in (or append it to ``SECTION_BUILDERS``).
"""

from medrobust.report.blocks import (
    Card,
    Definitions,
    Figure,
    FigureRow,
    Gallery,
    Note,
    Paragraphs,
    Section,
    Table,
)
from medrobust.report.builder import SECTION_BUILDERS, build_report, render_html
from medrobust.report.context import ReportContext

__all__ = [
    "SECTION_BUILDERS",
    "Card",
    "Definitions",
    "Figure",
    "FigureRow",
    "Gallery",
    "Note",
    "Paragraphs",
    "ReportContext",
    "Section",
    "Table",
    "build_report",
    "render_html",
]
