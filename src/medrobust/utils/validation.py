"""Parameter checks that raise one clear line (scikit-learn style validated parameters)."""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from medrobust.errors import ConfigError


def check_range(name: str, value: float, low: float | None = None, high: float | None = None,
                *, low_inclusive: bool = True, high_inclusive: bool = True) -> float:
    """Return ``value`` if it lies in the interval, else raise ConfigError naming ``name``."""
    ok = True
    if low is not None:
        ok &= value >= low if low_inclusive else value > low
    if high is not None:
        ok &= value <= high if high_inclusive else value < high
    if not ok:
        lo = "-inf" if low is None else low
        hi = "inf" if high is None else high
        lb = "[" if low_inclusive else "("
        rb = "]" if high_inclusive else ")"
        raise ConfigError(f"{name} must lie in {lb}{lo}, {hi}{rb}, got {value}")
    return value


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> Any:
    """Return ``value`` if it is one of ``choices``, else raise ConfigError listing them."""
    options = list(choices)
    if value not in options:
        raise ConfigError(f"{name} must be one of {', '.join(map(str, options))}; got {value!r}")
    return value


def check_split_fractions(val_fraction: float, test_fraction: float) -> None:
    """Validation and test shares of a seeded split: each in [0, 1), together below 1."""
    check_range("val_fraction", val_fraction, 0.0, 1.0, high_inclusive=False)
    check_range("test_fraction", test_fraction, 0.0, 1.0, high_inclusive=False)
    check_range("val_fraction + test_fraction", val_fraction + test_fraction, 0.0, 1.0,
                high_inclusive=False)


def check_writable(option: str, path: str | os.PathLike[str], *, folder: bool) -> Path:
    """Refuse an output path that cannot be written, before any work starts.

    The nearest existing ancestor must be a folder we can create a file in (probed with a
    temporary file that is removed at once: permission bits, read-only mounts and ACLs all
    show up, which ``os.access`` misses for root). An existing target must be of the right
    kind (``folder`` or file) and, for a file, writable. Nothing is created.
    """
    p = Path(path)
    if p.exists():
        if folder and not p.is_dir():
            raise ConfigError(f"{option} {path}: exists and is not a folder")
        if not folder and p.is_dir():
            raise ConfigError(f"{option} {path}: is a folder, not a file")
    base = p if p.is_dir() else p.parent
    while not base.exists():
        base = base.parent
    if not base.is_dir():
        raise ConfigError(f"{option} {path}: cannot write there ({base} is a file, not a folder)")
    try:
        with tempfile.TemporaryFile(dir=base):
            pass
    except OSError as exc:
        why = f" ({exc.strerror})" if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS,
                                                     errno.ENOSPC, errno.EDQUOT) else ""
        raise ConfigError(f"{option} {path}: {base} is not a writable folder{why}") from None
    if p.is_file() and not os.access(p, os.W_OK):
        raise ConfigError(f"{option} {path}: the file is read-only")
    return p
