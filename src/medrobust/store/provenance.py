"""Where a run came from: code version (package version + git commit) and host name.

A result is only reproducible if we know which code produced it, so every run records this. It is
best effort: no git, no checkout or a slow disk must never stop a run.
"""

from __future__ import annotations

import functools
import socket
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import medrobust


def utc_now() -> str:
    """ISO 8601 UTC timestamp with microseconds (sorts as text, unambiguous across hosts)."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _git_dir(package: Path) -> Path | None:
    """The checkout holding ``package`` as ``medrobust/`` or ``src/medrobust/``, if any.

    Only those two layouts count, so an installed copy inside some other repository (a virtualenv
    in a project folder) does not report that repository's commit.
    """
    for folder in (package.parent, package.parent.parent):
        if (folder / ".git").exists():
            return folder
    return None


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """``medrobust.__version__``, plus ``+g<short hash>`` when the package is a git checkout."""
    version = medrobust.__version__
    try:
        root = _git_dir(Path(medrobust.__file__).resolve().parent)
        if root is None:
            return version
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=5, check=False,
        )
        commit = out.stdout.strip()
        if out.returncode == 0 and commit and commit.isalnum():
            return f"{version}+g{commit}"
    except (OSError, subprocess.SubprocessError, ValueError):
        pass
    return version


@functools.lru_cache(maxsize=1)
def host_name() -> str:
    """This machine's host name ('' if it cannot be read)."""
    try:
        return socket.gethostname()
    except OSError:
        return ""
