"""The package's one error hierarchy: every error a console command reports as one line and an exit status.

``AggposeError`` is the base; ``str(err)`` is one line naming the file or field and the way on, and
``err.exit_code`` the documented status (2: bad input, 1: a fault during the run). The console layer
(``data/cli_errors.py``) prints them; nothing else formats them.
"""

from __future__ import annotations


class AggposeError(Exception):
    """An error reported to the user as one line (``str(err)``) and ``exit_code``."""

    exit_code = 1


class InputError(AggposeError, ValueError):
    """Bad input: a file, flag or config field that cannot be used (exit status 2)."""

    exit_code = 2


class CheckpointError(InputError):
    """A file or directory is not a readable model source (one line, names the file)."""


class TrainCheckpointError(AggposeError, RuntimeError):
    """Training checkpoints cannot be used or written (one line: the step, the folder and the way on)."""


__all__ = ["AggposeError", "CheckpointError", "InputError", "TrainCheckpointError"]
