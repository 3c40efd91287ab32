"""The main job in a workdir: every check first, then train and/or evaluate (``python -m aggpose_jax.main``).

Nothing is recorded in the workdir before the checks pass (config, launch environment, input paths,
workdir lock, resume compatibility, data files). A failure is a :class:`JobError`: one line and the exit
code (2 bad input, 1 a fault during the run).
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import TYPE_CHECKING

from ml_collections import ConfigDict

from aggpose_jax import config as config_lib
from aggpose_jax import workdir as workdir_lib
from aggpose_jax.distributed import maybe_initialize_distributed, spec_from_env

if TYPE_CHECKING:
    from aggpose_jax.models.aggpose import ModelConfig
    from aggpose_jax.train.loop import Trainer


class JobError(Exception):
    """A job that cannot go on: ``str(err)`` is the one-line reason, ``err.code`` the exit code."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(" ".join(str(message).split()))
        self.code = code


def run(
    config: ConfigDict, workdir: str, mode: str, reference: ConfigDict | None = None, restart: bool = False
) -> None:
    """Check everything, then run ``mode`` ('train', 'eval' or 'train_and_eval') in ``workdir``."""
    try:
        spec_from_env()  # a broken AGGPOSE_* launch contract: one line, before anything starts
        model_cfg = config_lib.validate(config, reference)
        config_lib.check_paths(config)
        if mode == "eval" and not config.init_checkpoint and not workdir_lib.has_state(os.path.abspath(workdir)):
            raise ValueError(f"config.init_checkpoint: empty and no training checkpoint in {workdir}/checkpoints")
        workdir = workdir_lib.check_writable(workdir)
    except ValueError as err:
        raise JobError(str(err)) from None
    from aggpose_jax.logs import setup_logging

    setup_logging()
    maybe_initialize_distributed()
    try:
        with workdir_lib.WorkdirLock(workdir):
            if mode == "eval":
                _evaluate(config, model_cfg, workdir)
            else:
                _train(config, model_cfg, workdir, evaluate=mode == "train_and_eval", restart=restart)
    except (ValueError, FileNotFoundError) as err:
        raise JobError(str(err)) from None


def _evaluate(config: ConfigDict, model_cfg: ModelConfig, workdir: str) -> None:
    from aggpose_jax.evaluate.job import evaluate_run
    from aggpose_jax.logs import log

    workdir_lib.prepare_data(config, workdir)
    metrics = evaluate_run(config, model_cfg, workdir)
    log.info("AP %.4f; metrics in %s", metrics["AP"], os.path.join(workdir, "metrics.json"))


def _train(config: ConfigDict, model_cfg: ModelConfig, workdir: str, *, evaluate: bool, restart: bool) -> None:
    from aggpose_jax.logs import log
    from aggpose_jax.train.checkpoints import CheckpointError
    from aggpose_jax.train.loop import NonFiniteLossError, Trainer

    fresh_start = workdir_lib.check_resume(config, workdir, restart=restart)
    workdir_lib.prepare_data(config, workdir)
    trainer = Trainer(config, workdir)  # reads the data files
    if fresh_start:
        trainer.close()
        log.warning("--restart: the previous state moved to %s; training from step 0", workdir_lib.archive(workdir))
        trainer = Trainer(config, workdir)
    workdir_lib.record_config(config, workdir)
    done_before = (trainer.checkpointer.latest_step() or 0) >= trainer.total_steps
    try:
        result = trainer.fit(evaluate=evaluate)
        if done_before and not result.preempted:
            _report_complete(config, model_cfg, workdir, trainer, evaluate=evaluate)
    except (NonFiniteLossError, CheckpointError) as err:
        with contextlib.suppress(CheckpointError):
            trainer.close()
        raise JobError(str(err), code=1) from None
    try:
        trainer.close()  # waits for the last asynchronous save
    except CheckpointError as err:
        raise JobError(str(err), code=1) from None
    if result.preempted:
        log.info("preempted at step %d; rerun the same command to resume", result.step)
    elif result.metrics and not done_before:
        log.info("done: step %d, AP %.4f", result.step, result.metrics["AP"])


def _report_complete(
    config: ConfigDict, model_cfg: ModelConfig, workdir: str, trainer: Trainer, *, evaluate: bool
) -> None:
    """A rerun of a finished run: say so; evaluate the final step first if its metrics are missing."""
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
