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
