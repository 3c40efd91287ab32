"""The package's one error hierarchy: every error a console command reports as one line and an exit status.

``AggposeError`` is the base; ``str(err)`` is one line naming the file or field and the way on, and
``err.exit_code`` the documented status (2: bad input, 1: a fault during the run). The console layer
(``data/cli_errors.py``) prints them; :func:`one_line` is the one formatter of any error or message for
the console and the logs.
"""

from __future__ import annotations

import os


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


def one_line(error: BaseException | str, limit: int | None = None) -> str:
    """An error (or a message) on one line: an ``OSError`` as 'reason: path', else its text with runs of
    white space collapsed and a multi-line listing folded ('title:' then its items -> 'title: a, b; next:
    c'). With ``limit``, a longer line keeps its start and end (paths stay readable) around '...'."""
    if isinstance(error, OSError) and error.strerror and error.filename is not None:
        text = f"{error.strerror}: {os.fspath(error.filename)}"
    else:
        text = error if isinstance(error, str) else (str(error) or type(error).__name__)
    out = ""
    for line in (" ".join(raw.split()) for raw in text.splitlines()):
        if line:
            sep = "" if not out else " " if out.endswith(":") else "; " if line.endswith(":") else ", "
            out += sep + line
    if limit is not None and len(out) > limit:
        head = (limit - 3) // 2
        out = out[:head] + "..." + out[len(out) - (limit - 3 - head) :]
    return out


__all__ = ["AggposeError", "CheckpointError", "InputError", "TrainCheckpointError", "one_line"]
