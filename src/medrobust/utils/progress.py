"""Progress bars that stay quiet when asked (``--json``, tests) and go to stderr otherwise."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress_enabled() -> bool:
    """Progress bars are on unless MEDROBUST_QUIET is set (the CLI sets it for ``--json``)."""
    return not os.environ.get("MEDROBUST_QUIET")


def progress(iterable: Iterable[T] | None = None, **kwargs) -> Iterator[T] | tqdm:
    """A tqdm bar on stderr, disabled when progress is off."""
    kwargs.setdefault("disable", not progress_enabled())
    kwargs.setdefault("file", sys.stderr)
    kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("leave", False)
    if not sys.stderr.isatty():
        kwargs.setdefault("mininterval", 5.0)  # logs, not terminals: a line every few seconds
    return tqdm(iterable, **kwargs)


def note(line: str) -> None:
    """One line on stderr beside the bars (tqdm keeps an open bar intact), off with them."""
    if progress_enabled():
        tqdm.write(line, file=sys.stderr)
