"""The ``medrobust`` command: a click group whose errors are one line, never a traceback."""

from __future__ import annotations

import sys

import click

from medrobust import __version__
from medrobust.cli.analyze import analyze
from medrobust.cli.attack import attack
from medrobust.cli.attack_asma import asma
from medrobust.cli.attack_gradient import ifgsm, pgd
from medrobust.cli.datasets import datasets
from medrobust.cli.defend import defend
from medrobust.cli.demo import demo
from medrobust.cli.evaluate import evaluate
from medrobust.cli.map import map_command
from medrobust.cli.report import report
from medrobust.cli.store import store
from medrobust.cli.train import train
from medrobust.cli.train_denoiser import train_denoiser_cmd
from medrobust.errors import MedrobustError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="medrobust")
def cli() -> None:
    """Find out how easily a medical-imaging model can be fooled, see why, and harden it."""


for command in (train, evaluate, attack, analyze, report, demo, datasets, store, map_command):
    cli.add_command(command)
for command in (train_denoiser_cmd, defend):
    cli.add_command(command)
for subcommand in (pgd, ifgsm, asma):
    attack.add_command(subcommand)


def main(argv: list[str] | None = None) -> int:
    """Entry point: user errors print ``error: ...`` on stderr and exit 2."""
    try:
        cli.main(args=argv, prog_name="medrobust", standalone_mode=False)
    except MedrobustError as exc:
        click.echo(f"error: {exc}", err=True)
        return 2
    except click.exceptions.Abort:
        click.echo("interrupted", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except KeyboardInterrupt:
        click.echo("interrupted: finished items are saved; run the same command to resume",
                   err=True)
        return 130
    except OSError as exc:
        click.echo(f"error: {exc}", err=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
