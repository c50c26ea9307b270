"""Turning Python/NumPy values into SQLite values and back.

Results come straight out of NumPy and torch code, so the store accepts NumPy scalars and arrays
everywhere and converts them once, here, instead of every caller calling ``.item()``/``.tolist()``.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any

import numpy as np

from medrobust.store.errors import StoreError

#: Column kinds a result table may declare, and the SQLite type each is stored as. JSON is kept in
#: a TEXT column on purpose: a column declared "JSON" would get NUMERIC affinity and SQLite would
#: silently turn the JSON text "3" into the integer 3.
SQL_TYPES: Mapping[str, str] = {
    "INTEGER": "INTEGER", "REAL": "REAL", "TEXT": "TEXT", "JSON": "TEXT",
}


def _json_default(value: Any) -> Any:
    """Make NumPy values, paths and sets JSON-encodable; anything else is a caller error."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def encode_json(value: Any, *, canonical: bool = False) -> str:
    """JSON text for ``value``; ``canonical`` sorts keys and drops spaces (for fingerprints).

    NaN and infinities are kept (as Python's ``NaN``/``Infinity``) because metrics are often NaN
    and losing them would be worse than writing non-standard JSON.
    """
    if canonical:
        return json.dumps(value, default=_json_default, sort_keys=True, separators=(",", ":"))
    return json.dumps(value, default=_json_default)


def decode_json(text: str | None, where: str = "a JSON cell") -> Any:
    """The Python value of stored JSON text; NULL stays None.

    Text that is not JSON (a store edited by hand, a disk error) raises StoreError naming
    ``where`` (table, column, run), so every command reports it in one line instead of a
    traceback.
    """
    if text is None:
        return None
    try:
        return json.loads(text)
    except (TypeError, ValueError) as exc:
        raise StoreError(f"corrupt JSON in {where} ({_short(text, 30)}): {exc}") from None


def to_sql(column: str, kind: str, value: Any) -> Any:
    """The value to bind for ``column`` of declared ``kind``, or StoreError naming the column."""
    if value is None:
        return None
    if kind == "JSON":
        try:
            return encode_json(value)
        except (TypeError, ValueError) as exc:
            raise StoreError(f"column {column!r} (JSON): cannot encode value: {exc}") from None
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    if isinstance(value, np.generic):
        value = value.item()
    if kind == "INTEGER":
        if isinstance(value, numbers.Integral):  # bool is Integral too: stored as 0/1
            return int(value)
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return int(value)
    elif kind == "REAL":
        if isinstance(value, numbers.Real):
            return float(value)
    elif kind == "TEXT":
        if isinstance(value, str):
            return str(value)
        if isinstance(value, PurePath):
            return str(value)
    raise StoreError(
        f"column {column!r} is {kind} but got {type(value).__name__} {_short(value)}"
    )


def from_sql(kind: str, value: Any, where: str = "a JSON cell") -> Any:
    """The Python value of a stored cell of declared ``kind`` (``where`` names it in errors)."""
    if value is None:
        return None
    if kind == "JSON":
        return decode_json(value, where)
    if kind == "REAL":
        return float(value)
    return value


def item_key(item: Any) -> str:
    """The TEXT key of an item: strings as they are, integers via ``str()``; nothing else."""
    if isinstance(item, (bool, np.bool_)):
        raise StoreError(f"item must be a str or int, got bool {item!r}")
    if isinstance(item, str):
        return str(item)
    if isinstance(item, numbers.Integral):
        return str(int(item))
    raise StoreError(f"item must be a str or int, got {type(item).__name__} {_short(item)}")


def _short(value: Any, limit: int = 60) -> str:
    """A repr short enough for a one-line error message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
