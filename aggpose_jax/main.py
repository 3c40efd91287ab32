"""Train and/or evaluate AggPose: ``python -m aggpose_jax.main --config CONFIG.py --workdir DIR``.

    --mode train|eval|train_and_eval (default train_and_eval)
    --config.<key>=<value>     override any config value (ml_collections.config_flags)

The config is validated once, before anything is written. With ``data.root=''`` a synthetic COCO-17
dataset is generated into <workdir>/synthetic. Multi-process (TPU pods, SLURM, several GPU hosts): set
``AGGPOSE_DISTRIBUTED=1`` (or ``JAX_COORDINATOR_ADDRESS``) and ``jax.distributed.initialize()`` is called.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Sequence

from absl import app, flags
from ml_collections import ConfigDict, config_flags

from aggpose_jax import config as config_lib
from aggpose_jax import workdir as workdir_lib
from aggpose_jax.distributed import maybe_initialize_distributed, spec_from_env

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/*.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs, metrics and predictions.")
_MODE = flags.DEFINE_enum("mode", "train_and_eval", list(config_lib.MODES), "What to run.")
_RESTART = flags.DEFINE_bool(
    "restart", False, "Archive the workdir's checkpoints and records (to WORKDIR/archive/) and train from step 0."
)


def fail(message: str, code: int = 2) -> None:
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr, flush=True)
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


def run(config: ConfigDict, workdir: str, mode: str, reference: ConfigDict | None = None, restart: bool = False) -> int:
    """Check everything (config, workdir lock, resume compatibility, data files), then train and/or evaluate.

    Nothing is recorded in the workdir before the checks pass. Returns the process exit code.
    """
    try:
        spec_from_env()  # a broken AGGPOSE_* launch contract: one line, before anything starts
        model_cfg = config_lib.validate(config, reference)
        config_lib.check_paths(config)
        if mode == "eval" and not config.init_checkpoint and not workdir_lib.has_state(os.path.abspath(workdir)):
            raise ValueError(f"config.init_checkpoint: empty and no training checkpoint in {workdir}/checkpoints")
        workdir = workdir_lib.check_writable(workdir)
    except ValueError as err:
        fail(str(err))
    from aggpose_jax.logs import log, setup_logging

    setup_logging()
    maybe_initialize_distributed()
    try:
        with workdir_lib.WorkdirLock(workdir):
            if mode == "eval":
                from aggpose_jax.evaluate.job import evaluate_run

                workdir_lib.prepare_data(config, workdir)
                metrics = evaluate_run(config, model_cfg, workdir)
                log.info("AP %.4f; metrics in %s", metrics["AP"], os.path.join(workdir, "metrics.json"))
                return 0
            from aggpose_jax.train.checkpoints import CheckpointError
            from aggpose_jax.train.loop import NonFiniteLossError, Trainer

            fresh_start = workdir_lib.check_resume(config, workdir, restart=restart)
            workdir_lib.prepare_data(config, workdir)
            trainer = Trainer(config, workdir)  # reads the data files
            if fresh_start:
                trainer.close()
                log.warning(
                    "--restart: the previous state moved to %s; training from step 0", workdir_lib.archive(workdir)
                )
                trainer = Trainer(config, workdir)
            workdir_lib.record_config(config, workdir)
            done_before = (trainer.checkpointer.latest_step() or 0) >= trainer.total_steps
            try:
                result = trainer.fit(evaluate=mode == "train_and_eval")
                if done_before and not result.preempted:
                    _report_complete(config, model_cfg, workdir, trainer, evaluate=mode == "train_and_eval")
            except (NonFiniteLossError, CheckpointError) as err:
                with contextlib.suppress(CheckpointError):
                    trainer.close()
                fail(str(err), code=1)
            try:
                trainer.close()
            except CheckpointError as err:
                fail(str(err), code=1)
            if done_before and not result.preempted:
                return 0
    except (ValueError, FileNotFoundError) as err:
        fail(str(err))
    if result.preempted:
        log.info("preempted at step %d; rerun the same command to resume", result.step)
    elif result.metrics:
        log.info("done: step %d, AP %.4f", result.step, result.metrics["AP"])
    return 0


def _report_complete(config: ConfigDict, model_cfg, workdir: str, trainer, *, evaluate: bool) -> int:
    """A rerun of a finished run: say so; evaluate the final step first if its metrics are missing."""
    import json

    from aggpose_jax.logs import log

    step = trainer.total_steps
    try:
        with open(os.path.join(workdir, "metrics.json"), encoding="utf-8") as f:
            final = next((e for e in json.load(f).get("evaluations", []) if e.get("step") == step), None)
    except (OSError, ValueError):
        final = None
    if final is None and evaluate:
        from aggpose_jax.evaluate.job import evaluate_params

        log.info("run complete at step %d, but its final evaluation is missing: evaluating", step)
        final = evaluate_params(config, model_cfg, trainer.state["params"], workdir, step, mesh=trainer.mesh)
    ap = f"; final AP {final['AP']:.4f} (metrics.json)" if final else ""
    log.info("run already complete: step %d of %d%s; nothing to do", step, step, ap)
    return 0


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
    sys.exit(run(_CONFIG.value, _WORKDIR.value, _MODE.value, config_lib.load_file(path), _RESTART.value))


def cli() -> None:
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    cli()
