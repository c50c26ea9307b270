"""``medrobust analyze``: the one-pixel study (chromatic, spatial, periodicity) from stored results."""

from __future__ import annotations

import click

from medrobust.cli.common import DEFAULT_STORE, emit, fmt
from medrobust.cli.store import _open
from medrobust.utils.markdown import markdown_table
from medrobust.utils.validation import check_writable


@click.command()
@click.option("--store", "store_path", default=DEFAULT_STORE, show_default=True)
@click.option("--run", "run_id", type=int, default=None,
              help="One-pixel run to analyse (default: every one-pixel run in the store).")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Folder for tables (CSV, Markdown) and plots (PNG).")
@click.option("--json", "as_json", is_flag=True,
              help="Print one machine-readable JSON summary on stdout.")
def analyze(store_path: str, run_id: int | None, out: str, as_json: bool) -> None:
    """Chromatic distance, X/Y/colour statistics, location heatmaps and even/odd periodicity."""
    from medrobust.analysis.study import run_study

    check_writable("--out", out, folder=True)
    with _open(store_path) as st:
        summary = run_study(st, out, run_id=run_id)

    def human() -> None:
        rows = [(d, p["n"], p["even_even"], fmt(p["share"]), fmt(p["p_value"], 4))
                for d, p in summary["periodicity"].items()]
        click.echo(markdown_table(["direction", "attacks", "on even/even", "share",
                                   "p (vs 25 % by chance)"], rows, ["l", "r", "r", "r", "r"]))
        click.echo(f"tables and plots in {out}")

    emit(summary, as_json, human)
