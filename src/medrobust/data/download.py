"""Fetching and checking dataset files.

Downloads go to a temporary file beside the destination and are renamed into place only after
their MD5 matches, so an interrupted or corrupted transfer never leaves a file that later loads
look like the real dataset.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Collection
from pathlib import Path

from medrobust.errors import DataError
from medrobust.utils.progress import progress

CHUNK = 1 << 20


def file_md5(path: str | Path, chunk_size: int = CHUNK) -> str:
    """Hex MD5 of a file, read in chunks so multi-GB files do not need to fit in memory."""
    digest = hashlib.md5(usedforsecurity=False)
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(chunk_size):
                digest.update(chunk)
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from exc
    return digest.hexdigest()


def _as_set(expected: str | Collection[str]) -> set[str]:
    items = [expected] if isinstance(expected, str) else list(expected)
    return {e.strip().lower() for e in items}


def verify_md5(path: str | Path, expected: str | Collection[str]) -> str:
    """Return the file's MD5 if it is one of ``expected``, else raise DataError naming both."""
    allowed = _as_set(expected)
    if not allowed:
        raise ValueError("verify_md5 needs at least one expected MD5")
    actual = file_md5(path)
    if actual not in allowed:
        want = " or ".join(sorted(allowed))
        raise DataError(f"wrong MD5 checksum for {path}: expected {want}, got {actual}")
    return actual


def describe_error(exc: BaseException) -> str:
    """A short one-line reason for a download or file error (no ``<urlopen error ...>``)."""
    if isinstance(exc, urllib.error.HTTPError):
        text = f"HTTP {exc.code} {exc.reason}"
    elif isinstance(exc, urllib.error.URLError):
        text = str(exc.reason)
    else:
        text = str(exc)
    return " ".join(text.split()) or type(exc).__name__


def download(url: str, dest: str | Path, md5s: str | Collection[str] | None = None,
             timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` atomically, checking the MD5 when ``md5s`` is given.

    A failed check deletes the download. Network and file-system failures become a one-line
    DataError so callers can tell the user what to do instead of showing a traceback.
    """
    dest = Path(dest)
    tmp: Path | None = None
    # Folders this call creates; removed again if the download fails, so a failure leaves the
    # file system as it was (a typo in --data-dir must not appear as a new empty folder).
    created = [p for p in (dest.parent, *dest.parent.parents) if not p.exists()]
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
        tmp = Path(tmp_name)
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            with progress(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                          desc=dest.name) as bar:
                while chunk := resp.read(CHUNK):
                    out.write(chunk)
                    bar.update(len(chunk))
        if md5s is not None:
            verify_md5(tmp, md5s)
        os.replace(tmp, dest)
        tmp = None
    except DataError as exc:
        raise DataError(f"download of {url} failed: {exc}") from exc
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        raise DataError(f"could not download {url} to {dest}: {describe_error(exc)}") from exc
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        if not dest.is_file():
            for folder in created:  # deepest first
                try:
                    folder.rmdir()
                except OSError:
                    break
    return dest
