"""Training loop: a jitted data-parallel step over a device mesh, checkpoints, evaluation.

The step (``train/step.py``) is compiled once with ``jax.jit`` over the 'data' mesh of every device
of every process (batch sharded, state replicated or FSDP-sharded, state buffers donated).
``Trainer(config, workdir).fit()`` resumes from the workdir's latest checkpoint, trains, evaluates
(``aggpose_jax.evaluate``) and saves.

Several processes (``aggpose_jax.distributed``): each process reads its own rows of every global
batch (``data/pipeline.py``) and ``sharding.global_batch`` assembles them into one global array;
parameters start identical on every process (same seed) and are placed shard by shard. Process 0
alone writes progress lines, TensorBoard scalars, metrics and pictures; Orbax writes each
checkpoint once, with every process's iterator state beside it (``train/checkpoints.py``). A
checkpoint written by N processes resumes in M: the state is resharded by Orbax and the data go on
from the saved global sample position.

Stopping: SIGTERM/SIGINT save a checkpoint and return ``preempted=True``. With several processes
JAX's preemption notifier catches SIGTERM (SIGINT is forwarded to it) and every process stops at the
same step, agreed through the coordination service without a per-step collective; the checkpoint
is then one consistent step for all.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from ml_collections import ConfigDict

from aggpose_jax import sharding as shd
from aggpose_jax import storage
from aggpose_jax.config import RunConfig, TrainSchedule, validate
from aggpose_jax.data.pipeline import make_loader, make_source
from aggpose_jax.distributed import barrier
from aggpose_jax.evaluate.job import evaluate_params
from aggpose_jax.logs import log
from aggpose_jax.model_source import run_params
from aggpose_jax.params import split_model
from aggpose_jax.train.checkpoints import TrainCheckpointer
from aggpose_jax.train.optimizer import make_optimizer
from aggpose_jax.train.progress import Progress
from aggpose_jax.train.step import make_train_step, new_state


def _preemption_notifier_active() -> bool:
    """JAX's distributed runtime runs a preemption sync manager (its C++ SIGTERM handler is in place)."""
    try:
        from jax._src import distributed

        return getattr(distributed.global_state, "preemption_sync_manager", None) is not None
    except ImportError:
        return False


class NonFiniteLossError(RuntimeError):
    """The loss (or gradient norm) became NaN/inf; the run stopped without saving that state."""


_COMPILED: dict[tuple, tuple] = {}


@dataclasses.dataclass
class FitResult:
    step: int
    preempted: bool
    metrics: dict[str, float] | None  # the last evaluation, if any


def make_sharded_step(
    run: RunConfig, mesh: jax.sharding.Mesh, schedule: TrainSchedule
) -> tuple[Any, Callable, Any, Any, Callable]:
    """(optimizer, schedule, abstract state, state shardings, jitted step) for ``run`` on ``mesh``.

    The step is ``jax.jit(step, in_shardings=(state, batch over 'data'), out_shardings=(state, replicated),
    donate_argnums=0)``; ``run.train.fsdp`` shards parameters and optimizer state over 'data'. Cached per
    configuration and device set in this process (resume, tests).
    """
    t = run.train
    key = (run.model, run.optim, run.freeze, run.seed, schedule, tuple(d.id for d in mesh.devices.flat), t.fsdp,
           t.fsdp_min_size)  # fmt: skip
    if key not in _COMPILED:
        graphdef, abstract_params, other = split_model(run.model, run.seed)
        accum = run.optim.grad_accum_steps
        tx, lr_schedule = make_optimizer(
            run.optim,
            abstract_params,
            total_updates=schedule.total_steps // accum,
            updates_per_epoch=schedule.steps_per_epoch / accum,
            freeze=run.freeze,
        )
        abstract = jax.eval_shape(functools.partial(new_state, tx, 0), abstract_params)
        state_sharding = shd.state_shardings(abstract, mesh, fsdp=t.fsdp, min_size=t.fsdp_min_size)
        step_fn = jax.jit(
            make_train_step(graphdef, other, tx, compute_params_sharding=shd.replicated(mesh) if t.fsdp else None),
            in_shardings=(state_sharding, shd.batch_sharding(mesh)),
            out_shardings=(state_sharding, shd.replicated(mesh)),
            donate_argnums=0,
        )
        _COMPILED[key] = (tx, lr_schedule, abstract, state_sharding, step_fn)
    return _COMPILED[key]


class Trainer:
    """Builds the model, optimizer, loaders and checkpoint manager for a run; ``fit()`` trains.

    ``config``: the run's ``RunConfig`` (``config.validate``); a ``ConfigDict`` is validated here, once, for
    ``workdir`` and this process's devices.

    ``batch_callback(step, local_batch)`` (tests, debugging) sees every batch before its step (``step``
    = steps done so far) and may return a replacement batch.
    """

    def __init__(
        self,
        config: RunConfig | ConfigDict,
        workdir: str,
        *,
        mesh: jax.sharding.Mesh | None = None,
        batch_callback: Callable[[int, dict], dict | None] | None = None,
    ):
        self.workdir = storage.absolute(workdir)
        self.mesh = mesh or shd.make_mesh()
        run = (
            config
            if isinstance(config, RunConfig)
            else validate(config, workdir=workdir, devices=self.mesh.devices.flat)
        )
        self.config = self.run = run
        self.model_cfg = run.model
        self.global_batch = run.train.batch.global_size
        self.batch_callback = batch_callback
        self.train_source = make_source(run.data, "train")
        self.loader = make_loader(
            self.train_source,
            keypoint_set=run.data.keypoint_set,
            data_config=run.data,
            train=True,
            batch=run.train.batch,
            seed=run.seed,
            num_epochs=None,
            worker_count=run.data.num_workers,
            prefetch=run.data.prefetch,
        )
        self.plan = TrainSchedule.of(run, len(self.train_source))
        self.steps_per_epoch, self.total_steps, self.eval_every = (
            self.plan.steps_per_epoch,
            self.plan.total_steps,
            self.plan.eval_every,
        )
        self.accum = run.optim.grad_accum_steps
        self.tx, self.schedule, abstract, self.state_sharding, self.step_fn = make_sharded_step(
            run, self.mesh, self.plan
        )
        self.abstract_state = jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, self.state_sharding
        )
        self.checkpointer = TrainCheckpointer(
            storage.join(self.workdir, "checkpoints"),
            keep=run.train.keep_checkpoints,
            async_save=run.train.async_checkpoints,
        )
        self._stop_signal: int | None = None
        self._notifier = False

    def initial_state(self) -> dict:
        """Fresh state: random / MiT / checkpoint parameters per the config, placed on the mesh."""
        params = shd.host_to_global(run_params(self.run), self.state_sharding["params"])
        init = functools.partial(new_state, self.tx, self.run.seed)
        return jax.jit(init, out_shardings=self.state_sharding)(params)

    def restore_or_init(self, iterator: Any) -> dict:
        restored = self.checkpointer.restore_latest(self.abstract_state, iterator)
        if restored is None:
            return self.initial_state()
        log.info("resumed from %s at step %d", self.checkpointer.directory, restored.step)
        log.info("%s", restored.data_position)
        return restored.state

    def learning_rate(self, step: int) -> float:
        return float(self.schedule(step // self.accum))

    # ------------------------------------------------------------------ loop

    def _on_signal(self, signum: int, frame: Any) -> None:
        del frame
        self._stop_signal = signum

    def _forward_to_notifier(self, signum: int, frame: Any) -> None:
        """Multi-process SIGINT: hand it to JAX's preemption notifier as SIGTERM (one agreed stop step)."""
        del frame
        self._stop_signal = signum
        os.kill(os.getpid(), signal.SIGTERM)

    def _install_signal_handlers(self) -> dict[int, Any]:
        """Returns the replaced handlers. Single process: SIGTERM/SIGINT set a flag. Several processes with
        JAX's preemption notifier (it owns SIGTERM): SIGINT is forwarded to it."""
        self._notifier = jax.process_count() > 1 and _preemption_notifier_active()
        if threading.current_thread() is not threading.main_thread():  # signal handlers: main thread only
            return {}
        if self._notifier:
            return {signal.SIGINT: signal.signal(signal.SIGINT, self._forward_to_notifier)}
        return {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}

    def _stop_requested(self, step: int) -> bool:
        """A signal arrived (SIGTERM/SIGINT) or the JAX runtime reached a preemption sync point (several
        processes: all return True at the same step). Without JAX's notifier the processes' signal flags
        are combined every 10 steps instead, so that all stop at the same step."""
        if self.checkpointer.reached_preemption(step):
            if self._stop_signal is None:
                self._stop_signal = signal.SIGTERM
            return True
        if jax.process_count() == 1:
            return self._stop_signal is not None
        if self._notifier or step % 10:
            return False
        from jax.experimental import multihost_utils

        flags = multihost_utils.process_allgather(np.int32(self._stop_signal is not None))
        return bool(np.any(flags))

    def _flush(self, pending: list[tuple[int, dict]]) -> tuple[float, float]:
        """Fetch pending step metrics; raise on a non-finite value. Returns (mean loss, last grad norm)."""
        if not pending:
            return float("nan"), float("nan")
        host = jax.device_get([m for _, m in pending])
        for (step, _), m in zip(pending, host):
            if not (np.isfinite(m["loss"]) and np.isfinite(m["grad_norm"])):
                last = self.checkpointer.latest_step()
                raise NonFiniteLossError(
                    f"non-finite loss at step {step} (loss={float(m['loss'])}, grad_norm={float(m['grad_norm'])}); "
                    f"stopped without saving this state; last good checkpoint: "
                    f"{'step ' + str(last) if last is not None else 'none'} in {self.checkpointer.directory}. "
                    f"Lower config.optim.lr, set config.optim.grad_clip_norm, or check the data."
                )
        pending.clear()
        return float(np.mean([m["loss"] for m in host])), float(host[-1]["grad_norm"])

    def _executable(self, state: dict, batch: dict) -> Callable:
        """The step to run. Several processes: compiled ahead of time, then all processes meet at a barrier, so
        that the step's first collectives start together however long each process took to compile (process 0
        may load it from the persistent cache while the others compile)."""
        if jax.process_count() == 1 or not hasattr(self.step_fn, "lower"):
            return self.step_fn
        compiled = self.step_fn.lower(state, batch).compile()
        barrier("train_step_compiled")
        return compiled

    def evaluate(self, state: dict, step: int) -> dict[str, float]:
        return evaluate_params(self.run, self.model_cfg, state["params"], self.workdir, step, mesh=self.mesh)

    def fit(self, *, evaluate: bool = True) -> FitResult:
        """Train to ``total_steps``, resuming from the workdir's latest checkpoint if there is one (else
        from ``initial_state``). ``evaluate``: every ``eval_every`` steps and at the end. SIGTERM/SIGINT
        save a checkpoint and return with ``preempted=True``."""
        cfg = self.config.train
        iterator = iter(self.loader)
        state = self.restore_or_init(iterator)
        step = int(jax.device_get(state["step"]))
        progress = Progress(self.workdir, self.total_steps, self.global_batch)
        previous = self._install_signal_handlers()
        pending: list[tuple[int, dict]] = []
        last_metrics: dict[str, float] | None = None
        log.info(
            "training %s: %d steps (%d per epoch), global batch %d on %d devices in %d process(es)%s, from step %d",
            self.run.model_name,
            self.total_steps,
            self.steps_per_epoch,
            self.global_batch,
            self.mesh.devices.size,
            jax.process_count(),
            ", FSDP" if cfg.fsdp else "",
            step,
        )
        run = None
        try:
            progress.start(step)
            t_compile = time.perf_counter()
            while step < self.total_steps:
                if self._stop_requested(step):
                    self._flush(pending)
                    self.checkpointer.save(step, state, iterator)
                    self.checkpointer.wait()
                    log.info(
                        "stop requested (signal %s): saved step %d to %s; exiting",
                        self._stop_signal,
                        step,
                        self.checkpointer.directory,
                    )
                    return FitResult(step, True, last_metrics)
                try:
                    batch = next(iterator)
                except Exception:
                    if self._stop_signal is None or jax.process_count() > 1:
                        raise
                    # An input worker that took the stop signal itself (the workers leave stopping to this
                    # process, see data/pipeline.py): stop as asked, at the last step done.
                    continue
                if self.batch_callback is not None:
                    batch = self.batch_callback(step, batch) or batch
                batch = shd.global_batch(batch, self.mesh)
                if run is None:
                    run = self._executable(state, batch)
                state, metrics = run(state, batch)
                step += 1
                pending.append((step, metrics))
                if t_compile is not None:  # first step: report compilation separately from the rate
                    jax.block_until_ready(metrics)
                    log.info("first step (compilation included) took %.1fs", time.perf_counter() - t_compile)
                    t_compile = None
                    progress.start(step)
                do_eval = evaluate and (step == self.total_steps or (self.eval_every and step % self.eval_every == 0))
                do_save = (
                    do_eval
                    or step == self.total_steps
                    or (cfg.checkpoint_every_steps and step % int(cfg.checkpoint_every_steps) == 0)
                )
                if do_save or step % int(cfg.log_every_steps) == 0:
                    loss, gnorm = self._flush(pending)
                    progress.report(step, loss, self.learning_rate(step - 1), {"grad_norm": gnorm})
                eval_metrics = None
                if do_eval:
                    eval_metrics = last_metrics = self.evaluate(state, step)
                    progress.scalars(step, {f"eval/{k}": v for k, v in eval_metrics.items()})
                    progress.start(step)
                if do_save:
                    self.checkpointer.save(step, state, iterator, eval_metrics)
            self.checkpointer.wait()
            return FitResult(step, False, last_metrics)
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler if handler is not None else signal.SIG_DFL)
            self.checkpointer.wait()
            iterator.close()
            progress.close()
            self.state = state

    def close(self) -> None:
        self.checkpointer.close()


__all__ = ["NonFiniteLossError", "FitResult", "Trainer"]
