"""How an older store file grows into the current schema, and the SQL a run's timing shares.

Kept apart from ``database`` (the store's reads and writes) because it runs once per old file:
``Store`` opens a file, sees an older ``schema_version`` and calls ``migrate`` inside its own
write transaction, so an upgrade is all or nothing. Columns are only ever added
(``ALTER TABLE ... ADD COLUMN``), so old rows stay readable.
"""

from __future__ import annotations

import sqlite3

#: Columns added to ``runs`` after version 1, with their SQL types: a version-1 file gets them by
#: ``ALTER TABLE ... ADD COLUMN`` (old runs read them as NULL: owner unknown, so resumable).
OWNER_COLUMNS: tuple[tuple[str, str], ...] = (
    ("owner_host", "TEXT"), ("owner_pid", "INTEGER"), ("heartbeat", "REAL"),
)
#: Columns added to ``runs`` in version 3, so a run's duration is the time its attempts ran and
#: a rerun that finds nothing left to compute is not counted as a resume:
#: ``attempt_started`` (epoch seconds) and ``attempt_items`` belong to the current (or last)
#: attempt; ``active_seconds`` sums the attempts that have ended, ``computed_items`` counts the
#: items recorded by every attempt, ``work_resumes`` the resumes that recorded at least one.
#: NULL means "not recorded" (a run resumed before version 3): reports then say so.
TIMING_COLUMNS: tuple[tuple[str, str], ...] = (
    ("attempt_started", "REAL"), ("active_seconds", "REAL"), ("attempt_items", "INTEGER"),
    ("computed_items", "INTEGER"), ("work_resumes", "INTEGER"),
)
#: SQL for the seconds an attempt that is still marked ``running`` has run until epoch ``?``
#: (NULL, i.e. unknown, without a recorded start); 0 for a run already finished, so finishing
#: a run twice does not count its last attempt twice. It reads the row as it was before the
#: ``UPDATE`` it sits in (SQL evaluates every assignment on the old row).
OPEN_ATTEMPT_SECONDS = ("(CASE WHEN status = 'running' THEN max(0.0, ? - attempt_started) "
                        "ELSE 0.0 END)")


def migrate(conn: sqlite3.Connection) -> None:
    """Add the columns an older ``runs`` table lacks and fill what its rows still tell (inside
    the caller's transaction; the caller records the new schema version)."""
    have = {info[1] for info in conn.execute("PRAGMA table_info(runs)")}
    for column, kind in (*OWNER_COLUMNS, *TIMING_COLUMNS):
        if column not in have:
            conn.execute(f"ALTER TABLE runs ADD COLUMN {column} {kind}")
    if "active_seconds" not in have:
        backfill_timing(conn)


def backfill_timing(conn: sqlite3.Connection) -> None:
    """Fill the version-3 timing columns of older runs with what their rows still tell.

    Every recorded item was computed once, so ``computed_items`` is the run's row count over
    the result tables. A run never resumed had one attempt, from ``started_at`` to ``ended_at``
    (still open if ``running``: its start is kept, so a later resume adds what it ran until its
    last heartbeat). A resumed run's attempts are unknown: its ``active_seconds`` and
    ``work_resumes`` stay NULL, and reports say so instead of guessing.
    """
    counts: dict[int, int] = {}
    existing = {row[0] for row in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table'")}
    for (name,) in conn.execute("SELECT name FROM result_tables").fetchall():
        if name not in existing:
            continue
        quoted = '"' + name.replace('"', '""') + '"'
        for run_id, n in conn.execute(f"SELECT run_id, COUNT(*) FROM {quoted} GROUP BY run_id"):
            counts[int(run_id)] = counts.get(int(run_id), 0) + int(n)
    conn.execute("UPDATE runs SET computed_items = 0")
    conn.executemany("UPDATE runs SET computed_items = ? WHERE id = ?",
                     [(n, run_id) for run_id, n in counts.items()])
    # julianday() reads the ISO timestamps utc_now() writes (NULL for anything else: unknown);
    # 2440587.5 is the Unix epoch as a Julian day
    conn.execute(
        "UPDATE runs SET work_resumes = 0, attempt_items = computed_items, "
        "attempt_started = (julianday(started_at) - 2440587.5) * 86400.0, "
        "active_seconds = CASE WHEN status = 'running' THEN 0.0 ELSE "
        "(julianday(ended_at) - julianday(started_at)) * 86400.0 END "
        "WHERE resumed_count = 0"
    )
