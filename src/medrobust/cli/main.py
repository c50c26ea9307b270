"""The ``medrobust`` command: a click group whose errors are one line, never a traceback."""

from __future__ import annotations

import importlib
import sys

import click

from medrobust import __version__
from medrobust.errors import MedrobustError

#: name -> (module under medrobust.cli, attribute, one-line help). Commands are imported only when
#: run: loading every command pulls in torch, MONAI and matplotlib (about 4 s), which ``--help``
#: and ``store`` do not need. A test keeps these help lines equal to the commands' own.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "analyze": ("analyze", "analyze", "Chromatic distance, X/Y/colour statistics, location "
                "heatmaps and even/odd periodicity."),
    "attack": ("attack", "attack", "Attack a model over a dataset split (results land in the store "
               "and resume after a kill)."),
    "datasets": ("datasets", "datasets", "List the registered datasets and MedMNIST flags."),
    "defend": ("defend", "defend", "Evaluate denoising defences against the one-pixel attacks "
               "recorded in the store."),
    "demo": ("demo", "demo", "Train on the embedded synthetic default (or --dataset), attack, "
             "analyse, write a report."),
    "evaluate": ("evaluate", "evaluate", "Evaluate a checkpoint on a dataset split."),
    "map": ("map", "map_command", "Score every pixel x every grid colour; save min/max/mean maps, "
            "figures and the verdict."),
    "report": ("report", "report", "Provenance, model quality, attack summary, gallery and "
               "analysis in one HTML page."),
    "store": ("store", "store", "Inspect and export the run store."),
    "train": ("train", "train", "Train a classifier (or, with --task segmentation, a U-Net) and "
              "save it as safetensors + JSON metadata."),
    "train-denoiser": ("train_denoiser", "train_denoiser_cmd", "Train a denoising autoencoder on "
                       "impulse noise (saved as safetensors + JSON)."),
}
#: subcommands of ``attack`` that live in their own files
ATTACK_SUBCOMMANDS = (("attack_gradient", "pgd"), ("attack_gradient", "ifgsm"),
                      ("attack_asma", "asma"))


def load_command(name: str) -> click.Command:
    """Import one command (``attack`` with its subcommands)."""
    module, attr, _ = COMMANDS[name]
    command = getattr(importlib.import_module(f"medrobust.cli.{module}"), attr)
    if name == "attack":
        for sub_module, sub in ATTACK_SUBCOMMANDS:
            if sub not in command.commands:
                command.add_command(getattr(importlib.import_module(f"medrobust.cli.{sub_module}"),
                                            sub))
    return command


class LazyGroup(click.Group):
    """A group that imports a command only when it is invoked or asked for its own help."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return load_command(cmd_name) if cmd_name in COMMANDS else None

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, COMMANDS[name][2]) for name in self.list_commands(ctx)])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="medrobust")
def cli() -> None:
    """Find out how easily a medical-imaging model can be fooled, see why, and harden it."""


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
