"""Train and/or evaluate AggPose: ``python -m aggpose_jax.main --config CONFIG.py --workdir DIR``.

    --mode train|eval|train_and_eval (default train_and_eval)
    --config.<key>=<value>     override any config value (ml_collections.config_flags)
    --restart                  archive the workdir's state and train from step 0

The config is validated once, before anything is written (``aggpose_jax.job``). With ``data.root=''`` a
synthetic COCO-17 dataset is generated into <workdir>/synthetic. Multi-process (TPU pods, SLURM, several
GPU hosts): set ``AGGPOSE_DISTRIBUTED=1`` (or ``JAX_COORDINATOR_ADDRESS``), see ``aggpose_jax.distributed``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from absl import app, flags
from ml_collections import ConfigDict, config_flags

from aggpose_jax import config as config_lib
from aggpose_jax.data.cli_errors import EXIT_BAD_INPUT
from aggpose_jax.errors import one_line
from aggpose_jax.job import JobError, run

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/*.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs, metrics and predictions.")
_MODE = flags.DEFINE_enum("mode", "train_and_eval", list(config_lib.MODES), "What to run.")
_RESTART = flags.DEFINE_bool(
    "restart", False, "Archive the workdir's checkpoints and records (to WORKDIR/archive/) and train from step 0."
)


def fail(message: str, code: int = EXIT_BAD_INPUT) -> None:
    print(f"error: {one_line(message)}", file=sys.stderr, flush=True)
    sys.exit(code)


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing with one-line errors naming the flag or config key (exit code 2)."""
    try:
        return flags.FLAGS(argv)
    except Exception as err:  # noqa: BLE001 -- absl/ml_collections raise several types
        message = str(err)
        path = config_lib.config_path(argv)
        if path:
            try:
                message = config_lib.unknown_override(argv, config_lib.load_file(path)) or message
            except Exception as load_err:  # noqa: BLE001 -- a config file may raise anything
                message = f"--config: cannot load {path}: {type(load_err).__name__}: {load_err}"
        fail(message)
    return []


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        fail(f"unexpected arguments: {' '.join(argv[1:])}")
    path = config_lib.config_path(sys.argv)
    if path is None:
        fail("--config is required (e.g. --config configs/default.py)")
    if _WORKDIR.value is None:
        fail("--workdir is required")
    if not isinstance(_CONFIG.value, ConfigDict):
        fail(f"--config: cannot load {path}" + ("" if os.path.isfile(path) else " (no such file)"))
    try:
        run(_CONFIG.value, _WORKDIR.value, _MODE.value, config_lib.load_file(path), _RESTART.value)
    except JobError as err:
        fail(str(err), err.exit_code)


def cli() -> None:
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    cli()
