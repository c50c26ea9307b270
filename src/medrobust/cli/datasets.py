"""``medrobust datasets``: what can be loaded."""

from __future__ import annotations

import click

from medrobust.cli.common import emit
from medrobust.data import available_datasets
from medrobust.data.medmnist import MEDMNIST_FLAGS


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
def datasets(as_json: bool) -> None:
    """List the registered datasets and MedMNIST flags."""
    summary = {"datasets": available_datasets(), "medmnist_flags": sorted(MEDMNIST_FLAGS)}

    def human() -> None:
        click.echo("datasets: " + ", ".join(summary["datasets"]))
        click.echo("MedMNIST flags (use as --dataset): " + ", ".join(summary["medmnist_flags"]))

    emit(summary, as_json, human)
