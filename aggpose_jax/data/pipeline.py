"""Grain input pipelines: sources -> shuffle -> decode/augment -> this process's rows -> batches.

Built on Grain's ``MapDataset``/``IterDataset`` API (not ``grain.DataLoader``) because the whole
random-access part (the seeded per-epoch shuffle, per-record seeded augmentation, repeat, the
process's rows) is a pure function of the element index, and the iterator's
``get_state``/``set_state`` is a few integers (per worker) that restore exactly, also with worker
processes.

Order of operations (train):

    source.shuffle(seed)                      one global permutation per epoch (seed + epoch)
      .map(DecodeImage)                       corrupt/missing images: image None (kept, marked)
      .random_map(TrainTransform, seed+1)     rng from (seed + 1, global position): reproducible;
                                              an undecodable record becomes a placeholder row marked
                                              ``DECODED`` False (``_MarkDecoded``)
      .repeat(num_epochs)                     the global sample stream; None = forever
      -> rows of process i                    global batch b = stream[b*G, (b+1)*G); process i takes
                                              its rows [i*L, (i+1)*L) (G global, L = G / N local batch)
      .to_iter_dataset().batch(L)
      .mp_prefetch(worker_count)              batches are made inside the workers (shared memory)
      -> LoaderIterator                       drops the marked rows in stream order, re-cuts full batches

So the global batches, their augmentation included, are the same whatever the process count N and
the worker count: process i's shard is disjoint from the others' and together they cover every
epoch. With W worker processes, Grain gives worker w the local indices w, w+W, ...; the row mapping
accounts for that, so worker w builds local batches w, w+W, ... and the interleaved output is in
order. ``Loader.iterator(start_sample)`` starts the stream at any global sample position: that is how
a checkpoint written by N processes resumes in M (``train/checkpoints.py``).

Eval: no shuffle or augmentation, one pass over ``source[shard_index::shard_count]``,
``batch_and_pad``: every batch has ``batch_size`` rows and a boolean ``valid`` column (False on
padding rows). With W worker processes each worker batches its own slice, so up to W batches (each
worker's last) may be partly padding.

Worker processes are started with ``spawn``: a script that uses ``worker_count > 0`` needs an
``if __name__ == "__main__":`` guard (as any ``multiprocessing`` program), and its source must be
picklable (the COCO and TFDS sources are). Each worker runs OpenCV single-threaded and keeps
freed buffers in its heap (see ``keep_freed_buffers_in_heap``). Workers leave stopping to the main
process: they never act on SIGTERM/SIGINT (``_stop_signals_blocked``), so a signal to the whole
process group (``timeout``, SLURM, systemd, Ctrl-C) reaches the main process alone, which saves and
then shuts the workers down.

Skipped records: samples whose image is missing or undecodable are dropped (eval: before batching;
train: by ``LoaderIterator`` after the workers' batches are interleaved, so the result does not depend
on the worker count), so a batch never contains them and an epoch is correspondingly shorter (the
process that meets one takes the next row of its own share: its later batches shift by one sample, the
shards stay disjoint). Every process logs the file once and appends to the loader's report directory;
``Loader.corrupt_images()`` reads the counts of all processes.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import ctypes
import dataclasses
import functools
import glob
import json
import os
import shutil
import signal
import sys
import tempfile
import uuid
import weakref
from collections.abc import Callable, Iterator
from multiprocessing import resource_tracker
from typing import Any

import cv2
import grain
import numpy as np
from absl import flags
from grain.multiprocessing import SharedMemoryArray

from aggpose_jax.data import sources
from aggpose_jax.data import transforms as T
from aggpose_jax.pose.keypoints import get_keypoint_set


def _allow_unparsed_absl_flags() -> None:
    """Grain's worker start-up reads absl flags; programs that never parse flags would fail."""
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def keep_freed_buffers_in_heap() -> bool:
    """Stop glibc from mapping and unmapping every large (> 128 KiB) buffer (process-wide).

    Each sample allocates several image-sized arrays; with glibc's defaults each one is a fresh
    ``mmap`` whose page faults cost about as much as the JPEG decode. Raising the mmap and trim
    thresholds keeps those buffers in the heap (measured: ~310 -> ~530 samples/s per core).
    Grain workers call this at start-up; returns False where it does not apply (no glibc).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3  # glibc <malloc.h>
        ok = libc.mallopt(m_mmap_threshold, 32 * 1024 * 1024) == 1
        return libc.mallopt(m_trim_threshold, 256 * 1024 * 1024) == 1 and ok
    except (OSError, AttributeError):
        return False


_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextlib.contextmanager
def _stop_signals_blocked(enabled: bool = True) -> Iterator[None]:
    """SIGTERM/SIGINT blocked in the calling thread while Grain builds iterators and spawns workers.

    Grain spawns each worker from the calling thread or from threads it starts meanwhile; they inherit
    its signal mask and the workers keep it across ``exec``, so a worker never acts on a stop signal,
    not even while it starts up (before ``_worker_init`` runs). A signal that arrives meanwhile stays
    pending for this process and is delivered when the block ends: none is lost. The multiprocessing
    resource tracker is started first: starting it unblocks both signals in the thread that does.
    """
    if not enabled:
        yield
        return
    resource_tracker.ensure_running()
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _worker_init(worker_index: int, worker_count: int) -> None:
    del worker_index, worker_count
    for signum in _STOP_SIGNALS:  # stopping is the main process's job (module docstring)
        signal.signal(signum, signal.SIG_IGN)
    cv2.setNumThreads(1)  # one core per worker process; parallelism comes from the workers
    keep_freed_buffers_in_heap()


def _out_of_shared_memory(batch: Any) -> Any:
    """A batch from the workers with its arrays copied out of shared memory (a memcpy per array).

    Grain unlinks a shared-memory block when its array is deleted, from a background thread; a block still
    held when the process exits (the last batch of a run that stops at once, e.g. on SIGTERM) is reported as
    leaked by multiprocessing's resource tracker. The copies let each block go as soon as it is read.
    """
    if not isinstance(batch, dict):
        return batch
    return {k: np.array(v) if isinstance(v, SharedMemoryArray) else v for k, v in batch.items()}


def _finish_shared_memory_unlinks() -> None:
    """Wait until Grain has unlinked the shared-memory blocks of the arrays deleted so far (a closed pipeline's
    buffered batches). Grain deletes them in one background thread pool, in order, when it has one (a
    private attribute, read defensively): one empty task queued behind them returns when they are done."""
    pool = getattr(SharedMemoryArray, "_del_thread_pool", None)
    if pool is not None:
        try:
            pool.apply(int)
        except (ValueError, AssertionError):  # the pool was closed meanwhile
            pass


_OPEN_ITERATORS: weakref.WeakSet[Any] = weakref.WeakSet()


@atexit.register
def _close_open_iterators() -> None:
    """Stop prefetch threads and worker processes before the interpreter tears down.

    An in-process iterator (worker_count=0) left open at exit otherwise aborts the interpreter
    (its prefetch thread is still inside OpenCV).
    """
    for it in list(_OPEN_ITERATORS):
        try:
            it.close()
        except Exception:  # noqa: BLE001 -- best effort at exit
            pass


class _ProcessRows(grain.MapDataset):
    """Process ``shard_index``'s rows of the global batches of a sample stream, ordered for ``workers``.

    Local index k -> worker w = k % W, q = k // W; that worker's batch t = q // L, row r = q % L; local
    (= global) batch j = t * W + w; stream position ``start + j * G + shard_index * L + r``. With a
    finite stream, positions past its end read as None (skipped): the last global batch may be incomplete,
    and then batching drops each process's incomplete batch (the trainer's stream is endless).
    """

    def __init__(
        self,
        parent: grain.MapDataset,
        *,
        local_batch: int,
        shard_index: int,
        shard_count: int,
        start: int,
        workers: int,
    ):
        super().__init__(parent)
        self._local, self._shard, self._start = int(local_batch), int(shard_index), int(start)
        self._global = self._local * int(shard_count)
        self._workers = max(1, int(workers))
        total = len(parent)
        if total >= sys.maxsize:  # repeated forever
            self._end: int | None = None
            self._length = sys.maxsize
        else:
            self._end = total
            batches = -(-max(0, total - self._start) // self._global)
            self._length = -(-batches // self._workers) * self._workers * self._local

    def __len__(self) -> int:
        return self._length

    def __str__(self) -> str:
        return f"_ProcessRows(shard={self._shard}, global_batch={self._global}, start={self._start})"

    def position(self, index: int) -> int | None:
        """Stream position of local index ``index`` (None past the end of a finite stream)."""
        worker, q = index % self._workers, index // self._workers
        batch = (q // self._local) * self._workers + worker
        position = self._start + batch * self._global + self._shard * self._local + q % self._local
        return None if self._end is not None and position >= self._end else position

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return self.slice(index)
        position = self.position(int(index))
        return None if position is None else self._parent[position]


@dataclasses.dataclass
class Loader:
    """An iterable of batches (dicts of stacked numpy arrays).

    ``iter(loader)`` (= ``loader.iterator()``) returns a :class:`LoaderIterator`: ``next``,
    ``get_state()``, ``set_state(state)`` (a small JSON-serialisable dict), ``close()``, and for
    training loaders the global sample position (``samples_seen``, ``seek``).
    """

    dataset: grain.IterDataset  # the pipeline from sample 0
    batch_size: int  # per process
    num_records: int  # records this process reads per pass (train: its rows of one epoch), before skipping
    train: bool
    report_dir: str
    global_batch_size: int = 0  # train: batch_size * shard_count
    shard_index: int = 0
    shard_count: int = 1
    worker_count: int = 0
    epoch_size: int = 0  # records in the source
    build: Callable[[int], grain.IterDataset] | None = dataclasses.field(default=None, repr=False)

    def __iter__(self) -> LoaderIterator:
        return self.iterator()

    def iterator(self, start_sample: int = 0) -> LoaderIterator:
        """Batches from global stream position ``start_sample`` (train loaders; eval loaders start at 0)."""
        return LoaderIterator(self, start_sample)

    def _grain_iterator(self, start_sample: int) -> grain.DatasetIterator:
        if start_sample and (not self.train or self.build is None):
            raise ValueError("Loader.iterator: only training loaders start at a sample position")
        dataset = self.build(start_sample) if start_sample else self.dataset
        with _stop_signals_blocked(self.worker_count > 0):
            it = iter(dataset)
        _OPEN_ITERATORS.add(it)
        return it

    @property
    def batches_per_epoch(self) -> int:
        """Batches per pass over this shard if no record is skipped."""
        if self.train:
            return self.num_records // self.batch_size
        return -(-self.num_records // self.batch_size)

    def corrupt_images(self) -> dict[str, int]:
        """Skipped-record counts per image file, summed over this loader's processes."""
        counts: collections.Counter[str] = collections.Counter()
        for path in glob.glob(os.path.join(self.report_dir, "*.jsonl")):
            with open(path, encoding="utf-8") as f:
                counts.update(json.loads(line) for line in f if line.strip())
        return dict(counts)


DECODED = "_decoded"  # a training row's mark: False where the image was undecodable (dropped by LoaderIterator)


class _MarkDecoded(grain.transforms.RandomMap):
    """The training transform that keeps undecodable records as marked placeholders of the same structure.

    Dropping them here (in Grain's per-worker part) would shift each worker's batches by its own skips, and the
    round-robin interleaving of the workers would reorder the stream; ``LoaderIterator`` drops them in order.
    """

    def __init__(self, transform: grain.transforms.RandomMap):
        self.transform = transform

    def random_map(self, element: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        decoded = element.get("image") is not None
        if not decoded:  # any image gives the right shapes; the rng is used as for a real one
            element = {**element, "image": np.zeros((1, 1, 3), np.uint8)}
        out = self.transform.random_map(element, rng)
        out[DECODED] = np.bool_(decoded)
        return out


class LoaderIterator:
    """Iterator over a :class:`Loader` with Grain's interface, which also knows where it is in the global
    sample stream (training loaders).

    ``get_state()`` = ``{'start_sample', 'batches', 'grain'}``: the stream position the pipeline was
    built at, the batches taken since, and Grain's own iterator state (exact, skipped records and worker
    processes included). ``samples_seen`` = ``start_sample + batches * global_batch_size``: the global
    position, the same on every process, from which ``seek`` rebuilds the pipeline for any process count.

    Training rows marked undecodable are dropped here, in stream order, and the rest re-cut into full
    batches: rows left over after a batch are the tail of one Grain batch, so the state then names that
    batch's Grain state and ``'carry'``, how many of its kept rows were already returned.
    """

    def __init__(self, loader: Loader, start_sample: int = 0):
        self.loader = loader
        self._start, self._batches = int(start_sample), 0
        self._it = loader._grain_iterator(self._start)
        self._started = 0  # batches taken from this Grain iterator, up to the worker count
        self._before: Any = None  # Grain state before the next batch read (None: the pipeline's start)
        self._pending: dict[str, np.ndarray] | None = None  # kept rows not returned yet (training)
        self._pending_state: Any = None  # Grain state before the batch they come from
        self._pending_used = 0  # that batch's kept rows returned already

    def __iter__(self) -> LoaderIterator:
        return self

    def _read(self) -> dict[str, Any]:
        """The next Grain batch; training loaders note the Grain state after it."""
        workers, train = self.loader.worker_count, self.loader.train
        if self._started >= workers:
            batch = next(self._it)
            if train:
                self._before = self._it.get_state()
        else:  # the first batch of each worker starts it
            with _stop_signals_blocked():
                batch = next(self._it)
                if train:
                    self._before = self._it.get_state()
            self._started += 1
        return _out_of_shared_memory(batch) if workers else batch

    def __next__(self) -> dict[str, Any]:
        if not self.loader.train:
            batch = self._read()
            self._batches += 1
            return batch
        size = self.loader.batch_size
        while True:
            before = self._before
            try:
                batch = self._read()
            except StopIteration:
                self._pending = None  # an incomplete last batch is dropped
                raise
            kept = np.asarray(batch.pop(DECODED), bool)
            if self._pending is None and len(kept) == size and kept.all():
                self._batches += 1
                return batch
            rows = {k: v[kept] for k, v in batch.items()}
            if self._pending is not None:
                rows = {k: np.concatenate([self._pending[k], v]) for k, v in rows.items()}
            total = len(next(iter(rows.values()))) if rows else 0
            if total < size:
                self._pending = rows if total else None
                continue
            rest = total - size  # < the kept rows of this batch: the rest is its tail
            self._pending = {k: v[size:] for k, v in rows.items()} if rest else None
            self._pending_state, self._pending_used = before, int(kept.sum()) - rest
            self._batches += 1
            return {k: v[:size] for k, v in rows.items()}

    @property
    def samples_seen(self) -> int:
        return self._start + self._batches * self.loader.global_batch_size

    def position(self) -> dict[str, int]:
        """The process-count-independent data position and the layout it was read with."""
        ld = self.loader
        return {
            "samples_seen": self.samples_seen,
            "global_batch": ld.global_batch_size,
            "process_count": ld.shard_count,
            "worker_count": ld.worker_count,
            "epoch_size": ld.epoch_size,
        }

    def get_state(self) -> dict[str, Any]:
        state = {"start_sample": self._start, "batches": self._batches}
        if self._pending is None:
            return {**state, "grain": self._it.get_state()}
        return {**state, "grain": self._pending_state, "carry": self._pending_used}

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore a ``get_state()`` (a bare Grain iterator state is accepted too)."""
        with _stop_signals_blocked(self.loader.worker_count > 0):  # may restart worker processes
            if "grain" in state and "start_sample" in state:
                grain_state, carry = state["grain"], int(state.get("carry", 0))
                self._rebuild(int(state["start_sample"]), fresh=grain_state is None)
                self._batches = int(state.get("batches", 0))
                if grain_state is not None:
                    self._it.set_state(grain_state)
                self._before = grain_state
            else:
                self._it.set_state(state)
                self._before, carry = state, 0
        if carry:  # re-read the batch whose tail was not returned yet
            batch = self._read()
            kept = np.asarray(batch.pop(DECODED), bool)
            rows = {k: v[kept][carry:] for k, v in batch.items()}
            self._pending = rows if rows and len(next(iter(rows.values()))) else None
            self._pending_state, self._pending_used = grain_state, carry

    def seek(self, sample: int) -> None:
        """Continue from global stream position ``sample`` (a fresh pipeline; nothing is read to get there)."""
        self._rebuild(int(sample), fresh=self._batches > 0 or self._before is not None)

    def _rebuild(self, start: int, fresh: bool = False) -> None:
        if fresh or start != self._start or self._it is None:
            self.close()
            self._it = self.loader._grain_iterator(start)
            self._started = 0
        self._start, self._batches = start, 0
        self._before, self._pending, self._pending_state, self._pending_used = None, None, None, 0

    def start_prefetch(self) -> None:
        if hasattr(self._it, "start_prefetch"):
            with _stop_signals_blocked(self.loader.worker_count > 0):
                self._it.start_prefetch()

    def close(self) -> None:
        """Stop the pipeline's threads and worker processes; the iterator cannot be used afterwards."""
        if self._it is not None and hasattr(self._it, "close"):
            self._it.close()
        self._it = None  # freed now, not at interpreter shutdown (where Grain's finaliser fails noisily)
        if self.loader.worker_count:
            _finish_shared_memory_unlinks()


@dataclasses.dataclass(frozen=True)
class BatchSplit:
    """A global batch and this process's share of it: process i reads rows [i * local, (i + 1) * local).

    The one place that turns a global batch size into a per-process one (``config.validate`` builds the
    run's train and eval splits; loaders read their batch from them).
    """

    global_size: int
    process_count: int = 1
    process_index: int = 0

    @property
    def local_size(self) -> int:
        return self.global_size // self.process_count

    @classmethod
    def of(cls, global_size: int, process_count: int, process_index: int, device_count: int = 1) -> BatchSplit:
        """Raises ``ValueError`` unless ``global_size`` is a positive multiple of the device and process counts."""
        if global_size <= 0 or global_size % device_count or global_size % process_count:
            raise ValueError(
                f"the global batch size ({global_size}) must be a positive multiple of the device count "
                f"({device_count}) and of the process count ({process_count})"
            )
        return cls(int(global_size), int(process_count), int(process_index))


def _section_get(section: Any, key: str, default: Any = None) -> Any:
    if section is None:
        return default
    if hasattr(section, "get"):
        return section.get(key, default)
    return getattr(section, key, default)


def _resolve_keypoint_set(keypoint_set: Any) -> Any:
    if isinstance(keypoint_set, str):
        return get_keypoint_set(keypoint_set)
    return keypoint_set


def make_loader(
    source: Any,
    *,
    keypoint_set: Any,
    data_config: Any,
    train: bool,
    batch_size: int = 0,
    batch: BatchSplit | None = None,
    seed: int = 0,
    num_epochs: int | None = None,
    shard_index: int | None = None,
    shard_count: int | None = None,
    worker_count: int | None = None,
    prefetch: int = 2,
    read_threads: int = 0,
) -> Loader:
    """Build the training or evaluation loader for one process.

    Args:
      source: random-access source of person records (``len`` and ``[i]``).
      keypoint_set: a ``KeypointSet`` or its name.
      data_config: ``config.data`` (image_size (H, W), heatmap_size (h, w), sigma, num_workers,
        aug; optional affine_convention 'aggpose' (default, the release) or 'hrnet').
      train: augmented, shuffled, repeated, full batches (``drop_remainder``); else one pass
        without augmentation, padded batches with ``valid``.
      batch_size: per-process batch size (train: the global batch is ``batch_size * shard_count``).
      batch: the run's batch split (``RunConfig.train.batch`` / ``.eval.batch``); replaces ``batch_size``,
        ``shard_index`` and ``shard_count``.
      seed: shuffle and augmentation seed (the same on every process).
      num_epochs: training passes (None = forever); ignored in eval (one pass).
      shard_index, shard_count: default ``jax.process_index()``, ``jax.process_count()``. Train: this
        process's rows of every global batch; eval: records ``shard_index::shard_count``.
      worker_count: Grain worker processes; default ``data_config.num_workers`` (0 = in-process).
      prefetch: batches buffered per worker (or by a background thread when worker_count=0).
      read_threads: Grain read threads per process (0: the process's own thread does the work).
    """
    if batch is not None:
        batch_size, shard_index, shard_count = batch.local_size, batch.process_index, batch.process_count
    if batch_size <= 0:
        raise ValueError(f"make_loader: batch_size must be positive, got {batch_size}")
    if shard_index is None or shard_count is None:
        # jax here only: Grain's worker processes import this module and never need jax (a heavy import)
        import jax

        shard_index = jax.process_index() if shard_index is None else shard_index
        shard_count = jax.process_count() if shard_count is None else shard_count
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"make_loader: shard_index {shard_index} not in [0, {shard_count})")
    if worker_count is None:
        worker_count = int(_section_get(data_config, "num_workers", 0) or 0)
    kp_set = _resolve_keypoint_set(keypoint_set)
    image_size = tuple(int(v) for v in _section_get(data_config, "image_size", (256, 192)))
    heatmap_size = tuple(int(v) for v in _section_get(data_config, "heatmap_size", (64, 48)))
    sigma = float(_section_get(data_config, "sigma", 2.0))
    convention = _section_get(data_config, "affine_convention", "aggpose")  # or 'hrnet'
    # Created by the first process that meets a bad image; nothing is written otherwise.
    report_dir = os.path.join(tempfile.gettempdir(), f"aggpose_bad_images_{uuid.uuid4().hex}")

    ds = grain.MapDataset.source(source)
    epoch_size = len(ds)
    if train:
        ds = ds.shuffle(seed=seed % 2**32)
        ds = ds.map(T.DecodeImage(report_dir))  # undecodable records stay, marked, until _Compact drops them
        aug = T.AugmentConfig.from_config(_section_get(data_config, "aug"))
        ds = ds.random_map(
            _MarkDecoded(T.TrainTransform(kp_set, image_size, heatmap_size, sigma, aug, convention=convention)),
            seed=(seed + 1) % 2**32,
        )
        stream = ds.repeat(num_epochs)
        global_batch = batch.global_size if batch is not None else batch_size * shard_count
        full, rest = divmod(epoch_size, global_batch)
        num_records = full * batch_size + min(batch_size, max(0, rest - shard_index * batch_size))
    else:
        ds = ds[shard_index::shard_count]
        num_records, global_batch = len(ds), 0
        stream = ds.map(T.DecodeImage(report_dir)).filter(T.DropUndecodable())
        stream = stream.map(T.EvalTransform(image_size, convention=convention))
    read = grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=max(1, 2 * batch_size))
    if worker_count > 0:
        _allow_unparsed_absl_flags()

    def build(start_sample: int) -> grain.IterDataset:
        rows = stream
        if train:
            rows = _ProcessRows(
                stream,
                local_batch=batch_size,
                shard_index=shard_index,
                shard_count=shard_count,
                start=start_sample,
                workers=worker_count,
            )
        it = rows.to_iter_dataset(read)
        if train:  # a short last batch too: _Compact joins rows across batches and drops the incomplete rest
            it = it.batch(batch_size, drop_remainder=False)
        else:
            pad = functools.partial(grain.experimental.batch_and_pad, batch_size=batch_size)
            it = it.batch(batch_size, drop_remainder=False, batch_fn=pad)
        if worker_count > 0:
            it = it.mp_prefetch(
                grain.MultiprocessingOptions(num_workers=worker_count, per_worker_buffer_size=max(1, prefetch)),
                worker_init_fn=_worker_init,
            )
        elif prefetch > 0:
            it = grain.experimental.ThreadPrefetchIterDataset(it, prefetch_buffer_size=prefetch)
        return it

    # The skipped-image reports are removed when this process exits (not with the loader: an iterator
    # may outlive it, and its workers may still be writing).
    atexit.register(_remove_report_dir, report_dir, os.getpid())
    return Loader(
        build(0),
        batch_size,
        num_records,
        train,
        report_dir,
        global_batch_size=global_batch,
        shard_index=shard_index,
        shard_count=shard_count,
        worker_count=worker_count,
        epoch_size=epoch_size,
        build=build,
    )


def _remove_report_dir(path: str, owner_pid: int) -> None:
    if os.getpid() == owner_pid:  # never from a forked worker that inherited the finaliser
        shutil.rmtree(path, ignore_errors=True)


def make_source(data_config: Any, split: str) -> Any:
    """The configured record source for ``split`` ('train' or 'val').

    ``data_config.source``: 'coco_json' reads ROOT/annotations/person_keypoints_{split}2017.json
    with images in ROOT/{split}2017 (GT boxes, or for 'val' with ``use_gt_bbox`` False the
    ``detections_file`` above ``det_score_threshold``); 'tfds' reads the prepared TFDS dataset
    (``tfds_name``, default 'aggpose_keypoints/<keypoints>', under ``tfds_data_dir``).
    """
    kind = _section_get(data_config, "source", "coco_json")
    keypoints = _section_get(data_config, "keypoints", "coco")
    if kind == "coco_json":
        root = _section_get(data_config, "root")
        if not root:
            raise ValueError("make_source: config.data.root is empty (needed for source='coco_json')")
        use_gt = bool(_section_get(data_config, "use_gt_bbox", True)) or split == "train"
        return sources.CocoKeypointSource.from_root(
            root,
            split,
            keypoints=keypoints,
            detections_file=None if use_gt else _section_get(data_config, "detections_file"),
            det_score_threshold=float(_section_get(data_config, "det_score_threshold", 0.0)),
        )
    if kind == "tfds":
        return sources.TfdsKeypointSource(
            _section_get(data_config, "tfds_name") or None,
            split,
            data_dir=_section_get(data_config, "tfds_data_dir") or None,
            keypoints=keypoints,
        )
    raise ValueError(f"make_source: config.data.source must be 'coco_json' or 'tfds', got {kind!r}")
