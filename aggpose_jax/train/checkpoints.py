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
``CheckpointError``. Orbax/TensorStore error output during restore attempts, and asyncio errors of Orbax's
background event loops at any time, go to ``<workdir>/logs/checkpoint_restore.log``, not the console
(``_restore_output``: safe with background threads). A restore returns what happened (``Restored``). A
failed save (disk full, permission) raises ``CheckpointError`` and leaves the previous checkpoints as they
were.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gc
import json
import logging
import math
import os
import sys
import threading
import time
import traceback
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging as absl_logging
from etils import epath
from orbax.checkpoint import checkpoint_managers as ocm

from aggpose_jax import storage
from aggpose_jax.distributed import barrier
from aggpose_jax.errors import TrainCheckpointError as CheckpointError  # the package's one error hierarchy
from aggpose_jax.errors import one_line

log = logging.getLogger(__name__)


# ---- the restore's console output ---------------------------------------------------------------------------
# A failed restore attempt makes Orbax and TensorStore write: C++ log lines on file descriptor 2, absl
# warnings, and asyncio errors of Orbax's background event loops ("Task exception was never retrieved",
# "Event loop is closed"), some of them only when a task is garbage-collected, in whatever thread and at
# whatever time that happens. Swapping ``sys.stderr`` for the log file raced with those threads: under load
# they wrote to the closed file after the swap ended and printed tracebacks of their own. Now nothing
# process-wide is swapped in Python: fd 2 is pointed at the log file during the attempts (``os.dup2`` is
# atomic and fd 2 always names an open file), and the asyncio errors and unraisable-exception reports of
# those background loops go to the log file at any time, through a logging handler and a filtering
# ``sys.unraisablehook`` that open the file per record (nothing to be closed under a writing thread).

_REDIRECT_LOCK = threading.Lock()


class _BackgroundLog(logging.Handler):
    """Appends each record to ``path`` (the newest checkpointer's restore log), opening the file per record."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.path: str | None = None

    def write(self, text: str) -> None:
        path = self.path
        if path is None:
            return
        # A log file that cannot be written loses the record: it must never come back to the console.
        with contextlib.suppress(OSError):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "a", encoding="utf-8") as f:
                f.write(text if text.endswith("\n") else text + "\n")

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):  # a handler must not raise
            self.write(f"{record.levelname}:{record.name}: {self.format(record)}")


_BACKGROUND_LOG = _BackgroundLog()
_NOISY_FILES = (f"{os.sep}asyncio{os.sep}", f"{os.sep}orbax{os.sep}", "tensorstore")


def _from_background_io(unraisable: Any) -> bool:
    """An unraisable exception of Orbax's asyncio machinery (a coroutine or task collected after its loop closed)."""
    text = repr(getattr(unraisable, "object", "")) + str(getattr(unraisable, "err_msg", "") or "")
    if "coroutine" in text or "Task" in text or "asyncio" in text:
        return True
    tb = getattr(unraisable, "exc_traceback", None)
    files = [frame.f_code.co_filename for frame, _ in traceback.walk_tb(tb)] if tb is not None else []
    return any(noisy in f for f in files for noisy in _NOISY_FILES)


def _route_background_output(log_path: str) -> None:
    """From now on asyncio errors and unraisable reports of Orbax's background loops go to ``log_path``."""
    _BACKGROUND_LOG.path = log_path
    asyncio_log = logging.getLogger("asyncio")
    if _BACKGROUND_LOG not in asyncio_log.handlers:
        asyncio_log.addHandler(_BACKGROUND_LOG)
        asyncio_log.propagate = False  # only Orbax's internal event loops run asyncio in this package
    if getattr(sys.unraisablehook, "_aggpose", False):
        return
    previous = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        if _BACKGROUND_LOG.path is not None and _from_background_io(unraisable):
            lines = traceback.format_exception(unraisable.exc_type, unraisable.exc_value, unraisable.exc_traceback)
            _BACKGROUND_LOG.write(
                f"{unraisable.err_msg or 'Exception ignored in'}: {unraisable.object!r}\n" + "".join(lines)
            )
        else:
            previous(unraisable)

    hook._aggpose = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


@contextlib.contextmanager
def _restore_output(log_path: str) -> Iterator[Any]:
    """File descriptor 2 (C++ TensorStore/absl lines, and Python's stderr where it is fd 2) goes to ``log_path``
    during the block; yields the log file opened for the caller's own details. ``sys.stderr`` is left alone."""
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    with _REDIRECT_LOCK, open(log_path, "a", encoding="utf-8") as sink:
        sink.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} restore (pid {os.getpid()})\n")
        sink.flush()
        sys.stderr.flush()
        saved_fd = os.dup(2)
        os.dup2(sink.fileno(), 2)
        try:
            yield sink
        finally:
            gc.collect()  # unretrieved asyncio task errors are reported when collected: now, into the log
            sink.flush()
            try:
                sys.stderr.flush()  # Python text buffered meanwhile belongs to the log
            except (OSError, ValueError):
                pass
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


# ---- the one workaround around Orbax's defaults ----------------------------------------------------------------
_REPLICA_SLICE_MIN_BYTES = 256 * 1024


@functools.cache
def _write_small_arrays_from_one_replica() -> None:
    """Register an ``ArrayHandler`` that splits only replicated arrays of >= 256 KiB between the replicas.

    Why: by default Orbax splits every replicated array into one slice per replica so that the replicas share
    the writing; each distinct slice shape costs a compiled slice op, ~25 s on the first save of the tiny test
    model on 8 CPU devices. Large arrays (e.g. AggPose-L's kernels) are still split; smaller ones are written
    whole by one replica. The handler class and its ``min_slice_bytes_for_replica_parallel`` argument are
    public (``ocp.type_handlers``; the class is defined in Orbax's private ``_src`` tree, which is not
    imported here); registering it replaces the handler of ``jax.Array`` for the whole process, for every save.
    """
    handler = ocp.type_handlers.ArrayHandler(min_slice_bytes_for_replica_parallel=_REPLICA_SLICE_MIN_BYTES)
    level = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.ERROR)  # its "overriding jax.Array" warning: intended
    try:
        ocp.type_handlers.register_type_handler(jax.Array, handler, override=True)
    finally:
        absl_logging.set_verbosity(level)


BEST_METRIC = "AP"


def best_step(
    metrics_by_step: Iterable[tuple[int | None, Mapping[str, Any] | None]], metric: str = BEST_METRIC
) -> int | None:
    """The step with the highest ``metric`` (the later step on a tie; NaN never counts), None when no step has
    one: the one rule behind a workdir's 'best' checkpoint and the 'best' entry of its metrics.json."""
    scored = [(_score(m, metric), int(step)) for step, m in metrics_by_step if step is not None and m and metric in m]
    scored = [(value, step) for value, step in scored if value > -math.inf]
    return max(scored)[1] if scored else None


def _best_saved(manager: ocp.CheckpointManager, metric: str = BEST_METRIC) -> int | None:
    """:func:`best_step` among the steps ``manager`` holds, from the metrics saved with them."""
    return best_step(((s, manager.metrics(s)) for s in manager.all_steps()), metric)


def _score(metrics: Mapping[str, Any], metric: str) -> float:
    """``metrics[metric]`` as a float; a NaN never ranks above anything (-inf)."""
    value = float(metrics[metric])
    return -math.inf if math.isnan(value) else value


@dataclasses.dataclass(frozen=True)
class Restored:
    """What a restore did: the step and state resumed from, how the data position was restored (one line),
    and where unreadable newer checkpoints were set aside (``restore_latest``)."""

    step: int
    state: Any
    data_position: str
    set_aside: tuple[str, ...] = ()


class TrainCheckpointer:
    """Save/restore ``(state pytree, data iterator)`` pairs under ``directory``."""

    def __init__(self, directory: str, *, keep: int = 3, async_save: bool = True, best_metric: str = BEST_METRIC):
        self.directory = storage.absolute(directory)
        self.best_metric = best_metric
        # Orbax's and TensorStore's own messages during a restore go to this file (a local one: the output
        # of fd 2 is pointed at it); for a gs:// workdir, in the local folder that stands for it.
        logs = storage.join(storage.dirname(self.directory), "logs")
        self.restore_log = os.path.join(storage.local_folder(logs), "checkpoint_restore.log")
        _route_background_output(self.restore_log)
        _write_small_arrays_from_one_replica()
        policy = ocm.AnyPreservationPolicy(
            [
                ocm.LatestN(n=int(keep)),
                ocm.BestN(get_metric_fn=lambda m: _score(m, best_metric), n=1, keep_checkpoints_without_metrics=False),
            ]
        )
        # best_fn only makes Orbax persist the metrics (so that 'best' survives restarts); retention is
        # decided by the preservation policy. BestN keeps the later step on a tie, as best_step chooses.
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policy,
            best_fn=lambda m: _score(m, best_metric),
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
        return _best_saved(self.manager, self.best_metric)

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

    def restore(self, step: int, abstract_state: Any, data_iterator: Any) -> Restored:
        """The state of ``step``; ``data_iterator`` is put at the saved data position (``restore_data_position``)."""
        args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), data=DataRestore())
        restored = self.manager.restore(int(step), args=args)
        position = restore_data_position(restored.data, data_iterator, int(step))
        return Restored(int(step), restored.state, position)

    def restore_latest(self, abstract_state: Any, data_iterator: Any) -> Restored | None:
        """The newest readable checkpoint (the iterator is restored in place); None when there is none. See the
        module docstring for unreadable and incompatible checkpoints."""
        self.manager.wait_until_finished()
        steps = sorted(self.manager.all_steps(), reverse=True)
        set_aside: list[str] = []
        for step in steps:
            problem = None
            with _restore_output(self.restore_log) as details:
                try:
                    with ocp.StandardCheckpointer() as reader:
                        stored = reader.metadata(storage.join(self.directory, str(step), "state"))
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
                        restored = self.restore(step, abstract_state, data_iterator)
                        return dataclasses.replace(restored, set_aside=tuple(set_aside))
                    except Exception as err:  # noqa: BLE001
                        problem = err
                traceback.print_exception(problem, file=details)
            moved = self._move_aside(step)
            set_aside.append(moved)
            log.warning(one_line(f"checkpoint step {step} is unreadable ({type(problem).__name__}); set aside as "
                                 f"{moved}; details in {self.restore_log}", limit=200))  # fmt: skip
        if steps:
            raise CheckpointError(
                f"none of the {len(steps)} checkpoints in {self.directory} can be read (set aside in "
                f"{self.directory}_unreadable/); rerun with --restart to start from step 0"
            )
        return None

    def _move_aside(self, step: int) -> str:
        src = storage.join(self.directory, str(step))
        dest = storage.join(self.directory + "_unreadable", f"{step}-{time.strftime('%Y%m%dT%H%M%S')}")
        if jax.process_index() == 0 and storage.exists(src):
            storage.rename(src, dest)  # on Cloud Storage a copy, then the deletion of the source
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


WHICH = ("latest", "best")


def check_which(which: str) -> None:
    """``ValueError`` unless ``which`` names a workdir's checkpoint: 'latest' or 'best'."""
    if which not in WHICH:
        raise ValueError(f"which: must be 'latest' or 'best', got {which!r}")


def restore_params(directory: str, abstract_params: Any, *, which: str = "latest") -> tuple[int, Any]:
    """(step, params) of the ``which`` ('latest' or 'best') checkpoint under ``directory``, read-only.

    Only the parameters are read (no optimizer state, no data iterator). Host-local arrays, placed on
    the first local device.
    """
    check_which(which)
    if not storage.isdir(directory):
        raise FileNotFoundError(f"{directory}: no training checkpoints (the folder does not exist)")
    options = ocp.CheckpointManagerOptions(read_only=True, create=False)
    with ocp.CheckpointManager(directory, item_names=("state", "data"), options=options) as manager:
        step = manager.latest_step() if which == "latest" else _best_saved(manager)
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


__all__ = [
    "BEST_METRIC",
    "WHICH",
    "CheckpointError",
    "Restored",
    "DataHandler",
    "DataRestore",
    "DataSave",
    "TrainCheckpointer",
    "best_step",
    "check_which",
    "restore_data_position",
    "restore_params",
]
