"""Grain input pipelines: sources -> per-process shard -> shuffle -> decode/augment -> batches.

Built on Grain's ``MapDataset``/``IterDataset`` API (not ``grain.DataLoader``) because the whole
random-access part (sharding, the seeded per-epoch shuffle, per-record seeded augmentation,
repeat) is a pure function of the element index, and the iterator's ``get_state``/``set_state``
is a few integers (per worker) that restore exactly, also with worker processes.

Order of operations (train):

    source[shard_index::shard_count]          strided shard per process: disjoint and covering
      .shuffle(seed)                          a new permutation each epoch (seed + epoch)
      .map(DecodeImage).filter(Drop...)       corrupt/missing images are skipped
      .random_map(TrainTransform, seed+1)     rng from (seed + 1, global index): reproducible
      .repeat(num_epochs)                     None = forever
      .to_iter_dataset().batch(B, drop_remainder=True)
      .mp_prefetch(worker_count)              batches are made inside the workers (shared memory)

Eval: no shuffle or augmentation, one pass, ``batch_and_pad``: every batch has ``batch_size``
rows and a boolean ``valid`` column (False on padding rows). With W worker processes each worker
batches its own slice, so up to W batches (each worker's last) may be partly padding.

Worker processes are started with ``spawn``: a script that uses ``worker_count > 0`` needs an
``if __name__ == "__main__":`` guard (as any ``multiprocessing`` program), and its source must be
picklable (the COCO and TFDS sources are). Each worker runs OpenCV single-threaded and keeps
freed buffers in its heap (see ``keep_freed_buffers_in_heap``).

Skipped records: samples whose image is missing or undecodable are dropped before batching, so a
training batch never contains them and an epoch is correspondingly shorter. Every process logs
the file once and appends to the loader's report directory; ``Loader.corrupt_images()`` reads
the counts of all processes.
"""

from __future__ import annotations

import atexit
import collections
import ctypes
import dataclasses
import functools
import glob
import json
import os
import shutil
import tempfile
import uuid
import weakref
from typing import Any

import cv2
import grain

from aggpose_jax.data import transforms as T


def _allow_unparsed_absl_flags() -> None:
    """Grain's worker start-up reads absl flags; programs that never parse flags would fail."""
    from absl import flags

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


def _worker_init(worker_index: int, worker_count: int) -> None:
    del worker_index, worker_count
    cv2.setNumThreads(1)  # one core per worker process; parallelism comes from the workers
    keep_freed_buffers_in_heap()


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


@dataclasses.dataclass
class Loader:
    """An iterable of batches (dicts of stacked numpy arrays).

    ``iter(loader)`` returns a Grain ``DatasetIterator``: ``next``, ``get_state()``,
    ``set_state(state)`` (the state is a small JSON-serialisable dict) and ``close()``.
    """

    dataset: grain.IterDataset
    batch_size: int
    num_records: int  # records in this process's shard, before skipping bad images
    train: bool
    report_dir: str

    def __iter__(self) -> grain.DatasetIterator:
        it = iter(self.dataset)
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


def _section_get(section: Any, key: str, default: Any = None) -> Any:
    if section is None:
        return default
    if hasattr(section, "get"):
        return section.get(key, default)
    return getattr(section, key, default)


def _resolve_keypoint_set(keypoint_set: Any) -> Any:
    if isinstance(keypoint_set, str):
        from aggpose_jax.pose.keypoints import get_keypoint_set

        return get_keypoint_set(keypoint_set)
    return keypoint_set


def make_loader(
    source: Any,
    *,
    keypoint_set: Any,
    data_config: Any,
    train: bool,
    batch_size: int,
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
      batch_size: per-process batch size.
      seed: shuffle and augmentation seed (same on every process; shards differ).
      num_epochs: training passes (None = forever); ignored in eval (one pass).
      shard_index, shard_count: default ``jax.process_index()``, ``jax.process_count()``.
      worker_count: Grain worker processes; default ``data_config.num_workers`` (0 = in-process).
      prefetch: batches buffered per worker (or by a background thread when worker_count=0).
      read_threads: Grain read threads per process (0: the process's own thread does the work).
    """
    if batch_size <= 0:
        raise ValueError(f"make_loader: batch_size must be positive, got {batch_size}")
    if shard_index is None or shard_count is None:
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

    ds = grain.MapDataset.source(source)[shard_index::shard_count]
    num_records = len(ds)
    if train:
        ds = ds.shuffle(seed=seed % 2**32)
    ds = ds.map(T.DecodeImage(report_dir)).filter(T.DropUndecodable())
    if train:
        aug = T.AugmentConfig.from_config(_section_get(data_config, "aug"))
        ds = ds.random_map(
            T.TrainTransform(kp_set, image_size, heatmap_size, sigma, aug, convention=convention),
            seed=(seed + 1) % 2**32,
        )
        ds = ds.repeat(num_epochs)
    else:
        ds = ds.map(T.EvalTransform(image_size, convention=convention))
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=max(1, 2 * batch_size)))
    if train:
        it = it.batch(batch_size, drop_remainder=True)
    else:
        pad = functools.partial(grain.experimental.batch_and_pad, batch_size=batch_size)
        it = it.batch(batch_size, drop_remainder=False, batch_fn=pad)
    if worker_count > 0:
        _allow_unparsed_absl_flags()
        it = it.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=worker_count, per_worker_buffer_size=max(1, prefetch)),
            worker_init_fn=_worker_init,
        )
    elif prefetch > 0:
        it = grain.experimental.ThreadPrefetchIterDataset(it, prefetch_buffer_size=prefetch)
    # The skipped-image reports are removed when this process exits (not with the loader: an iterator
    # may outlive it, and its workers may still be writing).
    atexit.register(_remove_report_dir, report_dir, os.getpid())
    return Loader(it, batch_size, num_records, train, report_dir)


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
    from aggpose_jax.data import sources

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
