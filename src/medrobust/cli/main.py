"""The ``medrobust`` command: a click group whose errors are one line, never a traceback."""

from __future__ import annotations

import importlib
import signal
import sqlite3
import sys
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import TextIO

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
    "certify": ("certify", "certify", "Certify a model: what no perturbation of L2 norm within "
                "each of --radii can change."),
    "datasets": ("datasets", "datasets", "List the registered datasets and MedMNIST flags."),
    "defend": ("defend", "defend", "Evaluate denoising defences against the one-pixel attacks "
               "recorded in the store."),
    "demo": ("demo", "demo", "Train on the embedded synthetic default (or --dataset), attack, "
             "analyse, write a report."),
    "evaluate": ("evaluate", "evaluate", "Evaluate a checkpoint on a dataset split, clean or "
                 "under the attack protocol."),
    "map": ("map", "map_command", "Score every pixel x every grid colour; save min/max/mean maps, "
            "figures and the verdict."),
    "report": ("report", "report", "Provenance, model quality, attack summary, gallery and "
               "analysis in one HTML page."),
    "store": ("store", "store", "Inspect and export the run store."),
    "train": ("train", "train", "Train a classifier, segmenter, landmark model or detector "
              "(--task) and save it as safetensors + JSON metadata; --robust trains it "
              "adversarially (VAT, TEAT or adaptive margins)."),
    "train-denoiser": ("train_denoiser", "train_denoiser_cmd", "Train a denoising autoencoder on "
                       "impulse or Gaussian noise (safetensors + JSON)."),
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


#: what Ctrl-C and SIGTERM print: every campaign commits each finished item, so a rerun resumes
INTERRUPTED = "interrupted: finished items are saved; run the same command to resume"
#: exit codes: 128 + the signal's number, as shells report a process killed by that signal
EXIT_SIGINT, EXIT_SIGTERM = 130, 143


class Terminated(KeyboardInterrupt):
    """SIGTERM (``timeout``, Slurm, ``docker stop``) raised in the main thread: a subclass of
    KeyboardInterrupt, so ``Store.guard`` marks the run ``interrupted`` exactly as for Ctrl-C."""


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    """Turn the first SIGTERM into ``Terminated``; later ones are ignored so the cleanup that
    marks the run interrupted is not itself interrupted."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Terminated()


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Handle SIGTERM like Ctrl-C for the duration of one command, then restore the previous
    handler (``main`` also runs in-process, in tests and from other programs)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _one_line_warning(message: Warning | str, category: type[Warning], filename: str,
                      lineno: int, file: TextIO | None = None, line: str | None = None) -> None:
    """Warnings on the command line are one ``warning: ...`` line, like errors."""
    click.echo(f"warning: {message}", err=True)


def main(argv: list[str] | None = None) -> int:
    """Entry point: user errors print ``error: ...`` on stderr and exit 2.

    Ctrl-C and SIGTERM both mark the running campaign ``interrupted`` (its finished items stay)
    and print one line saying so; the exit code is 130 after Ctrl-C and 143 after SIGTERM.
    """
    args = sys.argv[1:] if argv is None else list(argv)
    with warnings.catch_warnings():
        if argv is None:  # a real command line; in-process callers keep their own warning hooks
            warnings.showwarning = _one_line_warning
        with _sigterm_as_interrupt():
            return _run(args)


def _close_progress_bars() -> None:
    """An error raised inside a loop with a progress bar would print on the bar's line (the bar
    closes only once the traceback is gone): close open bars first, which clears their lines."""
    if "tqdm" not in sys.modules:  # nothing was shown; do not import it for an early error
        return
    from tqdm.std import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def _say(line: str) -> None:
    """The one line a stopped command prints, on a line of its own."""
    _close_progress_bars()
    click.echo(line, err=True)


def _run(args: list[str]) -> int:
    """Run one command, turning every way it can stop into an exit code and at most one line.

    Click's own ``main`` is bypassed because it turns Ctrl-C into ``Abort`` and prints a blank
    line first."""
    try:
        with cli.make_context("medrobust", args) as ctx:
            cli.invoke(ctx)
    except MedrobustError as exc:
        _say(f"error: {exc}")
        return 2
    except click.exceptions.Exit as exc:  # --help, --version
        return exc.exit_code
    except click.exceptions.Abort:
        _say(INTERRUPTED)
        return EXIT_SIGINT
    except click.UsageError as exc:  # one line, like every other error, with where to look
        where = exc.ctx.command_path if exc.ctx is not None else "medrobust"
        message = " ".join(exc.format_message().split())
        _say(f"error: {message} (see '{where} --help')")
        return exc.exit_code
    except click.ClickException as exc:
        _say(f"error: {' '.join(exc.format_message().split())}")
        return exc.exit_code
    except Terminated:
        _say(INTERRUPTED)
        return EXIT_SIGTERM
    except KeyboardInterrupt:
        _say(INTERRUPTED)
        return EXIT_SIGINT
    except sqlite3.DatabaseError as exc:  # corruption SQLite finds only deep inside the file
        store = _option_value(args, "--store") or "the run store"
        _say(f"error: {store} is not a medrobust store / corrupt: {exc}")
        return 2
    except OSError as exc:
        _say(f"error: {exc}")
        return 2
    return 0


def _option_value(args: list[str], name: str) -> str | None:
    """The last value given to option ``name`` on the command line (``--x v`` or ``--x=v``)."""
    value = None
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(name + "="):
            value = arg[len(name) + 1:]
    return value


if __name__ == "__main__":
    sys.exit(main())
