"""The moving parts of the prediction pipeline: items, the reader thread (:class:`Prefetch`), the crop
batcher that keeps one model call in flight (:class:`Batcher`), and where the time went (:class:`Timings`).
"""

from __future__ import annotations

import collections
import dataclasses
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from aggpose_jax.predict.boxes import Box
from aggpose_jax.predict.engine import CropEngine, Crops

_END = object()


@dataclasses.dataclass
class Timings:
    """Where the time of a run went (seconds). ``compile_s``: compiling the model function (a run compiles
    it before the first input; in the other calls it lands in the first model call). ``read_s`` and
    ``crop_s`` are spent in the reader thread
    when boxes are known in advance (overlapping the model), ``seed_s`` is the host work of single-subject
    seeds (their crops and decoding), ``model_wait_s`` the main thread waiting for heatmaps (seeds
    included), ``decode_s`` heatmap decoding, ``write_s`` the result files."""

    compile_s: float = 0.0
    read_s: float = 0.0
    crop_s: float = 0.0
    seed_s: float = 0.0
    model_wait_s: float = 0.0
    decode_s: float = 0.0
    write_s: float = 0.0
    wall_s: float = 0.0
    frames: int = 0
    crops: int = 0
    model_calls: int = 0

    def add(self, other: Timings) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def as_dict(self) -> dict[str, float]:
        d = {k: round(v, 4) if isinstance(v, float) else v for k, v in dataclasses.asdict(self).items()}
        d["frames_per_s"] = round(self.frames / self.wall_s, 3) if self.wall_s > 0 else None
        return d


@dataclasses.dataclass
class Item:
    """A frame or image on its way through the pipeline."""

    index: int
    time_s: float | None
    frame: np.ndarray | None
    boxes: list[Box] = dataclasses.field(default_factory=list)
    crops: Crops | None = None
    keypoints: np.ndarray | None = None
    scores: np.ndarray | None = None
    remaining: int = 0
    path: str = ""
    error: str | None = None
    exif: int | None = None  # an image's EXIF orientation (None: none)


class Prefetch:
    """Runs ``produce`` (and ``prepare`` on each item) in a thread, ``depth`` items ahead of the consumer."""

    def __init__(
        self,
        produce: Iterator[Any],
        prepare: Callable[[Any], Any] | None,
        depth: int,
        timings: Timings,
    ):
        self._produce, self._prepare, self._timings = produce, prepare, timings
        self._queue: queue.Queue = queue.Queue(maxsize=max(2, depth))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, name="aggpose-prefetch", daemon=True)
        self._thread.start()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _work(self) -> None:
        try:
            while not self._stop.is_set():
                t0 = time.perf_counter()
                try:
                    item = next(self._produce)
                except StopIteration:
                    break
                t1 = time.perf_counter()
                self._timings.read_s += t1 - t0
                if self._prepare is not None:
                    item = self._prepare(item)
                    self._timings.crop_s += time.perf_counter() - t1
                if not self._put(item):
                    return
            self._put(_END)
        except BaseException as err:  # handed to the consumer, raised there
            self._put(err)

    def __iter__(self) -> Iterator[Any]:
        while True:
            item = self._queue.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._queue.get(timeout=0.05)
            except queue.Empty:
                pass
        close = getattr(self._produce, "close", None)
        if close is not None:
            close()


class Batcher:
    """Collects items with crops, runs them ``batch_size`` crops at a time, and hands back finished items
    in arrival order. One batch stays in flight while the previous one is decoded."""

    def __init__(self, engine: CropEngine, timings: Timings):
        self.engine, self.timings = engine, timings
        self.order: collections.deque[Item] = collections.deque()
        self.parts: list[tuple[Item, int, int]] = []
        self.open_n = 0
        self.flight: collections.deque[tuple[Any, list[tuple[Item, int, int]], np.ndarray, np.ndarray]] = (
            collections.deque()
        )

    def add(self, item: Item) -> list[Item]:
        n = 0 if item.crops is None else len(item.crops)
        j = self.engine.config.num_joints
        item.keypoints, item.scores = np.zeros((n, j, 2), np.float32), np.zeros((n, j), np.float32)
        item.remaining = n
        self.order.append(item)
        start = 0
        while start < n:
            take = min(self.engine.batch_size - self.open_n, n - start)
            self.parts.append((item, start, take))
            self.open_n += take
            start += take
            if self.open_n == self.engine.batch_size:
                self._dispatch()
        return self._finished(in_flight=1)

    def flush(self) -> list[Item]:
        if self.parts:
            self._dispatch()
        return self._finished(in_flight=0)

    def _dispatch(self) -> None:
        images = np.concatenate([it.crops.images[s : s + k] for it, s, k in self.parts])
        centers = np.concatenate([it.crops.centers[s : s + k] for it, s, k in self.parts])
        scales = np.concatenate([it.crops.scales[s : s + k] for it, s, k in self.parts])
        self.flight.append((self.engine.dispatch(images), self.parts, centers, scales))
        self.parts, self.open_n = [], 0

    def _finished(self, in_flight: int) -> list[Item]:
        while len(self.flight) > in_flight:
            pending, parts, centers, scales = self.flight.popleft()
            heatmaps = pending.result()
            t0 = time.perf_counter()
            kp, sc = self.engine.decode_heatmaps(heatmaps, centers, scales)
            self.timings.decode_s += time.perf_counter() - t0
            offset = 0
            for item, start, k in parts:
                item.keypoints[start : start + k] = kp[offset : offset + k]
                item.scores[start : start + k] = sc[offset : offset + k]
                item.remaining -= k
                offset += k
        done = []
        while self.order and self.order[0].remaining == 0:
            done.append(self.order.popleft())
        return done
