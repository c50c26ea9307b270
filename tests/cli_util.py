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


class CapturedOutput:
    """What ``run_json`` needs of capsys, for module-scoped fixtures (capsys is per test): a
    context manager that redirects stdout and stderr and reads them back like capsys."""

    def __enter__(self) -> CapturedOutput:
        import contextlib
        import io

        self.out, self.err = io.StringIO(), io.StringIO()
        self._stack = contextlib.ExitStack()
        self._stack.enter_context(contextlib.redirect_stdout(self.out))
        self._stack.enter_context(contextlib.redirect_stderr(self.err))
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def readouterr(self) -> tuple[str, str]:
        out, err = self.out.getvalue(), self.err.getvalue()
        for buf in (self.out, self.err):
            buf.seek(0)
            buf.truncate()
        return out, err


def assert_one_error_line(code: int, err: str, needle: str) -> str:
    """The bad-input contract: exit 2, no traceback, exactly one ``error:`` line holding
    ``needle``; returns that line."""
    assert "Traceback" not in err, err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert needle in lines[0], lines[0]
    return lines[0]


def tree(root) -> set[str]:
    """Every path under ``root``, relative: what a command must leave as it found it."""
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def run_count(path) -> int | None:
    """Runs in the store at ``path`` (None: no store file)."""
    from pathlib import Path

    from medrobust.store import Store

    if not Path(path).is_file():
        return None
    with Store(path) as st:
        return len(st.runs())
