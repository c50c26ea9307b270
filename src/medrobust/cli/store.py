"""``medrobust store ...``: list runs and export result tables."""

from __future__ import annotations

from pathlib import Path

import click

from medrobust.cli.common import DEFAULT_STORE, emit
from medrobust.errors import MedrobustError
from medrobust.store import Store, export_runs, export_table
from medrobust.utils.markdown import markdown_table
from medrobust.utils.validation import check_writable


def _open(path: str) -> Store:
    """A store to read: refused when missing, empty or another program's file, and never
    created (``create=False``), so a read-only command writes nothing."""
    if not Path(path).is_file():
        raise MedrobustError(f"no store at {path}")
    return Store(path, create=False)


@click.group()
def store() -> None:
    """Inspect and export the run store."""


@store.command()
@click.option("--store", "store_path", default=DEFAULT_STORE, show_default=True)
@click.option("--json", "as_json", is_flag=True,
              help="Print one machine-readable JSON summary on stdout.")
def runs(store_path: str, as_json: bool) -> None:
    """List the runs in a store."""
    with _open(store_path) as st:
        rows = st.runs()
    summary = {"runs": [{k: r[k] for k in ("id", "command", "status", "started_at", "ended_at")}
                        for r in rows]}

    def human() -> None:
        rows = [(r["id"], r["command"], r["status"], r["started_at"], r["ended_at"] or "-")
                for r in summary["runs"]]
        click.echo(markdown_table(["run", "command", "status", "started", "ended"], rows,
                                  ["r", "l", "l", "l", "l"]))

    emit(summary, as_json, human)


@store.command()
@click.option("--store", "store_path", default=DEFAULT_STORE, show_default=True)
@click.option("--table", default=None, help="Result table (default: the runs table).")
@click.option("--run", "run_id", type=int, default=None, help="Only this run's rows.")
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="Output file, .csv or .parquet.")
@click.option("--json", "as_json", is_flag=True,
              help="Print one machine-readable JSON summary on stdout.")
def export(store_path: str, table: str | None, run_id: int | None, out: str,
           as_json: bool) -> None:
    """Export a result table (or the runs) to CSV or Parquet."""
    check_writable("--out", out, folder=False)
    if run_id is not None and table is None:
        raise MedrobustError("--run selects rows of a result table: give --table too")
    with _open(store_path) as st:
        if run_id is not None and run_id not in {r["id"] for r in st.runs()}:
            raise MedrobustError(f"no run {run_id} in {store_path}")
        if table is None:
            path = export_runs(st, out)
        else:
            if table not in st.tables():
                raise MedrobustError(f"no table {table!r} in {store_path}: {', '.join(st.tables())}")
            path = export_table(st, table, out, run_id=run_id)
    emit({"written": str(path)}, as_json, lambda: click.echo(f"wrote {path}"))
