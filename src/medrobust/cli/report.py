"""``medrobust report``: one self-contained HTML file from a store."""

from __future__ import annotations

import click

from medrobust.cli.common import DEFAULT_STORE, emit
from medrobust.cli.store import _open
from medrobust.utils.validation import check_writable


@click.command()
@click.option("--store", "store_path", default=DEFAULT_STORE, show_default=True)
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Folder for report.html.")
@click.option("--json", "as_json", is_flag=True,
              help="Print one machine-readable JSON summary on stdout.")
def report(store_path: str, out: str, as_json: bool) -> None:
    """Provenance, model quality, attack summary, gallery and analysis in one HTML page."""
    from medrobust.report import build_report

    check_writable("--out", out, folder=True)
    with _open(store_path) as st:
        path = build_report(st, out)
    emit({"report": str(path)}, as_json, lambda: click.echo(f"report: {path}"))
