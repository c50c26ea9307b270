"""Declarations of per-item result tables.

The store knows no attack or analysis: the code that fills a table declares it with a
``ResultTable`` and the store creates (or extends) it on first use. Every table is keyed by
``(run_id, item)``, so a finished item is a row and resuming means skipping rows that exist.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

from medrobust.store.codec import SQL_TYPES
from medrobust.store.errors import StoreError

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")

#: Columns every result table has; a declaration may not reuse these names.
RESERVED_COLUMNS: frozenset[str] = frozenset({"run_id", "item", "recorded_at", "rowid", "oid"})

#: Tables the store owns; a result table may not take these names.
RESERVED_TABLES: frozenset[str] = frozenset({"runs", "result_tables", "store_meta"})


def check_identifier(kind: str, name: str) -> str:
    """``name`` if it is a plain SQL identifier (letters, digits, underscore), else StoreError.

    Table and column names end up inside SQL text, so only safe identifiers are allowed.
    """
    if not isinstance(name, str) or not _IDENTIFIER.match(name):
        raise StoreError(
            f"{kind} name {name!r} is not a valid identifier "
            "(letters, digits and underscores, not starting with a digit, at most 63 characters)"
        )
    return name


@dataclass(frozen=True)
class ResultTable:
    """A per-item result table: its name and its value columns (name -> kind).

    Kinds are INTEGER, REAL, TEXT or JSON (lists, dicts, tuples, NumPy arrays and scalars; stored
    as JSON text, decoded on read). The key column ``item`` and ``run_id``/``recorded_at`` are
    implied. Adding columns to a declaration later is fine: the store extends the table.
    """

    name: str
    columns: dict[str, str] = field(hash=False)

    key: ClassVar[str] = "item"

    def __post_init__(self) -> None:
        check_identifier("table", self.name)
        if self.name.lower() in RESERVED_TABLES or self.name.lower().startswith("sqlite_"):
            raise StoreError(f"table name {self.name!r} is reserved by the run store")
        if not isinstance(self.columns, Mapping) or not self.columns:
            raise StoreError(f"table {self.name!r} needs a non-empty mapping of columns")
        columns: dict[str, str] = {}
        seen: set[str] = set()
        for column, kind in self.columns.items():
            check_identifier("column", column)
            if column.lower() in RESERVED_COLUMNS:
                raise StoreError(
                    f"table {self.name!r}: column name {column!r} is reserved "
                    f"({', '.join(sorted(RESERVED_COLUMNS))})"
                )
            if column.lower() in seen:  # SQLite column names are case-insensitive
                raise StoreError(f"table {self.name!r}: column {column!r} is declared twice")
            seen.add(column.lower())
            upper = kind.upper() if isinstance(kind, str) else kind
            if upper not in SQL_TYPES:
                raise StoreError(
                    f"table {self.name!r}: column {column!r} has kind {kind!r}; "
                    f"use one of {', '.join(SQL_TYPES)}"
                )
            columns[column] = upper
        # A private copy: the caller's dict may change later, the declaration must not.
        object.__setattr__(self, "columns", columns)

    def merged(self, other: Mapping[str, str]) -> ResultTable:
        """This declaration followed by the columns of ``other`` it lacks.

        Columns are never dropped, so the stored declaration is the union of every declaration
        seen; old code declaring fewer columns keeps working.
        """
        extra = {c: k for c, k in other.items() if c not in self.columns}
        return ResultTable(self.name, {**self.columns, **extra})
