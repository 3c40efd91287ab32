"""The main job in a workdir: every check first, then train and/or evaluate (``python -m aggpose_jax.main``).

Nothing is recorded in the workdir before the checks pass (config, launch environment, input paths,
workdir lock, resume compatibility, data files). A failure is a :class:`JobError`: one line and the exit
code (2 bad input, 1 a fault during the run).
"""

from __future__ import annotations

import contextlib
import json

from ml_collections import ConfigDict

from aggpose_jax import config as config_lib
from aggpose_jax import storage
from aggpose_jax import workdir as workdir_lib
from aggpose_jax.config import RunConfig
from aggpose_jax.data.cli_errors import EXIT_BAD_INPUT, EXIT_FAULT
from aggpose_jax.distributed import maybe_initialize_distributed, spec_from_env
from aggpose_jax.errors import AggposeError, TrainCheckpointError, one_line
from aggpose_jax.evaluate.job import evaluate_params, evaluate_run
from aggpose_jax.logs import log, setup_logging
from aggpose_jax.train.loop import NonFiniteLossError, Trainer


class JobError(AggposeError):
    """A job that cannot go on: ``str(err)`` is the one-line reason, ``err.exit_code`` the exit code."""

    def __init__(self, message: str, code: int = EXIT_BAD_INPUT):
        super().__init__(one_line(message))
        self.exit_code = code

    @property
    def code(self) -> int:
        return self.exit_code


def run(
    config: ConfigDict, workdir: str, mode: str, reference: ConfigDict | None = None, restart: bool = False
) -> None:
    """Check everything, then run ``mode`` ('train', 'eval' or 'train_and_eval') in ``workdir``.

    The config is validated once, into the run's ``RunConfig``, after the distributed runtime (if the
    launch asks for one) is up: its batches are split over every process's devices.
    """
    try:
        spec_from_env()  # a broken AGGPOSE_* launch contract: one line, before anything starts
    except ValueError as err:
        raise JobError(str(err)) from None
    maybe_initialize_distributed()
    setup_logging()  # console only; before the devices are first asked for (absl's backend lines are quieted)
    try:
        run_cfg = config_lib.validate(config, reference, workdir=workdir)
        config_lib.check_paths(config)
        if mode == "eval" and not run_cfg.init_checkpoint and not workdir_lib.has_state(storage.absolute(workdir)):
            raise ValueError(f"config.init_checkpoint: empty and no training checkpoint in {workdir}/checkpoints")
        workdir = workdir_lib.check_writable(workdir)
    except ValueError as err:
        raise JobError(str(err)) from None
    try:
        with workdir_lib.WorkdirLock(workdir):
            if mode == "eval":
                _evaluate(run_cfg, workdir)
            else:
                _train(run_cfg, workdir, evaluate=mode == "train_and_eval", restart=restart)
    except (ValueError, FileNotFoundError) as err:
        raise JobError(str(err)) from None


def _evaluate(run_cfg: RunConfig, workdir: str) -> None:
    workdir_lib.prepare_data(run_cfg.data)
    metrics = evaluate_run(run_cfg, workdir)
    log.info("AP %.4f; metrics in %s", metrics["AP"], storage.join(workdir, "metrics.json"))


def _train(run_cfg: RunConfig, workdir: str, *, evaluate: bool, restart: bool) -> None:
    fresh_start = workdir_lib.check_resume(run_cfg, workdir, restart=restart)
    workdir_lib.prepare_data(run_cfg.data)
    trainer = Trainer(run_cfg, workdir)  # reads the data files
    if fresh_start:
        trainer.close()
        log.warning("--restart: the previous state moved to %s; training from step 0", workdir_lib.archive(workdir))
        trainer = Trainer(run_cfg, workdir)
    workdir_lib.record_config(run_cfg, workdir)
    done_before = (trainer.checkpointer.latest_step() or 0) >= trainer.total_steps
    try:
        result = trainer.fit(evaluate=evaluate)
        if done_before and not result.preempted:
            _report_complete(run_cfg, workdir, trainer, evaluate=evaluate)
    except (NonFiniteLossError, TrainCheckpointError) as err:
        with contextlib.suppress(TrainCheckpointError):
            trainer.close()
        raise JobError(str(err), code=EXIT_FAULT) from None
    try:
        trainer.close()  # waits for the last asynchronous save
    except TrainCheckpointError as err:
        raise JobError(str(err), code=EXIT_FAULT) from None
    if result.preempted:
        log.info("preempted at step %d; rerun the same command to resume", result.step)
    elif result.metrics and not done_before:
        log.info("done: step %d, AP %.4f", result.step, result.metrics["AP"])


def _report_complete(run_cfg: RunConfig, workdir: str, trainer: Trainer, *, evaluate: bool) -> None:
    """A rerun of a finished run: say so; evaluate the final step first if its metrics are missing."""
    step = trainer.total_steps
    try:
        records = json.loads(storage.read_text(storage.join(workdir, "metrics.json")))
        final = next((e for e in records.get("evaluations", []) if e.get("step") == step), None)
    except (OSError, ValueError):
        final = None
    if final is None and evaluate:
        log.info("run complete at step %d, but its final evaluation is missing: evaluating", step)
        final = evaluate_params(run_cfg, run_cfg.model, trainer.state["params"], workdir, step, mesh=trainer.mesh)
    ap = f"; final AP {final['AP']:.4f} (metrics.json)" if final else ""
    log.info("run already complete: step %d of %d%s; nothing to do", step, step, ap)
