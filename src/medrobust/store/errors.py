"""The one error type the run store raises, so the CLI can print it as a single line."""

from __future__ import annotations

from medrobust.errors import MedrobustError


class StoreError(MedrobustError):
    """A run-store problem the user can fix: unknown table or column, bad value, missing run."""
