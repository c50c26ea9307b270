"""The report's document model: sections made of simple blocks that one template renders.

Section builders return these plain objects instead of HTML, so a new feature (denoising
defences, confidence maps, segmentation) adds a section by writing one function that returns a
``Section``; the template, styling and embedding stay in one place. All text is escaped by the
template; images are data URIs, so the page needs no other file.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Paragraphs:
    """Plain explanatory text, one string per paragraph."""

    texts: list[str]
    kind: str = "paragraphs"


@dataclass
class Definitions:
    """Term -> plain-language meaning, e.g. what a number in a table measures."""

    items: list[tuple[str, str]]
    kind: str = "definitions"


@dataclass
class Note:
    """A highlighted remark; ``level`` is info or warning (something is missing or odd)."""

    text: str
    level: str = "info"
    kind: str = "note"


@dataclass
class Table:
    """A table of already formatted cells; numeric-looking cells are right-aligned."""

    columns: list[str]
    rows: list[list[str]]
    caption: str | None = None
    kind: str = "table"


@dataclass
class Figure:
    """One embedded image (``src`` is a data URI) with a caption."""

    src: str
    caption: str = ""
    alt: str = ""
    max_width: str | None = None
    kind: str = "figure"


@dataclass
class FigureRow:
    """Several figures side by side (wrapping on narrow screens)."""

    figures: list[Figure]
    kind: str = "figure_row"


@dataclass
class Card:
    """A gallery card: a row of small labelled images and caption lines under them."""

    title: str
    images: list[tuple[str, str]]  # (label, data URI)
    lines: list[str] = field(default_factory=list)
    warning: str | None = None


@dataclass
class Gallery:
    """A grid of cards."""

    cards: list[Card]
    kind: str = "gallery"


Block = Paragraphs | Definitions | Note | Table | Figure | FigureRow | Gallery


@dataclass
class Section:
    """A titled part of the report; ``anchor`` is its id for the table of contents."""

    anchor: str
    title: str
    blocks: list[Any] = field(default_factory=list)
    subsections: list[Section] = field(default_factory=list)

    def add(self, *blocks: Any) -> Section:
        self.blocks.extend(blocks)
        return self


# -- cell formatting ------------------------------------------------------------------------------

def num(value: Any, digits: int = 3) -> str:
    """A number for a table cell: fixed decimals, '-' for missing or not a number."""
    if value is None or isinstance(value, bool):
        return "-" if value is None else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    try:
        v = float(value)
    except (TypeError, ValueError):
        return str(value)
    if not math.isfinite(v):
        return "-"
    if v != 0 and abs(v) < 10 ** (-digits):
        return f"{v:.1e}"
    return f"{v:,.{digits}f}"


def pct(value: Any, digits: int = 1) -> str:
    """A share as a percentage ('-' if missing)."""
    if value is None:
        return "-"
    try:
        v = float(value)
    except (TypeError, ValueError):
        return str(value)
    return "-" if not math.isfinite(v) else f"{100 * v:.{digits}f} %"


def pvalue(value: Any) -> str:
    """A p-value the way papers print it: '< 0.001' below 0.001, else three decimals."""
    if value is None:
        return "-"
    v = float(value)
    if not math.isfinite(v):
        return "-"
    return "< 0.001" if v < 0.001 else f"{v:.3f}"


def summarise_value(value: Any, max_items: int = 6) -> str:
    """A short one-line form of a parameter value (long lists are abbreviated)."""
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {summarise_value(v, max_items)}"
                               for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        if len(value) > max_items:
            head = ", ".join(summarise_value(v, max_items) for v in value[:3])
            return f"[{len(value)} items: {head}, ...]"
        return "[" + ", ".join(summarise_value(v, max_items) for v in value) + "]"
    if isinstance(value, float):
        return f"{value:g}"
    return "none" if value is None else str(value)


def flatten_params(params: Mapping[str, Any] | None, prefix: str = "") -> list[tuple[str, str]]:
    """Nested parameters as (dotted.name, short value) pairs, for provenance tables."""
    out: list[tuple[str, str]] = []
    for key, value in (params or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.extend(flatten_params(value, name + "."))
        else:
            out.append((name, summarise_value(value)))
    return out


def spec_text(spec: Mapping[str, Any] | None) -> str:
    """A dataset spec as 'name (k=v, ...)'."""
    if not spec:
        return "-"
    rest = ", ".join(f"{k}={summarise_value(v)}" for k, v in spec.items() if k != "dataset")
    name = str(spec.get("dataset", "?"))
    return f"{name} ({rest})" if rest else name


def table_from_records(records: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str]],
                       caption: str | None = None) -> Table:
    """A Table from dicts: ``columns`` are (header, key) pairs, values formatted by ``num``."""
    rows = [[v if isinstance(v := r.get(key), str) else num(v) for _, key in columns]
            for r in records]
    return Table([h for h, _ in columns], rows, caption)
