"""Training checkpoints: Orbax ``CheckpointManager`` over the train state and the input iterator.

Each step directory holds two items: ``state`` (params, optimizer state, step, RNG key data; a
pytree of arrays, saved asynchronously) and ``data``: every process's input-iterator state as
``process_<i>-of-<n>.json`` (as MaxText does) and, from process 0, ``position.json``: the global
sample position (``samples_seen`` = samples of the global stream consumed by all processes together,
with the global batch, process and worker counts it was read with). Preservation: the last ``keep``
checkpoints plus the best one by ``AP`` among those saved with evaluation metrics.

Data position on resume (``restore_data_position``): with the same process count, worker count and
global batch, every process restores its own iterator state: exact, skipped records included. With
another process count M (or worker count, or global batch), the per-process states do not apply;
every process rebuilds its pipeline at the saved global sample position instead, so the run goes on
with the global batches an uninterrupted run would have read (``data/pipeline.py``: the global
stream does not depend on the process count). Only the one-sample shifts that skipped (unreadable)
images caused on some process are not carried over.

``restore_latest`` tells three cases apart. Missing (no checkpoint): None, a fresh start. Incompatible
(readable, but its arrays do not fit the configured state): ``CheckpointError``, nothing is touched.
Unreadable (truncated or deleted files): the step folder is renamed into ``<directory>_unreadable/``
(never deleted) with one warning line, and the previous step is tried; when none can be read,
``CheckpointError``. Orbax/TensorStore error output during restore attempts goes to
``<workdir>/logs/checkpoint_restore.log``, not the console. A failed save (disk full, permission)
raises ``CheckpointError`` and leaves the previous checkpoints as they were.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import logging
import os
import sys
import time
import traceback
from collections.abc import Iterator
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint import checkpoint_managers as ocm

from aggpose_jax.distributed import barrier
from aggpose_jax.errors import TrainCheckpointError as CheckpointError  # the package's one error hierarchy

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _console_to(log_path: str) -> Iterator[Any]:
    """Send everything written to stderr (Python and C++: asyncio, TensorStore, absl) to ``log_path``;
    yields the open log file."""
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    sys.stderr.flush()
    saved_fd, saved_stream = os.dup(2), sys.stderr
    with open(log_path, "a", encoding="utf-8") as sink:
        sink.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} restore (pid {os.getpid()})\n")
        sink.flush()
        os.dup2(sink.fileno(), 2)
        sys.stderr = sink
        try:
            yield sink
        finally:
            gc.collect()  # unretrieved asyncio task errors are reported when collected: here, into the file
            sink.flush()
            sys.stderr = saved_stream
            os.dup2(saved_fd, 2)
            os.close(saved_fd)


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    """'a/0/b' -> shape for every leaf (stored metadata turns tuples and named tuples into dicts: keys are
    compared as plain strings)."""
    out = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        names = [str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path]
        out["/".join(names)] = tuple(getattr(leaf, "shape", ()))
    return out


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
        self.restore_log = os.path.join(os.path.dirname(self.directory), "logs", "checkpoint_restore.log")
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
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), data=DataSave(data_iterator, int(step)))
        with self._write_errors(step):
            self.manager.save(int(step), args=args, metrics=clean, force=True)

    @contextlib.contextmanager
    def _write_errors(self, step: int | None) -> Iterator[None]:
        """A failed write (disk full, permission, ...) as one ``CheckpointError`` line; Orbax writes into a
        temporary folder and renames it only when complete, so earlier checkpoints stay intact."""
        try:
            yield
        except OSError as err:
            what = f"step {step}" if step is not None else "a checkpoint"
            last = [s for s in self.manager.all_steps() if s != step]
            kept = f"the last complete one is step {max(last)}" if last else "no earlier checkpoint"
            raise CheckpointError(
                f"writing {what} to {self.directory} failed ({err.strerror or err}); {kept}; free space or fix "
                f"permissions, then rerun to resume"
            ) from None

    def restore(self, step: int, abstract_state: Any, data_iterator: Any) -> Any:
        """The state of ``step``; ``data_iterator`` is put at the saved data position (``restore_data_position``)."""
        args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), data=DataRestore())
        restored = self.manager.restore(int(step), args=args)
        self.data_position = restore_data_position(restored.data, data_iterator, int(step))
        return restored.state

    def restore_latest(self, abstract_state: Any, data_iterator: Any) -> tuple[int, Any] | None:
        """(step, state) of the newest readable checkpoint (the iterator is restored in place); None when
        there is none. See the module docstring for unreadable and incompatible checkpoints."""
        self.manager.wait_until_finished()
        steps = sorted(self.manager.all_steps(), reverse=True)
        for step in steps:
            problem = None
            with _console_to(self.restore_log) as details:
                try:
                    with ocp.StandardCheckpointer() as reader:
                        stored = reader.metadata(os.path.join(self.directory, str(step), "state"))
                    stored = _shapes(getattr(stored, "item_metadata", stored))
                    if not stored:
                        raise ValueError("the state metadata lists no arrays")
                except Exception as err:  # noqa: BLE001 -- orbax/tensorstore raise many types
                    stored, problem = {}, err
                wanted = _shapes(abstract_state)
                if stored and stored != wanted:
                    differ = sorted(k for k in set(stored) | set(wanted) if stored.get(k) != wanted.get(k))
                    raise CheckpointError(
                        f"checkpoint step {step} in {self.directory} does not fit the configured model/optimizer "
                        f"({len(differ)} arrays differ, e.g. {differ[0]}); use a new --workdir, or --restart"
                    )
                if problem is None:
                    try:
                        return step, self.restore(step, abstract_state, data_iterator)
                    except Exception as err:  # noqa: BLE001
                        problem = err
                traceback.print_exception(problem, file=details)
            moved = self._move_aside(step)
            log.warning(_one_line(f"checkpoint step {step} is unreadable ({type(problem).__name__}); set aside as "
                                  f"{moved}; details in {self.restore_log}"))  # fmt: skip
        if steps:
            raise CheckpointError(
                f"none of the {len(steps)} checkpoints in {self.directory} can be read (set aside in "
                f"{self.directory}_unreadable/); rerun with --restart to start from step 0"
            )
        return None

    def _move_aside(self, step: int) -> str:
        src = os.path.join(self.directory, str(step))
        dest = os.path.join(self.directory + "_unreadable", f"{step}-{time.strftime('%Y%m%dT%H%M%S')}")
        if jax.process_index() == 0 and os.path.exists(src):
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            os.rename(src, dest)
        barrier(f"unreadable_checkpoint_{step}")
        self.manager.reload()
        return dest

    def reached_preemption(self, step: int) -> bool:
        """True when the JAX distributed runtime reports a preemption notice (multi-host)."""
        return bool(self.manager.reached_preemption(int(step)))

    def wait(self) -> None:
        with self._write_errors(None):
            self.manager.wait_until_finished()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self.manager.close()


POSITION_FILE = "position.json"
_LAYOUT = ("process_count", "worker_count", "global_batch")


def _process_file(directory: epath.Path) -> epath.Path:
    return directory / f"process_{jax.process_index()}-of-{jax.process_count()}.json"


class DataHandler(ocp.CheckpointHandler):
    """Orbax handler of the ``data`` item: this process's iterator state, and on process 0 the global position."""

    def save(self, directory: epath.Path, args: DataSave) -> None:
        iterator = args.iterator
        _process_file(directory).write_text(json.dumps(iterator.get_state(), indent=1))
        if jax.process_index() == 0:
            position = {"format": 1, "step": int(args.step), "process_count": jax.process_count()}
            if hasattr(iterator, "position"):
                position.update(iterator.position())
            (directory / POSITION_FILE).write_text(json.dumps(position, indent=1, sort_keys=True))

    def restore(self, directory: epath.Path, args: DataRestore | None = None) -> dict[str, Any]:
        """{'state': this process's iterator state or None, 'position': the global position or None, 'files'}."""
        del args
        own, position = _process_file(directory), directory / POSITION_FILE
        return {
            "state": json.loads(own.read_text()) if own.exists() else None,
            "position": json.loads(position.read_text()) if position.exists() else None,
            "files": sorted(p.name for p in directory.iterdir()),
        }

    def metadata(self, directory: epath.Path) -> None:
        del directory

    def finalize(self, directory: epath.Path) -> None:
        del directory

    def close(self) -> None:
        pass

    @classmethod
    def typestr(cls) -> str:
        return f"{cls.__module__}.{cls.__qualname__}"


@ocp.args.register_with_handler(DataHandler, for_save=True)
@dataclasses.dataclass
class DataSave(ocp.args.CheckpointArgs):
    iterator: Any  # get_state() -> JSON-able; optional position() -> dict (pipeline.LoaderIterator)
    step: int = 0


@ocp.args.register_with_handler(DataHandler, for_restore=True)
@dataclasses.dataclass
class DataRestore(ocp.args.CheckpointArgs):
    pass


def restore_data_position(saved: dict[str, Any], iterator: Any, step: int) -> str:
    """Put ``iterator`` at the data position of a restored ``data`` item; returns what was done, one line.

    'exact ...': this process's own saved state (same process count, and the same worker count and global
    batch where the iterator reports them). '... re-derived ...': the iterator (it must have ``seek``) is
    rebuilt at the saved global sample position. ``ValueError`` when neither is possible.
    """
    state, position = saved.get("state"), saved.get("position")
    now = iterator.position() if hasattr(iterator, "position") else {}
    same = all(position.get(k) == now[k] for k in _LAYOUT if k in now and k in position) if position else True
    if state is not None and same:
        iterator.set_state(state)
        return f"data position of step {step}: each process's saved iterator state"
    if position is not None and "samples_seen" in position and hasattr(iterator, "seek"):
        seen = int(position["samples_seen"])
        iterator.seek(seen)
        epoch = position.get("epoch_size") or 0
        return (
            f"data position of step {step} re-derived: written by {position.get('process_count')} process(es) "
            f"(workers {position.get('worker_count')}, global batch {position.get('global_batch')}), read by "
            f"{jax.process_count()}; continuing at global sample {seen}"
            + (f" (epoch {seen / epoch:.3f})" if epoch else "")
        )
    raise ValueError(
        f"step {step}: no input-iterator state for process {jax.process_index()} of {jax.process_count()} "
        f"(saved: {', '.join(saved.get('files', [])) or 'nothing'}) and no global position to continue from"
    )


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


def _one_line(text: str, limit: int = 200) -> str:
    """``text`` on one line of at most ``limit`` characters (long paths shortened in the middle)."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit // 2 - 2] + "..." + text[-(limit // 2 - 1) :]


__all__ = [
    "CheckpointError",
    "DataHandler",
    "DataRestore",
    "DataSave",
    "TrainCheckpointer",
    "restore_data_position",
    "restore_params",
]
