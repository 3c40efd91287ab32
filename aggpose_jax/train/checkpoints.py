"""Training checkpoints: Orbax ``CheckpointManager`` over the train state and the input iterator.

Each step directory holds two items: ``state`` (params, optimizer state, step, RNG key data; a
pytree of arrays, saved asynchronously) and ``data`` (every process's Grain iterator state as
``process_<i>-of-<n>.json``, as MaxText does). Preservation: the last ``keep`` checkpoints plus
the best one by ``AP`` among those saved with evaluation metrics.

``restore_latest`` walks back from the newest step: a checkpoint that fails to restore is moved
to ``<directory>_corrupt/`` with a warning and the previous one is tried.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import warnings
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as ocm

log = logging.getLogger(__name__)


class CorruptCheckpointWarning(UserWarning):
    """A checkpoint could not be restored and was skipped."""


class _NoMetricsWarningFilter(logging.Filter):
    """Orbax warns on every save without metrics once metrics are tracked; most saves have none."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "did not provide metrics" not in record.getMessage()


logging.getLogger("absl").addFilter(_NoMetricsWarningFilter())


class TrainCheckpointer:
    """Save/restore ``(state pytree, data iterator)`` pairs under ``directory``."""

    def __init__(self, directory: str, *, keep: int = 3, async_save: bool = True, best_metric: str = "AP"):
        self.directory = os.path.abspath(directory)
        self.best_metric = best_metric
        policy = ocm.AnyPreservationPolicy(
            [
                ocm.LatestN(n=int(keep)),
                ocm.BestN(get_metric_fn=lambda m: float(m[best_metric]), n=1, keep_checkpoints_without_metrics=False),
            ]
        )
        # best_fn only makes Orbax persist the metrics (so that 'best' survives restarts); retention is
        # decided by the preservation policy.
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policy,
            best_fn=lambda m: float(m[best_metric]),
            best_mode="max",
            enable_async_checkpointing=bool(async_save),
            create=True,
            cleanup_tmp_directories=True,
        )
        self.manager = ocp.CheckpointManager(self.directory, item_names=("state", "data"), options=options)

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def best_step(self) -> int | None:
        """The preserved step with the highest ``best_metric`` (None before any evaluation)."""
        scored = [
            (float(m[self.best_metric]), step)
            for step in self.manager.all_steps()
            if (m := self.manager.metrics(step)) and self.best_metric in m
        ]
        return max(scored)[1] if scored else None

    def save(self, step: int, state: Any, data_iterator: Any, metrics: dict[str, float] | None = None) -> None:
        """Start saving (asynchronous for ``state``); the iterator state is captured now."""
        if step in self.manager.all_steps():  # e.g. the final step was already saved by the periodic save
            return
        clean = None if metrics is None else {k: float(v) for k, v in metrics.items()}
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(data_iterator)
        )
        self.manager.save(int(step), args=args, metrics=clean, force=True)

    def restore(self, step: int, abstract_state: Any, data_iterator: Any) -> Any:
        args = ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=grain.checkpoint.CheckpointRestore(data_iterator)
        )
        return self.manager.restore(int(step), args=args).state

    def restore_latest(self, abstract_state: Any, data_iterator: Any) -> tuple[int, Any] | None:
        """(step, state) of the newest checkpoint that restores (the iterator is restored in place);
        None when there is none. Unreadable checkpoints are moved aside with a warning."""
        self.manager.wait_until_finished()
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                return step, self.restore(step, abstract_state, data_iterator)
            except Exception as err:  # noqa: BLE001 -- orbax/tensorstore raise many types
                first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
                moved = self._move_aside(step)
                warnings.warn(
                    f"checkpoint step {step} in {self.directory} could not be restored "
                    f"({type(err).__name__}: {first}); moved to {moved}; trying the previous one",
                    CorruptCheckpointWarning,
                    stacklevel=2,
                )
        return None

    def _move_aside(self, step: int) -> str:
        src = os.path.join(self.directory, str(step))
        dest = os.path.join(self.directory + "_corrupt", f"{step}-{int(time.time())}")
        if jax.process_index() == 0 and os.path.exists(src):
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            shutil.move(src, dest)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"aggpose_corrupt_checkpoint_{step}")
        self.manager.reload()
        return dest

    def reached_preemption(self, step: int) -> bool:
        """True when the JAX distributed runtime reports a preemption notice (multi-host)."""
        return bool(self.manager.reached_preemption(int(step)))

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def restore_params(directory: str, abstract_params: Any, *, which: str = "latest") -> tuple[int, Any]:
    """(step, params) of the ``which`` ('latest' or 'best') checkpoint under ``directory``, read-only.

    Only the parameters are read (no optimizer state, no data iterator). Host-local arrays, placed on
    the first local device.
    """
    if which not in ("latest", "best"):
        raise ValueError(f"which: must be 'latest' or 'best', got {which!r}")
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{directory}: no training checkpoints (the folder does not exist)")
    options = ocp.CheckpointManagerOptions(read_only=True, create=False)
    with ocp.CheckpointManager(directory, item_names=("state", "data"), options=options) as manager:
        step = manager.latest_step()
        if which == "best":
            scored = [(float(m["AP"]), s) for s in manager.all_steps() if (m := manager.metrics(s)) and "AP" in m]
            step = max(scored)[1] if scored else None
        if step is None:
            raise FileNotFoundError(f"{directory}: no {'evaluated ' if which == 'best' else ''}training checkpoint")
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        target = {
            "params": jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device), abstract_params)
        }
        restore = ocp.args.PyTreeRestore(
            target, restore_args=ocp.checkpoint_utils.construct_restore_args(target), partial_restore=True
        )
        state = manager.restore(step, args=ocp.args.Composite(state=restore)).state
    return int(step), state["params"]


__all__ = ["CorruptCheckpointWarning", "TrainCheckpointer", "restore_params"]
