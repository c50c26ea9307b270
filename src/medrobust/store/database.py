"""The run store: one SQLite file per workspace holding every run and its per-item results.

Why SQLite and these settings: a campaign killed at any moment (OOM, Ctrl-C, pre-emption) must
resume without losing or redoing finished items. Each ``put`` is its own committed transaction in
WAL mode, so once it returns the row survives a crash of the process; ``synchronous=NORMAL`` only
risks the last few commits on a power loss, never corruption. Readers (reports, exports) never
block the writer.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medrobust.store.codec import (
    SQL_TYPES,
    decode_json,
    encode_json,
    from_sql,
    item_key,
    to_sql,
)
from medrobust.store.errors import StoreError
from medrobust.store.files import SCHEMA_VERSION, check_store_file, open_error
from medrobust.store.provenance import code_version, host_name, utc_now
from medrobust.store.schema import OPEN_ATTEMPT_SECONDS, migrate
from medrobust.store.tables import ResultTable

if TYPE_CHECKING:
    import pandas as pd

#: A run whose owner has not beaten its heart for this long is taken as dead even if a process
#: with its pid exists (pids are recycled) or it ran on another host.
HEARTBEAT_TIMEOUT_S = 600.0
#: How often an open run's owner refreshes its heartbeat while it computes (a thread of its own,
#: so one long item, e.g. a full confidence map, does not look dead).
HEARTBEAT_INTERVAL_S = 60.0

RUN_STATUSES: tuple[str, ...] = ("running", "completed", "failed", "interrupted")
FINISHED_STATUSES: tuple[str, ...] = ("completed", "failed", "interrupted")
#: Columns of ``runs`` that hold JSON text.
RUN_JSON_COLUMNS: tuple[str, ...] = ("params", "model", "dataset", "summary")
RUN_COLUMNS: tuple[str, ...] = (
    "id", "command", "params", "fingerprint", "code_version", "model", "dataset", "started_at",
    "ended_at", "status", "summary", "host", "resumed_count", "last_resumed_at",
    "active_seconds", "computed_items", "work_resumes",
)

# JSON columns are declared TEXT: a "JSON" declared type has NUMERIC affinity in SQLite.
_SCHEMA = (
    f"""
    CREATE TABLE IF NOT EXISTS runs (
        id INTEGER PRIMARY KEY,
        command TEXT NOT NULL,
        params TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        code_version TEXT,
        model TEXT,
        dataset TEXT,
        started_at TEXT NOT NULL,
        ended_at TEXT,
        status TEXT NOT NULL CHECK (status IN ({", ".join(repr(s) for s in RUN_STATUSES)})),
        summary TEXT,
        host TEXT,
        resumed_count INTEGER NOT NULL DEFAULT 0,
        last_resumed_at TEXT,
        owner_host TEXT,
        owner_pid INTEGER,
        heartbeat REAL,
        attempt_started REAL,
        active_seconds REAL,
        attempt_items INTEGER,
        computed_items INTEGER,
        work_resumes INTEGER
    )
    """,
    "CREATE INDEX IF NOT EXISTS runs_by_fingerprint ON runs (fingerprint, id)",
    "CREATE INDEX IF NOT EXISTS runs_by_command ON runs (command, id)",
    """
    CREATE TABLE IF NOT EXISTS result_tables (
        name TEXT PRIMARY KEY,
        columns TEXT NOT NULL,
        declared_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    )
    """,
    "CREATE TABLE IF NOT EXISTS store_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
)

def _pid_exists(pid: int) -> bool:
    """True when a process with ``pid`` exists on this host (signal 0 only checks)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    except OSError:
        return False
    return True


def run_fingerprint(
    command: str,
    params: Mapping[str, Any],
    model: Mapping[str, Any] | None = None,
    dataset: Mapping[str, Any] | None = None,
) -> str:
    """sha256 of the canonical JSON of what defines a run; equal inputs resume the same run."""
    payload = {"command": command, "params": params, "model": model, "dataset": dataset}
    try:
        text = encode_json(payload, canonical=True)
    except (TypeError, ValueError) as exc:
        raise StoreError(f"run {command!r}: parameters cannot be stored as JSON: {exc}") from None
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _quote(name: str) -> str:
    """A double-quoted identifier (names are validated identifiers already)."""
    return '"' + name.replace('"', '""') + '"'


def _run_id(run_id: Any) -> int:
    """``run_id`` as a Python int, or StoreError."""
    if isinstance(run_id, bool) or not hasattr(run_id, "__index__"):
        raise StoreError(f"run_id must be an integer, got {run_id!r}")
    return int(run_id.__index__())


def _json_or_none(name: str, value: Mapping[str, Any] | None) -> str | None:
    """JSON text of an optional mapping argument, with a clear error for anything else."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise StoreError(f"{name} must be a dict or None, got {type(value).__name__}")
    try:
        return encode_json(dict(value))
    except (TypeError, ValueError) as exc:
        raise StoreError(f"{name} cannot be stored as JSON: {exc}") from None


class Store:
    """All runs and per-item results of one workspace, in one SQLite file.

    Use as a context manager or call ``close()``. One ``Store`` per thread; several processes may
    open the same file at once (WAL mode, writers wait up to ``timeout`` seconds for the lock).
    """

    def __init__(self, path: str | os.PathLike[str], *, timeout: float = 30.0,
                 create: bool = True) -> None:
        """Open (or, with ``create``, make) the store at ``path``.

        An existing file is read read-only first and opened only if it is a medrobust store (or
        empty): another program's database is refused before any pragma or table touches it.
        ``create=False`` (commands that only read) also refuses a missing or empty file.
        """
        self.path = Path(path)
        self._declared: dict[str, ResultTable] = {}
        self._beats: dict[int, tuple[threading.Event, threading.Thread]] = {}
        self._conn: sqlite3.Connection | None = None
        check_store_file(self.path, create=create, timeout=timeout)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=timeout, isolation_level=None)
        except sqlite3.Error as exc:
            raise open_error(self.path, exc) from None
        except OSError as exc:
            raise StoreError(f"cannot open run store {self.path}: {exc}") from None
        self._conn = conn
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
            self._create_schema()
            self._load_declarations()
        except sqlite3.Error as exc:
            self.close()
            raise open_error(self.path, exc) from None
        except BaseException:
            self.close()
            raise

    # -- connection plumbing ------------------------------------------------------------------

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "open" if self._conn is not None else "closed"
        return f"Store({str(self.path)!r}, {state})"

    def close(self) -> None:
        """Close the connection (idempotent); committed data is already on disk."""
        self._stop_heartbeat()
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    @property
    def connection(self) -> sqlite3.Connection:
        """The open sqlite3 connection (autocommit mode; for read-only ad-hoc queries)."""
        if self._conn is None:
            raise StoreError(f"run store {self.path} is closed")
        return self._conn

    @property
    def journal_mode(self) -> str:
        """SQLite's journal mode for this file ('wal' unless the filesystem refused it)."""
        return str(self.connection.execute("PRAGMA journal_mode").fetchone()[0]).lower()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, committed on success and rolled back on any exception.

        ``BEGIN IMMEDIATE`` takes the write lock up front, so two processes never both read and
        then fail to upgrade (the classic SQLite deadlock).
        """
        conn = self.connection
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        else:
            conn.execute("COMMIT")

    def _create_schema(self) -> None:
        """Create the store's own tables and check the file's schema version."""
        with self._write() as conn:
            for statement in _SCHEMA:
                conn.execute(statement)
            row = conn.execute(
                "SELECT value FROM store_meta WHERE key = 'schema_version'"
            ).fetchone()
            if row is None:
                conn.executemany(
                    "INSERT INTO store_meta (key, value) VALUES (?, ?)",
                    [("schema_version", str(SCHEMA_VERSION)), ("created_at", utc_now()),
                     ("created_by", code_version())],
                )
            else:
                try:
                    version = int(row[0])
                except ValueError:
                    raise StoreError(
                        f"{self.path} is not a medrobust store / corrupt: schema version "
                        f"{row[0]!r} is not a number"
                    ) from None
                if version > SCHEMA_VERSION:
                    raise StoreError(
                        f"{self.path} has store schema version {row[0]}, newer than this "
                        f"medrobust understands ({SCHEMA_VERSION}); upgrade medrobust"
                    )
                if version < SCHEMA_VERSION:
                    self._migrate(conn)

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        """Upgrade an older file in place, inside the caller's transaction (all or nothing)."""
        migrate(conn)
        conn.execute(
            "UPDATE store_meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),)
        )

    @property
    def schema_version(self) -> int:
        """The schema version recorded in the file."""
        row = self.connection.execute(
            "SELECT value FROM store_meta WHERE key = 'schema_version'"
        ).fetchone()
        return int(row[0])

    # -- runs ---------------------------------------------------------------------------------

    def start_run(
        self,
        command: str,
        params: Mapping[str, Any],
        *,
        model: Mapping[str, Any] | None = None,
        dataset: Mapping[str, Any] | None = None,
        resume: bool | str = True,
    ) -> tuple[int, bool]:
        """Open a run; return ``(run_id, resumed)``.

        With ``resume`` the latest run with the same fingerprint (command, params, model,
        dataset) is reused whatever its status: it goes back to ``running``, keeps its
        ``started_at`` and bumps ``resumed_count``/``last_resumed_at``. Its finished items stay,
        so a ``Campaign`` over it only computes what is missing. ``resume="unfinished"`` reuses
        it only if it never completed (training: a rerun of a killed, stopped or failed run
        takes that run over, while a rerun of a finished one is a new run of its own).
        """
        if resume not in (True, False, "unfinished"):
            raise StoreError(f"resume must be True, False or 'unfinished', got {resume!r}")
        if not isinstance(command, str) or not command:
            raise StoreError(f"command must be a non-empty string, got {command!r}")
        params_text = _json_or_none("params", params)
        if params_text is None:
            raise StoreError("params must be a dict, got None")
        model_text = _json_or_none("model", model)
        dataset_text = _json_or_none("dataset", dataset)
        fingerprint = run_fingerprint(command, params, model, dataset)
        now, clock = utc_now(), time.time()
        host, pid = host_name(), os.getpid()
        resumed = False
        with self._write() as conn:
            if resume:
                row = conn.execute(
                    "SELECT id, status, owner_host, owner_pid, heartbeat FROM runs "
                    "WHERE fingerprint = ? ORDER BY id DESC LIMIT 1",
                    (fingerprint,),
                ).fetchone()
                if row is not None and not (resume == "unfinished" and row[1] == "completed"):
                    run_id, status, owner_host, owner_pid, heartbeat = row
                    if status == "running":
                        self._refuse_if_owned(run_id, command, owner_host, owner_pid, heartbeat)
                    # an attempt left 'running' (a hard kill) ran until its last heartbeat
                    conn.execute(
                        "UPDATE runs SET status = 'running', ended_at = NULL, "
                        "active_seconds = active_seconds + "
                        f"{OPEN_ATTEMPT_SECONDS.replace('?', 'heartbeat')}, "
                        "attempt_started = ?, attempt_items = 0, "
                        "resumed_count = resumed_count + 1, last_resumed_at = ?, "
                        "owner_host = ?, owner_pid = ?, heartbeat = ? WHERE id = ?",
                        (clock, now, host, pid, clock, run_id),
                    )
                    resumed = True
            if not resumed:
                cursor = conn.execute(
                    "INSERT INTO runs (command, params, fingerprint, code_version, model, "
                    "dataset, started_at, status, host, owner_host, owner_pid, heartbeat, "
                    "attempt_started, active_seconds, attempt_items, computed_items, "
                    "work_resumes) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, 'running', ?, ?, ?, ?, ?, 0.0, 0, 0, 0)",
                    (command, params_text, fingerprint, code_version(), model_text, dataset_text,
                     now, host, host, pid, clock, clock),
                )
                run_id, resumed = cursor.lastrowid, False
        self._start_heartbeat(int(run_id))
        return int(run_id), resumed

    def _refuse_if_owned(self, run_id: int, command: str, owner_host: str | None,
                         owner_pid: int | None, heartbeat: float | None) -> None:
        """StoreError if ``running`` run ``run_id`` is held by another live process.

        Alive means: a heartbeat younger than ``HEARTBEAT_TIMEOUT_S`` and, on this host, a
        process with that pid. A run left ``running`` by a hard kill (its pid gone) or with no
        recorded owner (an older store) is free; so is one this very process owns.
        """
        if owner_pid is None or heartbeat is None:
            return
        here = host_name()
        if owner_host == here and owner_pid == os.getpid():
            return
        age = time.time() - float(heartbeat)
        if age > HEARTBEAT_TIMEOUT_S:
            return
        if owner_host == here and not _pid_exists(int(owner_pid)):
            return
        where = "this host" if owner_host == here else f"host {owner_host or '?'}"
        raise StoreError(
            f"run {run_id} ({command}) in {self.path} is in progress in pid {owner_pid} on "
            f"{where} (heartbeat {max(age, 0):.0f} s ago); wait for it to finish or stop it, "
            "then run the same command to resume"
        )

    # -- heartbeat ----------------------------------------------------------------------------

    def _start_heartbeat(self, run_id: int) -> None:
        """Refresh run ``run_id``'s heartbeat every ``HEARTBEAT_INTERVAL_S`` from a daemon thread
        (its own connection: sqlite3 connections stay in their thread) until it finishes."""
        if run_id in self._beats:
            return
        stop = threading.Event()
        thread = threading.Thread(target=self._beat, args=(run_id, stop, os.getpid()),
                                  name=f"medrobust-heartbeat-{run_id}", daemon=True)
        self._beats[run_id] = (stop, thread)
        thread.start()

    def _beat(self, run_id: int, stop: threading.Event, pid: int) -> None:
        while not stop.wait(HEARTBEAT_INTERVAL_S):
            try:
                conn = sqlite3.connect(self.path, timeout=5.0, isolation_level=None)
                try:
                    conn.execute(
                        "UPDATE runs SET heartbeat = ? WHERE id = ? AND status = 'running' "
                        "AND owner_pid = ? AND owner_host = ?",
                        (time.time(), run_id, pid, host_name()),
                    )
                finally:
                    conn.close()
            except sqlite3.Error:
                pass  # a busy store skips one beat; the timeout is ten beats long

    def _stop_heartbeat(self, run_id: int | None = None) -> None:
        """Stop the heartbeat of ``run_id`` (of every run when None)."""
        for rid in list(self._beats) if run_id is None else [run_id]:
            entry = self._beats.pop(rid, None)
            if entry is not None:
                entry[0].set()

    def finish_run(
        self, run_id: int, status: str = "completed", summary: Mapping[str, Any] | None = None
    ) -> None:
        """Mark a run completed/failed/interrupted; ``summary`` (if given) replaces the old one.

        The attempt that ends here adds the seconds it ran to the run's ``active_seconds``
        (once: finishing a finished run again adds nothing)."""
        if status not in FINISHED_STATUSES:
            raise StoreError(
                f"run status must be one of {', '.join(FINISHED_STATUSES)}; got {status!r}"
            )
        summary_text = _json_or_none("summary", summary)
        rid = _run_id(run_id)
        self._stop_heartbeat(rid)
        with self._write() as conn:
            cursor = conn.execute(
                "UPDATE runs SET status = ?, ended_at = ?, summary = COALESCE(?, summary), "
                f"active_seconds = active_seconds + {OPEN_ATTEMPT_SECONDS} WHERE id = ?",
                (status, utc_now(), summary_text, time.time(), rid),
            )
            if cursor.rowcount == 0:
                raise StoreError(f"no run with id {run_id} in {self.path}")

    @contextmanager
    def tracked_run(
        self,
        command: str,
        params: Mapping[str, Any],
        *,
        model: Mapping[str, Any] | None = None,
        dataset: Mapping[str, Any] | None = None,
        resume: bool | str = True,
    ) -> Iterator[tuple[int, bool]]:
        """``start_run`` plus automatic finishing, so no command forgets to close its run.

        Ctrl-C marks the run ``interrupted``, any other exception ``failed`` (its message goes to
        the summary); a normal exit marks it ``completed`` unless the body already finished it
        (e.g. with a summary). A hard kill leaves it ``running``; resuming handles that.
        """
        run_id, resumed = self.start_run(
            command, params, model=model, dataset=dataset, resume=resume
        )
        with self.guard(run_id):
            yield run_id, resumed
        if self.get_run(run_id)["status"] == "running":
            self.finish_run(run_id, "completed")

    @contextmanager
    def guard(self, run_id: int) -> Iterator[None]:
        """Mark run ``run_id`` ``interrupted`` (Ctrl-C) or ``failed`` (any other exception, its
        message in the summary) if the body raises; the exception still propagates. Campaigns
        wrap their item loop in it; the same command later resumes the run."""
        try:
            yield
        except KeyboardInterrupt:
            self.finish_run(run_id, "interrupted")
            raise
        except Exception as exc:
            self.finish_run(run_id, "failed", {"error": f"{type(exc).__name__}: {exc}"})
            raise

    @staticmethod
    def _run_dict(row: sqlite3.Row | tuple[Any, ...]) -> dict[str, Any]:
        """A ``runs`` row as a dict with its JSON columns decoded."""
        run = dict(zip(RUN_COLUMNS, row, strict=True))
        for column in RUN_JSON_COLUMNS:
            run[column] = decode_json(run[column], f"runs.{column} of run {run['id']}")
        return run

    def get_run(self, run_id: int) -> dict[str, Any]:
        """One run as a dict (JSON decoded); StoreError if there is no such run."""
        row = self.connection.execute(
            f"SELECT {', '.join(RUN_COLUMNS)} FROM runs WHERE id = ?", (_run_id(run_id),)
        ).fetchone()
        if row is None:
            raise StoreError(f"no run with id {run_id} in {self.path}")
        return self._run_dict(row)

    def runs(self, command: str | None = None) -> list[dict[str, Any]]:
        """All runs, oldest first, optionally only those of ``command``."""
        sql = f"SELECT {', '.join(RUN_COLUMNS)} FROM runs"
        args: tuple[Any, ...] = ()
        if command is not None:
            sql += " WHERE command = ?"
            args = (command,)
        return [self._run_dict(row) for row in self.connection.execute(sql + " ORDER BY id", args)]

    def find_run(self, fingerprint: str, status: str | None = None) -> dict[str, Any] | None:
        """The newest run with ``fingerprint`` (and ``status``, if given), or None."""
        sql = f"SELECT {', '.join(RUN_COLUMNS)} FROM runs WHERE fingerprint = ?"
        args: list[Any] = [fingerprint]
        if status is not None:
            sql += " AND status = ?"
            args.append(status)
        row = self.connection.execute(sql + " ORDER BY id DESC LIMIT 1", args).fetchone()
        return None if row is None else self._run_dict(row)

    def latest_run(
        self, command: str | None = None, status: str | None = None
    ) -> dict[str, Any] | None:
        """The newest run (highest id) matching ``command``/``status``, or None."""
        if status is not None and status not in RUN_STATUSES:
            raise StoreError(f"run status must be one of {', '.join(RUN_STATUSES)}; got {status!r}")
        clauses, args = [], []
        if command is not None:
            clauses.append("command = ?")
            args.append(command)
        if status is not None:
            clauses.append("status = ?")
            args.append(status)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        row = self.connection.execute(
            f"SELECT {', '.join(RUN_COLUMNS)} FROM runs{where} ORDER BY id DESC LIMIT 1", args
        ).fetchone()
        return None if row is None else self._run_dict(row)

    # -- result tables ------------------------------------------------------------------------

    def _load_declarations(self) -> None:
        """Refresh the cached table declarations from the file (another process may add some)."""
        declared = {}
        for name, columns in self.connection.execute("SELECT name, columns FROM result_tables"):
            declared[name] = ResultTable(
                name, decode_json(columns, f"result_tables.columns of table {name!r}"))
        self._declared = declared

    def tables(self) -> list[str]:
        """Names of the declared result tables, sorted."""
        self._load_declarations()
        return sorted(self._declared)

    def table(self, name: str) -> ResultTable:
        """The stored declaration of result table ``name`` (the union of all declarations)."""
        return self._resolve(name)

    def ensure_table(self, table: ResultTable) -> ResultTable:
        """Create ``table`` if needed, add columns it lacks; return the stored declaration.

        Columns are only ever added (``ALTER TABLE ADD COLUMN``; old rows read them as None),
        never dropped or retyped: redeclaring a column with another kind is an error.
        """
        if not isinstance(table, ResultTable):
            raise StoreError(f"expected a ResultTable, got {type(table).__name__}")
        name = table.name
        now = utc_now()
        with self._write() as conn:
            row = conn.execute(
                "SELECT columns FROM result_tables WHERE name = ?", (name,)
            ).fetchone()
            stored = (ResultTable(name, decode_json(row[0], f"result_tables.columns of {name!r}"))
                      if row is not None else None)
            existing = {
                info[1].lower(): info[1]
                for info in conn.execute(f"PRAGMA table_info({_quote(name)})")
            }
            if existing and row is None:
                raise StoreError(
                    f"table {name!r} already exists in {self.path} but is not a result table"
                )
            if stored is not None:
                by_lower = {c.lower(): (c, k) for c, k in stored.columns.items()}
                for column, kind in table.columns.items():
                    if column.lower() not in by_lower:
                        continue
                    old_name, old_kind = by_lower[column.lower()]
                    if old_name != column:
                        raise StoreError(
                            f"table {name!r}: column {column!r} clashes with existing column "
                            f"{old_name!r} (names are case-insensitive)"
                        )
                    if old_kind != kind:
                        raise StoreError(
                            f"table {name!r}: column {column!r} is stored as {old_kind}, "
                            f"cannot redeclare it as {kind}"
                        )
            merged = stored.merged(table.columns) if stored is not None else table
            if not existing:
                columns_sql = "".join(
                    f", {_quote(c)} {SQL_TYPES[k]}" for c, k in merged.columns.items()
                )
                conn.execute(
                    f"CREATE TABLE {_quote(name)} ("
                    "run_id INTEGER NOT NULL REFERENCES runs(id), item TEXT NOT NULL"
                    f"{columns_sql}, recorded_at TEXT NOT NULL, PRIMARY KEY (run_id, item))"
                )
            else:
                for column, kind in merged.columns.items():
                    if column.lower() not in existing:
                        conn.execute(
                            f"ALTER TABLE {_quote(name)} ADD COLUMN {_quote(column)} "
                            f"{SQL_TYPES[kind]}"
                        )
            if stored is None or merged.columns != stored.columns:
                conn.execute(
                    "INSERT INTO result_tables (name, columns, declared_at, updated_at) "
                    "VALUES (?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
                    "columns = excluded.columns, updated_at = excluded.updated_at",
                    (name, encode_json(merged.columns), now, now),
                )
        self._declared[name] = merged
        return merged

    def _resolve(self, table: str | ResultTable) -> ResultTable:
        """The stored declaration for a table given by name or by declaration.

        A declaration is ensured first (cheaply skipped when the store already covers it), so
        code that owns a table never has to call ``ensure_table`` itself.
        """
        if isinstance(table, ResultTable):
            known = self._declared.get(table.name)
            if known is not None and all(
                known.columns.get(c) == k for c, k in table.columns.items()
            ):
                return known
            return self.ensure_table(table)
        if isinstance(table, str):
            known = self._declared.get(table)
            if known is None:
                self._load_declarations()
                known = self._declared.get(table)
            if known is None:
                names = ", ".join(sorted(self._declared)) or "none"
                raise StoreError(
                    f"no result table {table!r} in {self.path} (declared tables: {names})"
                )
            return known
        raise StoreError(f"table must be a name or a ResultTable, got {type(table).__name__}")

    def _insert_args(
        self, decl: ResultTable, run_id: int, item: str | int, row: Mapping[str, Any], now: str
    ) -> tuple[str, tuple[Any, ...]]:
        """SQL and arguments that write one row; all validation happens here, before writing."""
        if not isinstance(row, Mapping):
            raise StoreError(f"table {decl.name!r}: a row must be a dict, got {type(row).__name__}")
        for column in row:
            if column not in decl.columns:
                raise StoreError(
                    f"table {decl.name!r} has no column {column!r} "
                    f"(columns: {', '.join(decl.columns)})"
                )
        columns = list(row)
        values = [to_sql(c, decl.columns[c], row[c]) for c in columns]
        names = ", ".join(_quote(c) for c in ("run_id", "item", "recorded_at", *columns))
        marks = ", ".join("?" * (3 + len(columns)))
        sql = f"INSERT OR REPLACE INTO {_quote(decl.name)} ({names}) VALUES ({marks})"
        return sql, (run_id, item_key(item), now, *values)

    def _execute_writes(self, decl: ResultTable, run_id: int, writes: list[tuple]) -> None:
        """Run prepared inserts in one transaction, turning a missing run into a clear error."""
        try:
            with self._write() as conn:
                for sql, args in writes:
                    conn.execute(sql, args)
                # recording an item is a sign of life (cheap: same transaction)
                conn.execute("UPDATE runs SET heartbeat = ? WHERE id = ? AND owner_pid = ?",
                             (time.time(), run_id, os.getpid()))
                # what this attempt computed; its first item makes a resume one that did work
                conn.execute(
                    "UPDATE runs SET work_resumes = work_resumes + (CASE WHEN attempt_items = 0 "
                    "AND resumed_count > 0 THEN 1 ELSE 0 END), attempt_items = attempt_items + "
                    "?, computed_items = computed_items + ? WHERE id = ?",
                    (len(writes), len(writes), run_id))
        except sqlite3.IntegrityError as exc:
            if "FOREIGN KEY" in str(exc).upper():
                raise StoreError(
                    f"cannot write to {decl.name!r}: no run with id {run_id} in {self.path}"
                ) from None
            raise StoreError(f"cannot write to {decl.name!r}: {exc}") from None

    def put(
        self, table: str | ResultTable, run_id: int, item: str | int, row: Mapping[str, Any]
    ) -> None:
        """Write (or replace) one item's row in its own committed transaction.

        When this returns the row is durable against a crash of the process. Columns missing
        from ``row`` are NULL (a replaced row is replaced whole).
        """
        decl = self._resolve(table)
        rid = _run_id(run_id)
        self._execute_writes(decl, rid, [self._insert_args(decl, rid, item, row, utc_now())])

    def put_many(
        self,
        table: str | ResultTable,
        run_id: int,
        rows: Iterable[tuple[str | int, Mapping[str, Any]]],
    ) -> int:
        """Write many ``(item, row)`` pairs in one transaction (all or nothing); return the count.

        Every row is validated before anything is written.
        """
        decl = self._resolve(table)
        rid = _run_id(run_id)
        now = utc_now()
        writes = [self._insert_args(decl, rid, item, row, now) for item, row in rows]
        if writes:
            self._execute_writes(decl, rid, writes)
        return len(writes)

    def done_items(self, table: str | ResultTable, run_id: int) -> set[str]:
        """Keys of the items of ``run_id`` already recorded in ``table`` (as TEXT)."""
        decl = self._resolve(table)
        cursor = self.connection.execute(
            f"SELECT item FROM {_quote(decl.name)} WHERE run_id = ?", (_run_id(run_id),)
        )
        return {row[0] for row in cursor}

    def _select(
        self,
        decl: ResultTable,
        run_id: int | None,
        where: Mapping[str, Any] | None,
        decode: bool,
    ) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Column names and rows of a filtered select, in recording order."""
        columns = ["run_id", "item", *decl.columns, "recorded_at"]
        filters: dict[str, Any] = dict(where or {})
        if run_id is not None:
            filters["run_id"] = run_id
        clauses, args = [], []
        for column, value in filters.items():
            if column not in columns:
                raise StoreError(
                    f"table {decl.name!r} has no column {column!r} to filter on "
                    f"(columns: {', '.join(columns)})"
                )
            if value is None:
                clauses.append(f"{_quote(column)} IS NULL")
                continue
            if column == "run_id":
                value = _run_id(value)
            elif column == "item":
                value = item_key(value)
            elif column != "recorded_at":
                value = to_sql(column, decl.columns[column], value)
            clauses.append(f"{_quote(column)} = ?")
            args.append(value)
        sql = f"SELECT {', '.join(_quote(c) for c in columns)} FROM {_quote(decl.name)}"
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        sql += " ORDER BY run_id, rowid"
        raw = self.connection.execute(sql, args).fetchall()
        if not decode:
            return columns, raw
        kinds = [None, None, *decl.columns.values(), None]

        def cell(column: str, kind: str | None, value: Any, row: tuple[Any, ...]) -> Any:
            if kind is None:
                return value
            if kind == "JSON" and value is not None:  # name the cell only where JSON can fail
                return decode_json(value, f"{decl.name}.{column} of run {row[0]}, item {row[1]}")
            return from_sql(kind, value)

        decoded = [
            tuple(cell(c, k, v, row) for c, k, v in zip(columns, kinds, row, strict=True))
            for row in raw
        ]
        return columns, decoded

    def rows(
        self,
        table: str | ResultTable,
        run_id: int | None = None,
        where: Mapping[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        """Rows as dicts (``run_id``, ``item``, columns..., ``recorded_at``), JSON decoded.

        ``where`` maps column -> value for equality filters (None matches NULL).
        """
        columns, data = self._select(self._resolve(table), run_id, where, decode=True)
        return [dict(zip(columns, row, strict=True)) for row in data]

    def frame(
        self, table: str | ResultTable, run_id: int | None = None, *, decode_json: bool = True
    ) -> pd.DataFrame:
        """The table as a DataFrame, for analysis.

        JSON columns hold decoded Python objects (lists, dicts) by default, because that is what
        analysis code wants; ``decode_json=False`` keeps them as JSON text (flat, what the
        exporters write). INTEGER columns use pandas' nullable ``Int64``, REAL ``float64``.
        """
        import pandas as pd

        decl = self._resolve(table)
        columns, data = self._select(decl, run_id, None, decode=decode_json)
        kinds = {"run_id": "INTEGER", **decl.columns}
        series = {}
        for index, column in enumerate(columns):
            values = [row[index] for row in data]
            kind = kinds.get(column)
            if column == "run_id":
                series[column] = pd.Series(values, dtype="int64")
            elif kind == "INTEGER":
                series[column] = pd.Series(pd.array(values, dtype="Int64"))
            elif kind == "REAL":
                series[column] = pd.Series(
                    [float("nan") if v is None else v for v in values], dtype="float64"
                )
            else:
                series[column] = pd.Series(values, dtype=object)
        return pd.DataFrame(series, columns=columns)
