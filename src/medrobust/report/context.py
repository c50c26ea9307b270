"""What every report section may look at: the store, its runs, and cached reloads.

Sections share one ``ReportContext`` so the expensive things (reloading a dataset split,
reading result rows, running the one-pixel study) happen once per report, whichever sections
need them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medrobust.analysis.study import (
    ONEPIXEL_COMMAND,
    ONEPIXEL_TABLE_NAME,
    run_study,
    try_load_run_dataset,
)
from medrobust.errors import MedrobustError

if TYPE_CHECKING:
    from medrobust.data.base import ImageDataset
    from medrobust.store import Store


@dataclass
class ReportContext:
    """The store being reported on, the output folder, and per-report caches."""

    store: Store
    out_dir: Path
    runs: list[dict[str, Any]]
    _rows: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    _studies: dict[int, dict[str, Any] | str] = field(default_factory=dict)
    #: run id -> anchors of the sections that show it (filled as sections are built, read by
    #: the provenance appendix, which is built last: a run no section shows is said so there)
    shown: dict[int, list[str]] = field(default_factory=dict)
    _titles: dict[str, str] = field(default_factory=dict)
    _table_rows: dict[tuple[str, int], list[dict[str, Any]]] = field(default_factory=dict)
    _tables: set[str] | None = None

    def cite(self, run_id: Any, anchor: str, title: str | None = None) -> None:
        """Record that the section ``anchor`` shows run ``run_id``."""
        try:
            rid = int(run_id)
        except (TypeError, ValueError):
            return
        anchors = self.shown.setdefault(rid, [])
        if anchor not in anchors:
            anchors.append(anchor)
        if title:
            self._titles.setdefault(anchor, title)

    def anchor_title(self, anchor: str) -> str:
        return self._titles.get(anchor, anchor)

    def runs_of(self, *commands: str) -> list[dict[str, Any]]:
        """Runs whose command is one of ``commands``, oldest first."""
        return [r for r in self.runs if r["command"] in commands]

    @property
    def onepixel_runs(self) -> list[dict[str, Any]]:
        return self.runs_of(ONEPIXEL_COMMAND)

    def onepixel_rows(self, run_id: int) -> list[dict[str, Any]]:
        """Result rows of a one-pixel run (empty if none were recorded)."""
        if run_id not in self._rows:
            if ONEPIXEL_TABLE_NAME in self.store.tables():
                self._rows[run_id] = self.store.rows(ONEPIXEL_TABLE_NAME, run_id=run_id)
            else:
                self._rows[run_id] = []
        return self._rows[run_id]

    def rows(self, table: str, run_id: int) -> list[dict[str, Any]]:
        """Rows of ``table`` for one run, read once per report (empty if the table is absent)."""
        key = (table, int(run_id))
        if key not in self._table_rows:
            self._table_rows[key] = (self.store.rows(table, run_id=int(run_id))
                                     if table in self.tables else [])
        return self._table_rows[key]

    @property
    def tables(self) -> set[str]:
        if self._tables is None:
            self._tables = set(self.store.tables())
        return self._tables

    def dataset(self, run: dict[str, Any]) -> tuple[ImageDataset | None, str | None]:
        """The run's dataset split reloaded from its spec, or (None, why it could not be)."""
        return try_load_run_dataset(run.get("dataset"))

    def study(self, run_id: int) -> dict[str, Any] | str:
        """``run_study`` of one run into ``out_dir/analysis/run_<id>``, or its error message."""
        if run_id not in self._studies:
            try:
                self._studies[run_id] = run_study(
                    self.store, self.out_dir / "analysis" / f"run_{run_id}", run_id=run_id)
            except MedrobustError as exc:
                self._studies[run_id] = str(exc)
        return self._studies[run_id]


def class_names(run: dict[str, Any], count: int | None = None) -> list[str]:
    """The model's class names recorded with a run, or 'class 0', 'class 1', ... if absent."""
    names = list((run.get("model") or {}).get("class_names") or [])
    if count is not None and len(names) < count:
        names += [f"class {i}" for i in range(len(names), count)]
    return names


def class_name(names: list[str], index: Any) -> str:
    """Name of class ``index`` (an int or a digit string), falling back to 'class i'."""
    try:
        i = int(index)
    except (TypeError, ValueError):
        return str(index)
    return names[i] if 0 <= i < len(names) else f"class {i}"
