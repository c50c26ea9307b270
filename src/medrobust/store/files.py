"""What a store path holds, found without writing a byte, and why SQLite cannot open or write it.

Kept apart from ``database`` (the store itself) because these checks run before a store is
opened: a command refuses another program's SQLite file, a newer store, a damaged file or an
unwritable folder with one line before its work starts, and ``Store`` runs the same checks
before any pragma or table touches the file.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from medrobust.store.errors import StoreError

#: Bumped when the store's own tables change shape; a newer file is refused, not misread, and an
#: older one is upgraded in place (``schema.migrate``). 2: run ownership (owner host/pid, heartbeat).
#: 3: each run's active time and computed items over its attempts (``schema.TIMING_COLUMNS``).
SCHEMA_VERSION = 3

def _header_problem(path: Path) -> str | None:
    """Why an existing file cannot be an intact SQLite database, from its 100-byte header: not
    SQLite at all, or shorter than the size its header records (truncated). None if it looks
    fine, is empty or does not exist (SQLite creates it)."""
    try:
        if not path.is_file():
            return None
        size = path.stat().st_size
        if size == 0:
            return None
        with path.open("rb") as f:
            header = f.read(100)
    except OSError as exc:
        return f"cannot read it ({exc.strerror or exc})"
    if not header.startswith(b"SQLite format 3\x00"):
        return "not an SQLite database"
    if len(header) < 100:
        return f"truncated ({size} bytes, shorter than an SQLite header)"
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(header[28:32], "big")
    size_valid = header[24:28] == header[92:96] and pages > 0
    if size_valid and size < pages * page_size:
        return f"truncated ({size} bytes, its header records {pages * page_size})"
    return None


def _read_only_uri(path: Path) -> str:
    """An SQLite URI that reads ``path`` without writing anything, beside it included.

    A WAL-mode file opened read-only gets ``-wal``/``-shm`` files created beside it (and left
    there). With no ``-wal`` file, everything is in the main file, so ``immutable=1`` reads it
    without them; otherwise ``mode=ro`` reads through the existing log."""
    uri = path.resolve().as_uri()
    try:
        with path.open("rb") as f:
            wal = f.read(20)[18:20] == b"\x02\x02"  # file format versions 2: WAL mode
    except OSError:
        wal = False
    if wal and not Path(f"{path}-wal").exists():
        return uri + "?immutable=1"
    return uri + "?mode=ro"


def _write_problem(path: Path) -> str | None:
    """Why SQLite cannot open or write the store ``path`` (None when no cause is visible).

    Writing needs more than the file: SQLite creates ``<name>-wal`` and ``<name>-shm`` (or a
    ``-journal``) beside it, so a read-only folder stops a store that is itself writable."""
    if path.is_dir():
        return f"{path} is a folder, not a store file"
    folder = path.parent
    if folder.is_dir() and not os.access(folder, os.W_OK | os.X_OK):
        return (f"its folder {folder} is not writable (SQLite must create {path.name}-wal and "
                f"{path.name}-shm beside the store, even to read it)")
    if path.exists() and not os.access(path, os.W_OK):
        return "the file is read-only"
    for tail, role in (("-wal", "write-ahead log"), ("-shm", "shared-memory index"),
                       ("-journal", "rollback journal")):
        side = Path(f"{path}{tail}")
        if side.exists() and not side.is_file():
            return f"{side}, where SQLite keeps the store's {role}, is a folder"
        if side.is_file() and not os.access(side, os.W_OK):
            return f"{side}, where SQLite keeps the store's {role}, is not writable"
    return None


def open_error(path: Path, exc: sqlite3.Error) -> StoreError:
    """One line for an SQLite error while opening ``path``: unwritable or locked files are named
    as such, not reported as corruption; only SQLite's own corruption errors say corrupt."""
    if not isinstance(exc, sqlite3.OperationalError):
        return StoreError(f"{path} is not a medrobust store / corrupt: {exc}")
    why = _write_problem(path)
    if why is not None:
        return StoreError(f"cannot write to run store {path}: {why}")
    if "locked" in str(exc).lower():
        return StoreError(f"run store {path} is locked by another process ({exc}); try again "
                          "when it is done")
    return StoreError(f"cannot open run store {path}: {exc}")


def inspect_store_file(path: str | os.PathLike[str], timeout: float = 30.0
                       ) -> tuple[str, list[str], str | None]:
    """What ``path`` holds, found without writing a byte (not even a journal mode or a lock file).

    Returns ``(kind, tables, schema_version)``: ``"new"`` for a missing or empty (0-byte) file or
    an SQLite database without tables (nothing to lose: it may become a store), ``"store"`` for
    a medrobust store (it has ``store_meta`` with a ``schema_version``), ``"other"`` for any
    other SQLite database. A file that is not SQLite, or a damaged one, is a StoreError.
    """
    path = Path(path)
    problem = _header_problem(path)
    if problem is not None:
        raise StoreError(f"{path} is not a medrobust store / corrupt: {problem}")
    if not path.exists() or (path.is_file() and path.stat().st_size == 0):
        return "new", [], None
    if path.is_dir():
        raise StoreError(f"cannot open run store {path}: it is a folder, not a store file")
    try:
        conn = sqlite3.connect(_read_only_uri(path), uri=True, timeout=timeout)
        try:
            names = [row[0] for row in conn.execute(
                "SELECT name FROM sqlite_master WHERE type IN ('table', 'view') "
                "AND substr(name, 1, 7) != 'sqlite_' ORDER BY name")]
            version = None
            if "store_meta" in names:
                try:
                    row = conn.execute(
                        "SELECT value FROM store_meta WHERE key = 'schema_version'").fetchone()
                except sqlite3.OperationalError:  # a table of that name but another shape
                    row = None
                version = None if row is None else str(row[0])
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise open_error(path, exc) from None
    if version is not None:
        return "store", names, version
    return ("other" if names else "new"), names, None


def check_store_path(path: str | os.PathLike[str]) -> None:
    """A store a command may write, refused before any work starts: a writable place, and
    either no file yet or a medrobust store (never another program's SQLite file)."""
    from medrobust.utils.validation import check_writable

    check_writable("--store", path, folder=False)
    check_store_file(path)


def check_store_file(path: str | os.PathLike[str], *, create: bool = True,
                     timeout: float = 30.0) -> str:
    """Refuse, before anything is written, a ``path`` that ``Store`` must not open: another
    program's SQLite database, a store newer than this code, a damaged file or (``create=False``,
    for commands that only read) a file that is not a store yet. Returns the kind
    (``inspect_store_file``); commands may call it to fail before their work starts."""
    path = Path(path)
    kind, names, version = inspect_store_file(path, timeout)
    if kind == "other":
        shown = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
        raise StoreError(f"{path} is a SQLite database of another program, not a medrobust store "
                         f"(tables: {shown}); medrobust will not write to it: choose another "
                         "store file")
    if kind == "new" and not create:
        what = "does not exist" if not path.exists() else "holds no runs (an empty file)"
        raise StoreError(f"no medrobust store at {path}: it {what}")
    if kind == "store":
        try:
            number = int(str(version))
        except ValueError:
            raise StoreError(f"{path} is not a medrobust store / corrupt: schema version "
                             f"{version!r} is not a number") from None
        if number > SCHEMA_VERSION:
            raise StoreError(f"{path} has store schema version {version}, newer than this "
                             f"medrobust understands ({SCHEMA_VERSION}); upgrade medrobust")
    return kind
