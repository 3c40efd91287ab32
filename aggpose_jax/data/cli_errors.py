"""The command-line layer of every console command: one-line errors, exit codes, the shared model flags.

Exit codes: 0 done, 1 a fault during a run, 2 bad input (a file, flag or config field), 130 Ctrl-C,
143 SIGTERM. ``aggpose_jax.errors`` holds the error hierarchy, each error's exit code and ``one_line``, the
one formatter of an error for the console; ``add_model_flags``/``model_flags`` are the
model-loading flags shared by ``aggpose-predict`` and ``aggpose-export``.


``run_cli(prog, body)`` runs a CLI body and turns ``OSError``/``ValueError`` (bad paths, bad
files, bad arguments) into ``<prog>: error: <one line>`` with exit code 2, and Ctrl-C or SIGTERM
into ``<prog>: interrupted`` with exit code 130 or 143 (raised as exceptions, so ``finally``
blocks clean up). The ``require_*`` checks raise those errors with a message that names the path.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import uuid
from collections.abc import Callable
from typing import Any, NoReturn

from aggpose_jax.errors import one_line

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_FAULT",
    "EXIT_INTERRUPTED",
    "EXIT_TERMINATED",
    "Parser",
    "Terminated",
    "add_model_flags",
    "model_flags",
    "make_writable_dir",
    "require_dir",
    "require_file",
    "require_writable_dir",
    "require_writable_file",
    "run_cli",
]

EXIT_FAULT = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 128 + signal.SIGTERM


class Terminated(SystemExit):
    """Raised in the main thread on SIGTERM while a CLI body runs (exit code 143)."""

    def __init__(self) -> None:
        super().__init__(EXIT_TERMINATED)


def require_dir(path: str, what: str) -> str:
    """``path`` if it is an existing directory, else FileNotFoundError/NotADirectoryError naming it."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what} {path} does not exist")
    if not os.path.isdir(path):
        raise NotADirectoryError(f"{what} {path} is not a folder")
    return path


def require_file(path: str, what: str) -> str:
    """``path`` if it is an existing regular file, else FileNotFoundError/IsADirectoryError naming it."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what} {path} does not exist")
    if os.path.isdir(path):
        raise IsADirectoryError(f"{what} {path} is a folder, not a file")
    return path


def _nearest_existing(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def require_writable_dir(path: str, what: str) -> str:
    """``path`` if it is a writable folder or can be created (its nearest existing ancestor is one)."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise NotADirectoryError(f"{what} {path} exists and is not a folder")
    base = _nearest_existing(path)
    if not os.path.isdir(base):
        raise NotADirectoryError(f"{what} {path} cannot be created: {base} is not a folder")
    if not os.access(base, os.W_OK | os.X_OK):
        raise PermissionError(f"{what} {path} is not writable ({base} is read-only)")
    return path


def make_writable_dir(path: str | os.PathLike[str]) -> str:
    """Create the folder ``path`` if needed and prove a file can be written in it (a probe file, removed
    again); returns its absolute path. Raises ``OSError`` when it cannot."""
    path = os.path.abspath(os.fspath(path))
    os.makedirs(path, exist_ok=True)
    probe = os.path.join(path, f".aggpose-write-test-{uuid.uuid4().hex[:8]}")
    with open(probe, "w") as f:
        f.write("ok")
    os.remove(probe)
    return path


def require_writable_file(path: str, what: str) -> str:
    """``path`` if it is not a folder and its folder is writable or can be created."""
    if os.path.isdir(path):
        raise IsADirectoryError(f"{what} {path} is a folder, not a file")
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise PermissionError(f"{what} {path} is not writable")
    base = _nearest_existing(os.path.dirname(os.path.abspath(path)))
    if not os.path.isdir(base):
        raise NotADirectoryError(f"{what} {path} cannot be written: {base} is not a folder")
    if not os.access(base, os.W_OK | os.X_OK):
        raise PermissionError(f"{what} {path} cannot be written: {base} is read-only")
    return path


class Parser(argparse.ArgumentParser):
    """argparse for every console command: a usage error is one line naming the flag (no usage block),
    exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see --help)\n")


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated()


def run_cli(prog: str, body: Callable[[], int]) -> int:
    """Run ``body()``; bad input -> one stderr line and 2, Ctrl-C -> 130, SIGTERM -> 143."""
    previous = None
    try:
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:  # not the main thread: leave SIGTERM alone
        pass
    try:
        return body()
    except (OSError, ValueError) as e:
        print(f"{prog}: error: {one_line(e)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Terminated as e:
        print(f"{prog}: terminated (SIGTERM)", file=sys.stderr)
        return int(e.code)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def add_model_flags(group: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """The model-loading flags of ``aggpose-predict`` and ``aggpose-export`` (read back by :func:`model_flags`)."""
    group.add_argument("--which", choices=("latest", "best"), default="latest", help="a workdir's checkpoint")
    group.add_argument("--keypoints", choices=("coco", "infant"), help="keypoint set (default: from the joint count)")
    group.add_argument(
        "--input-size", type=int, nargs=2, metavar=("H", "W"), help="model input (default: checkpoint's)"
    )
    group.add_argument("--bf16", action="store_true", help="compute in bfloat16")


def model_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of ``predict.model.load_model`` from :func:`add_model_flags`' flags."""
    return {"which": args.which, "keypoints": args.keypoints, "image_size": args.input_size, "bf16": args.bf16}
