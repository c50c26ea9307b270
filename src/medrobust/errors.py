"""User-facing errors.

Anything a user can cause (a missing file, a bad option, an unknown name) raises a
``MedrobustError`` with one line that names the problem; the CLI prints that line and exits
non-zero instead of showing a traceback from deep inside.
"""


class MedrobustError(Exception):
    """A problem the user can fix; its message is one self-contained line."""


class DataError(MedrobustError):
    """A dataset is missing, corrupt or asked for in a way it cannot serve."""


class ConfigError(MedrobustError):
    """An option or parameter is out of range or inconsistent."""


class CheckpointError(MedrobustError):
    """A model checkpoint is missing, incomplete or does not match its metadata."""
