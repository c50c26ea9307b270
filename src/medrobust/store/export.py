"""Flat files out of the run store (CSV for people and spreadsheets, Parquet for pandas/R).

Exports are flat: JSON columns are written as JSON text, never as nested Parquet types, so the
CSV and Parquet of one table have the same columns and the same values.
"""

from __future__ import annotations

import os
from pathlib import Path

from medrobust.store.codec import encode_json
from medrobust.store.database import RUN_COLUMNS, RUN_JSON_COLUMNS, Store
from medrobust.store.errors import StoreError
from medrobust.store.tables import ResultTable

FORMATS: tuple[str, ...] = (".csv", ".parquet")


def _format(path: Path) -> str:
    """The export format named by ``path``'s suffix, or a one-line StoreError."""
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise StoreError(
            f"cannot export to {str(path)!r}: unknown suffix {path.suffix or '(none)'!r}, "
            f"use {' or '.join(FORMATS)}"
        )
    return suffix


def _write(frame, path: Path, suffix: str) -> Path:
    """Write ``frame`` to ``path`` in the format of ``suffix``, creating parent folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        try:
            frame.to_parquet(path, index=False)
        except ImportError as exc:
            raise StoreError(f"Parquet export needs pyarrow: {exc}") from None
    return path


def export_table(
    store: Store,
    table: str | ResultTable,
    path: str | os.PathLike[str],
    run_id: int | None = None,
) -> Path:
    """Write a result table (optionally one run of it) to ``path`` (.csv or .parquet)."""
    path = Path(path)
    suffix = _format(path)
    frame = store.frame(table, run_id, decode_json=False)
    return _write(frame, path, suffix)


def export_runs(store: Store, path: str | os.PathLike[str]) -> Path:
    """Write the ``runs`` table to ``path`` (.csv or .parquet), JSON columns as JSON text."""
    import pandas as pd

    path = Path(path)
    suffix = _format(path)
    records = store.runs()
    columns = {}
    for column in RUN_COLUMNS:
        values = [run[column] for run in records]
        if column in RUN_JSON_COLUMNS:
            values = [None if v is None else encode_json(v) for v in values]
        if column in ("id", "resumed_count"):
            columns[column] = pd.Series(values, dtype="int64")
        else:
            columns[column] = pd.Series(values, dtype=object)
    return _write(pd.DataFrame(columns, columns=list(RUN_COLUMNS)), path, suffix)
