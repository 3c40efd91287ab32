"""The package's console logger and atomic JSON records (written by process 0 only)."""

from __future__ import annotations

import json
import logging
from typing import Any

import jax

from aggpose_jax import storage

log = logging.getLogger("aggpose_jax")


def setup_logging(level: int = logging.INFO) -> None:
    """Plain 'time level message' lines on stderr for the package's logger (idempotent)."""
    if not any(getattr(h, "_aggpose", False) for h in log.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        handler._aggpose = True  # type: ignore[attr-defined]
        log.addHandler(handler)
    log.setLevel(level)
    log.propagate = False
    try:  # Orbax logs every checkpoint step at INFO through absl
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.WARNING)
    except ImportError:
        pass


def write_json(path: str, data: Any) -> None:
    """Write JSON atomically (a local path or a ``gs://`` URL); process 0 only."""
    if jax.process_index() != 0:
        return
    storage.write_text(path, json.dumps(data, indent=1, sort_keys=True))


__all__ = ["log", "setup_logging", "write_json"]
