"""Running the ``medrobust`` CLI in-process from tests (shared by the CLI test files)."""

from __future__ import annotations

import json

from medrobust.cli.main import main


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of one command."""
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys, *args: str) -> dict:
    """The one-line ``--json`` summary of a command that must succeed."""
    code, out, err = run_cli(capsys, *args, "--json")
    assert code == 0, err
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert len(lines) == 1, f"--json must print exactly one line, got {out!r}"
    return json.loads(lines[0])
