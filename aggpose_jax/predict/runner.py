"""The prediction pipeline: inputs -> boxes -> batched crops -> model -> keypoints -> result sinks.

A reader thread decodes video frames (with their container timestamps) or image files ahead of the
model, and, when the boxes are known in advance (a boxes file or a fixed region), crops them too. The
main thread fills batches of ``batch_size`` crops, starts the model on one batch and decodes the
previous one (DARK) and writes its results while the model runs. In single-subject mode each batch of
frames is cropped with the box of the last frame of the batch before (see :mod:`.subject`); only the
cheap crop waits for the model there, reading still runs ahead.

:class:`Predictor` is the Python API; ``aggpose-predict`` (:mod:`.cli`) calls :meth:`Predictor.run`.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from aggpose_jax.predict import provenance
from aggpose_jax.predict.batching import Batcher, Item, Prefetch, Timings
from aggpose_jax.predict.boxes import Box, BoxesError, BoxesFile, BoxPlan
from aggpose_jax.predict.engine import CropEngine
from aggpose_jax.predict.model import LoadedModel, load_model
from aggpose_jax.predict.outputs import (
    DEFAULT_OUTPUTS,
    OUTPUT_KINDS,
    ImageOutputs,
    OutputError,
    VideoOutputs,
    check_out_dir,
    unique_stems,
)
from aggpose_jax.predict.progress import Progress
from aggpose_jax.predict.results import ImagePrediction, Record, VideoPrediction
from aggpose_jax.predict.sequences import format_quality_report
from aggpose_jax.predict.series import SeriesSettings
from aggpose_jax.predict.subject import Follower, SeveralPeopleError, SubjectSettings, seed, several_people
from aggpose_jax.predict.video import VideoError, VideoInfo, VideoReader, is_image, is_video, list_inputs


def _read_image(path: str) -> np.ndarray | None:
    """BGR uint8 image, or None when it cannot be read or decoded (EXIF orientation ignored, as in training)."""
    try:
        data = np.fromfile(path, np.uint8)
    except OSError:
        return None
    if data.size == 0:
        return None
    try:
        img = cv2.imdecode(data, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    except cv2.error:
        return None
    if img is None or img.ndim != 3 or img.shape[0] == 0 or img.shape[1] == 0:
        return None
    return img


def _as_boxes(boxes: Any, where: str) -> list[Box]:
    """Boxes given to the Python API: Box objects or (x, y, w, h[, score]) sequences."""
    out = []
    for b in boxes or []:
        if isinstance(b, Box):
            out.append(b)
            continue
        values = [float(v) for v in b]
        if len(values) not in (4, 5) or values[2] <= 0 or values[3] <= 0:
            raise BoxesError(f"{where}: a box is (x, y, w, h[, score]) with w, h > 0, got {b!r}")
        out.append(Box(tuple(values[:4]), values[4] if len(values) == 5 else 1.0, "file"))
    return out


@dataclasses.dataclass
class RunPlan:
    """The checked inputs of a run: images and videos (in order), each video's container info, the boxes,
    the output folder (writable) and kinds, and a distinct output stem per input."""

    out_dir: str
    images: list[Path]
    videos: list[Path]
    infos: dict[Path, VideoInfo]
    boxes: BoxPlan
    outputs: list[str]
    stems: dict[Path, str]


def plan_run(
    inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    boxes: str | os.PathLike[str] | None = None,
    regions: dict[str | None, tuple[float, float, float, float]] | None = None,
    outputs: Sequence[str] = DEFAULT_OUTPUTS,
    min_box_score: float = 0.0,
) -> RunPlan:
    """Check what can be checked before the model runs: the inputs exist and have known extensions, every
    video opens and has a frame, the boxes files parse and fit the videos (as far as the container's
    frame count tells), the output kinds exist and the output folder is writable. Raises one error."""
    bad = [k for k in outputs if k not in OUTPUT_KINDS]
    if bad:
        raise OutputError(f"unknown output {bad[0]!r}; choose from {', '.join(OUTPUT_KINDS)}")
    paths = list_inputs(inputs)
    images = [p for p in paths if is_image(p)]
    videos = [p for p in paths if is_video(p)]
    plan = BoxPlan(boxes, regions, min_box_score)
    plan.check_inputs(paths, videos)
    infos: dict[Path, VideoInfo] = {}
    for v in videos:
        with VideoReader(v) as reader:
            infos[v] = reader.info
        file = plan.file_for(v)
        if file is not None:
            file.check_frame_keys()
            count = infos[v].frame_count
            if count and file.max_frame() >= count + max(2, count // 50):
                file.check_frames_within(count, str(v))
    out = check_out_dir(out_dir)
    return RunPlan(out, images, videos, infos, plan, list(outputs), unique_stems(paths))


@dataclasses.dataclass
class RunSummary:
    """What :meth:`Predictor.run` did: per input a dict (name, kind, stem, files, stats, quality)."""

    out_dir: str
    inputs: list[dict[str, Any]]
    images_predicted: int
    images_skipped: list[dict[str, str]]
    timings: Timings


class Predictor:
    """Keypoints of images and videos with a loaded AggPose (the Python API beneath ``aggpose-predict``).

    Args:
      model: a ``LoadedModel`` (:func:`aggpose_jax.predict.model.load_model`) or a ``PoseModel`` with
        ``keypoint_set`` given.
      flip: flip test (mirrored crops averaged, as in evaluation). decode: 'dark' or 'argmax'.
      batch_size: crops per model call (default: 4 on CPU, 16 on accelerators). subject: single-subject
        mode settings. min_box_score: boxes-file
        boxes below it are ignored. progress: show a progress bar on stderr.

    ``Predictor.load(path, ...)`` loads any checkpoint kind first (see ``load_model``).
    """

    def __init__(
        self,
        model: Any,
        keypoint_set: Any = None,
        *,
        flip: bool = True,
        decode: str = "dark",
        batch_size: int | None = None,
        subject: SubjectSettings | None = None,
        min_box_score: float = 0.0,
        progress: bool = False,
    ):
        if isinstance(model, LoadedModel):
            self.loaded = model
        else:
            if keypoint_set is None:
                from aggpose_jax.pose.keypoints import get_keypoint_set

                keypoint_set = get_keypoint_set({17: "coco", 21: "infant"}.get(model.config.num_joints, "coco"))
            self.loaded = LoadedModel(model, keypoint_set, {"config": model.config.to_dict()})
        self.keypoint_set = self.loaded.keypoint_set
        self.engine = CropEngine(self.loaded.model, self.keypoint_set, flip=flip, decode=decode, batch_size=batch_size)
        self.subject = subject or SubjectSettings()
        self.min_box_score = float(min_box_score)
        self.progress = progress
        self.timings = Timings()

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        which: str = "latest",
        bf16: bool = False,
        image_size: tuple[int, int] | None = None,
        keypoints: str | None = None,
        kernels: str | None = None,
        **options: Any,
    ) -> Predictor:
        loaded = load_model(path, which=which, bf16=bf16, image_size=image_size, keypoints=keypoints, kernels=kernels)
        return cls(loaded, **options)

    @property
    def num_joints(self) -> int:
        return self.keypoint_set.num_joints

    def settings(self) -> dict[str, Any]:
        """The inference settings recorded with results."""
        e = self.engine
        return {
            "flip_test": e.flip,
            "decode": e.decode,
            "batch_size": e.batch_size,
            "dtype": e.config.dtype,
            "input_size": list(e.image_size),
            "heatmap_size": list(e.heatmap_size),
            "box_padding": self.subject.padding,
            "min_box_score": self.min_box_score,
            "single_subject": dataclasses.asdict(self.subject),
        }

    # ------------------------------------------------------------------ videos

    def video(
        self,
        path: str | os.PathLike[str],
        *,
        boxes: str | os.PathLike[str] | dict[int, Any] | None = None,
        region: Sequence[float] | None = None,
    ) -> VideoPrediction:
        """Predict every frame of a video: single-subject mode by default, or with ``boxes`` (a boxes file,
        or ``{frame index: [(x, y, w, h[, score]), ...]}``) or a fixed ``region`` (x, y, w, h)."""
        path = os.fspath(path)
        if boxes is not None and region is not None:
            raise BoxesError("give boxes or a region, not both")
        file = None
        if isinstance(boxes, dict):
            file = BoxesFile("<boxes>", {int(k): _as_boxes(v, f"boxes[{k}]") for k, v in boxes.items()})
        elif boxes is not None:
            file = BoxesFile.read(boxes)
        region_box = None if region is None else Box(tuple(float(v) for v in region), 1.0, "region")
        reader = VideoReader(path)
        records: list[Record] = []

        class _Collect:
            def add(self, rec: Record, frame: np.ndarray | None) -> None:
                records.append(rec)

        stats = self._predict_video(reader, file, region_box, _Collect())
        if file is not None:
            file.check_frames_within(stats["n_frames"], path)
        names = self.keypoint_set.names
        return VideoPrediction.from_records(path, reader.info, names, records, **stats)

    def _video_boxes(self, file: BoxesFile | None, region: Box | None, stats: dict[str, Any]) -> Callable:
        def boxes_for(index: int) -> list[Box]:
            if region is not None:
                return [region]
            found = [b for b in file.for_frame(index) if b.score >= self.min_box_score]
            if len(found) > 1:
                stats["boxes_ignored"] += len(found) - 1
            return sorted(found, key=lambda b: -b.score)[:1]

        return boxes_for

    def _predict_video(self, reader: VideoReader, file: BoxesFile | None, region: Box | None, sink: Any) -> dict:
        """Run one opened video into ``sink.add(record, frame)``; returns its stats."""
        info = reader.info
        if file is not None:
            file.check_frame_keys()
            if info.frame_count and file.max_frame() >= info.frame_count + max(2, info.frame_count // 50):
                file.check_frames_within(info.frame_count, info.path)
        timings = Timings()
        stats: dict[str, Any] = {"boxes_ignored": 0, "reseeds": 0, "several_people_frames": 0}
        bar = Progress(os.path.basename(info.path), info.frame_count, enabled=self.progress)
        wait0 = self.engine.wait_s
        calls0, crops0 = self.engine.calls, self.engine.crops_run
        t_start = time.perf_counter()

        def emit(rec: Record, frame: np.ndarray | None) -> None:
            t0 = time.perf_counter()
            sink.add(rec, frame)
            timings.write_s += time.perf_counter() - t0
            timings.frames += 1
            bar.update()

        try:
            if file is None and region is None:
                self._video_single_subject(reader, emit, timings, stats)
            else:
                self._video_static(reader, self._video_boxes(file, region, stats), emit, timings)
        finally:
            bar.close()
            reader.close()
        timings.wall_s = time.perf_counter() - t_start
        timings.model_wait_s = self.engine.wait_s - wait0
        timings.model_calls = self.engine.calls - calls0
        timings.crops = self.engine.crops_run - crops0
        self.timings.add(timings)
        stats.update(n_frames=timings.frames, repaired_times=reader.repaired_times, timings=timings.as_dict())
        return stats

    def _video_static(self, reader: VideoReader, boxes_for: Callable, emit: Callable, timings: Timings) -> None:
        engine, padding = self.engine, self.subject.padding

        def prepare(frame: tuple[int, float, np.ndarray]) -> Item:
            index, t, img = frame
            boxes = boxes_for(index)
            crops = engine.crop_boxes(img, np.stack([b.array() for b in boxes]), padding) if boxes else None
            return Item(index, t, img, boxes, crops)

        batcher = Batcher(engine, timings)
        prefetch = Prefetch(iter(reader), prepare, 2 * engine.batch_size, timings)
        try:
            for item in prefetch:
                for done in batcher.add(item):
                    self._emit_video_item(done, emit)
            for done in batcher.flush():
                self._emit_video_item(done, emit)
        finally:
            prefetch.close()

    def _emit_video_item(self, item: Item, emit: Callable) -> None:
        if not item.boxes:
            emit(Record.empty(item.index, item.time_s, self.num_joints), item.frame)
            return
        box = item.boxes[0]
        rec = Record(item.index, item.time_s, item.keypoints[0], item.scores[0], box.array(), box.source, box.score)
        emit(rec, item.frame)

    def _video_single_subject(self, reader: VideoReader, emit: Callable, timings: Timings, stats: dict) -> None:
        engine, settings = self.engine, self.subject
        follower = Follower(settings)
        prefetch = Prefetch(iter(reader), None, 2 * engine.batch_size, timings)
        frames = iter(prefetch)
        buffer: collections.deque[tuple[int, float, np.ndarray]] = collections.deque()
        exhausted = False
        pending: tuple | None = None  # the previous batch, decoded while the next one runs
        first_seed = True

        def decode_emit(batch: tuple) -> None:
            chunk, heatmaps, centers, scales, box = batch
            t0 = time.perf_counter()
            kp, sc = engine.decode_heatmaps(heatmaps, centers, scales)
            timings.decode_s += time.perf_counter() - t0
            for k, (index, t, img) in enumerate(chunk):
                emit(Record(index, t, kp[k], sc[k], box, "track"), img)

        try:
            while True:
                while len(buffer) < engine.batch_size and not exhausted:
                    try:
                        buffer.append(next(frames))
                    except StopIteration:
                        exhausted = True
                if not buffer:
                    break
                if follower.box is None:
                    if pending is not None:
                        decode_emit(pending)
                        pending = None
                    chunk = [buffer.popleft() for _ in range(len(buffer))]
                    t0, w0 = time.perf_counter(), engine.wait_s
                    found = seed(engine, [img for _, _, img in chunk], settings)
                    timings.seed_s += time.perf_counter() - t0 - (engine.wait_s - w0)
                    for k, (index, t, img) in enumerate(chunk):
                        crowd = several_people(found, k)
                        if crowd and first_seed:
                            raise SeveralPeopleError(
                                f"{reader.path}: frame {index} shows several people; single-subject mode needs "
                                "one: give boxes (--boxes) or a region (--region)"
                            )
                        stats["several_people_frames"] += int(crowd)
                        emit(Record(index, t, found.keypoints[k], found.scores[k], found.boxes[k], "seed"), img)
                    first_seed = False
                    follower.update(found.keypoints[-1], found.scores[-1])
                    continue
                chunk = [buffer.popleft() for _ in range(min(engine.batch_size, len(buffer)))]
                box = follower.box
                t0 = time.perf_counter()
                centers, scales = engine.center_scale(np.repeat(box[None], len(chunk), axis=0), settings.padding)
                crops = np.concatenate([engine.crop(img, centers[0], scales[0]).images for _, _, img in chunk])
                timings.crop_s += time.perf_counter() - t0
                running = engine.dispatch(crops)
                if pending is not None:
                    decode_emit(pending)  # overlaps the batch just started
                heatmaps = running.result()
                confident = engine.scores(heatmaps).mean(axis=1) >= settings.reseed_below
                keep = len(chunk)
                if not confident.all():
                    keep = int(np.argmin(confident)) + 1  # up to and including the first unconfident frame
                    buffer.extendleft(reversed(chunk[keep:]))
                    follower.box = None
                    follower.reseeds += 1
                else:
                    kp, sc = engine.decode_heatmaps(heatmaps[-1:], centers[-1:], scales[-1:])
                    follower.update(kp[0], sc[0])
                pending = (chunk[:keep], heatmaps[:keep], centers[:keep], scales[:keep], box)
            if pending is not None:
                decode_emit(pending)
        finally:
            prefetch.close()
        stats["reseeds"] = follower.reseeds

    # ------------------------------------------------------------------ images

    def image(self, image: str | os.PathLike[str] | np.ndarray, *, boxes: Any = None) -> ImagePrediction:
        """Predict one image (a path, or an RGB uint8 array): the single subject, or one person per box
        ((x, y, w, h[, score]) sequences or ``Box`` objects)."""
        if isinstance(image, np.ndarray):
            if image.ndim != 3 or image.shape[2] != 3:
                raise ValueError(f"image: expected an (H, W, 3) RGB array, got shape {image.shape}")
            bgr, path = np.ascontiguousarray(image[:, :, ::-1].astype(np.uint8)), "<array>"
        else:
            path = os.fspath(image)
            bgr = _read_image(path)
            if bgr is None:
                raise VideoError(f"{path}: cannot read or decode the image")
        records: list[Record] = []
        given = None if boxes is None else _as_boxes(boxes, path)
        item = Item(0, None, bgr, given or [], None, path=path)
        for done in self._images([item], given is not None, Timings()):
            records = self._image_records(done)
        return ImagePrediction.from_records(path, records, self.num_joints)

    def _image_records(self, item: Item) -> list[Record]:
        if not item.boxes:
            return [Record.empty(0, None, self.num_joints)]
        return [
            Record(0, None, item.keypoints[p], item.scores[p], b.array(), b.source, b.score, person=p)
            for p, b in enumerate(item.boxes)
        ]

    def _images(self, items: Iterator[Item] | list[Item], with_boxes: bool, timings: Timings) -> Iterator[Item]:
        """Finished image items, in order. With boxes: batched crops; without: single subject, seeded in
        batches, refusing images with several people."""
        engine = self.engine
        if with_boxes:
            batcher = Batcher(engine, timings)
            for item in items:
                if item.error is not None:
                    yield item
                    continue
                if item.boxes and item.crops is None:
                    t0 = time.perf_counter()
                    item.crops = engine.crop_boxes(item.frame, np.stack([b.array() for b in item.boxes]))
                    timings.crop_s += time.perf_counter() - t0
                yield from batcher.add(item)
            yield from batcher.flush()
            return
        batch: list[Item] = []

        def run(batch: list[Item]) -> list[Item]:
            ok = [it for it in batch if it.error is None]
            if ok:
                t0, w0 = time.perf_counter(), engine.wait_s
                found = seed(engine, [it.frame for it in ok], self.subject)
                timings.seed_s += time.perf_counter() - t0 - (engine.wait_s - w0)
                for k, it in enumerate(ok):
                    if several_people(found, k):
                        raise SeveralPeopleError(
                            f"{it.path}: the image shows several people; give their boxes (--boxes FILE)"
                        )
                    it.boxes = [Box(tuple(float(v) for v in found.boxes[k]), 1.0, "seed")]
                    it.keypoints, it.scores = found.keypoints[k : k + 1], found.scores[k : k + 1]
            return batch

        for item in items:
            batch.append(item)
            if len(batch) == engine.batch_size:
                yield from run(batch)
                batch = []
        if batch:
            yield from run(batch)

    # ------------------------------------------------------------------ files

    def run(
        self,
        inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | RunPlan,
        out_dir: str | os.PathLike[str] | None = None,
        *,
        boxes: str | os.PathLike[str] | None = None,
        regions: dict[str | None, tuple[float, float, float, float]] | None = None,
        outputs: Sequence[str] = DEFAULT_OUTPUTS,
        series: SeriesSettings | None = None,
        command: Sequence[str] | None = None,
        report: Callable[[str], None] | None = print,
    ) -> RunSummary:
        """Predict images, folders and videos into result files under ``out_dir`` (see ``outputs``).

        ``inputs`` may also be a :class:`RunPlan` (from :func:`plan_run`, which checks everything that can
        be checked before the model runs). ``report`` receives the per-video quality reports and summary
        lines (None: quiet).
        """
        if isinstance(inputs, RunPlan):
            plan = inputs
        else:
            if out_dir is None:
                raise ValueError("run: out_dir is required")
            plan = plan_run(
                inputs, out_dir, boxes=boxes, regions=regions, outputs=outputs, min_box_score=self.min_box_score
            )
        series = series or SeriesSettings(min_score=self.subject.min_score)
        if series.keypoint_format == "openpose18" and self.keypoint_set.name != "coco":
            raise ValueError("keypoint format 'openpose18' needs a COCO-17 model")
        header = {
            "created": provenance.now(),
            "command": list(command) if command is not None else None,
            "software": provenance.software(),
            "model": self.loaded.description,
            "inference": self.settings(),
            "boxes": {
                "mode": plan.boxes.mode,
                "path": plan.boxes.path,
                "regions": {str(k): v for k, v in plan.boxes.regions.items()},
            },
            "series": series.to_dict(),
        }
        summary = RunSummary(plan.out_dir, [], 0, [], self.timings)
        t0 = time.perf_counter()
        self.engine.warm_up()  # compile once, before any input (kept out of the per-input timings)
        self.timings.compile_s += time.perf_counter() - t0
        if report:
            model = self.loaded.description.get("path", "the model")
            report(f"model {model}: compiled in {time.perf_counter() - t0:.1f} s")
        if plan.images:
            self._run_images(plan, header, series, summary, report)
        for v in plan.videos:
            self._run_video(v, plan, header, series, summary, report)
        return summary

    def _run_images(
        self,
        run: RunPlan,
        header: dict[str, Any],
        series: SeriesSettings,
        summary: RunSummary,
        report: Callable[[str], None] | None,
    ) -> None:
        kset, images, stems, plan, out, outputs = (
            self.keypoint_set,
            run.images,
            run.stems,
            run.boxes,
            run.out_dir,
            run.outputs,
        )
        sink = ImageOutputs(out, kset.names, kset.skeleton, outputs, header, series.min_score)
        timings = Timings()
        with_boxes = plan.mode != "single_subject"
        engine = self.engine
        bar = Progress("images", len(images), unit="images", enabled=self.progress)
        t_start, wait0, calls0, crops0 = time.perf_counter(), engine.wait_s, engine.calls, engine.crops_run

        def boxes_of(path: Path) -> list[Box]:
            if plan.mode == "region":
                region = plan.region_for(path)
                return [Box(region, 1.0, "region")] if region else []
            if plan.mode == "file":
                return plan.keep(plan.file_for(path).for_image(path.stem))
            return []

        def produce() -> Iterator[Item]:
            for i, p in enumerate(images):
                img = _read_image(str(p))
                if img is None:
                    yield Item(i, None, None, path=str(p), error="cannot read or decode the image")
                    continue
                yield Item(i, None, img, boxes_of(p), path=str(p))

        def prepare(item: Item) -> Item:
            if item.error is None and item.boxes:
                item.crops = engine.crop_boxes(item.frame, np.stack([b.array() for b in item.boxes]))
            return item

        prefetch = Prefetch(produce(), prepare if with_boxes else None, 2 * engine.batch_size, timings)
        complete = False
        try:
            for item in self._images(iter(prefetch), with_boxes, timings):
                t0 = time.perf_counter()
                if item.error is not None:
                    sink.skip(item.path, item.error)
                    if report:
                        report(f"skipped {item.path}: {item.error}")
                else:
                    sink.add(item.path, stems[Path(item.path)], item.frame, self._image_records(item))
                    timings.frames += 1
                timings.write_s += time.perf_counter() - t0
                bar.update()
            complete = True
        finally:
            prefetch.close()
            bar.close()
            sink.finish(complete)  # what was done is written either way
        timings.wall_s = time.perf_counter() - t_start
        timings.model_wait_s = engine.wait_s - wait0
        timings.model_calls, timings.crops = engine.calls - calls0, engine.crops_run - crops0
        self.timings.add(timings)
        summary.images_predicted = len(sink.done)
        summary.images_skipped = list(sink.skipped)
        summary.inputs.append({"kind": "images", "count": len(images), "files": dict(sink.files)})
        if report:
            report(
                f"images: {len(sink.done)} predicted, {len(sink.skipped)} skipped (unreadable), "
                f"{len(sink.coco)} people -> {out}"
            )

    def _run_video(
        self,
        path: Path,
        run: RunPlan,
        header: dict[str, Any],
        series: SeriesSettings,
        summary: RunSummary,
        report: Callable[[str], None] | None,
    ) -> None:
        kset, stem, plan, out, outputs = self.keypoint_set, run.stems[path], run.boxes, run.out_dir, run.outputs
        reader = VideoReader(path)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            video_hash = pool.submit(provenance.sha256_file, path)
            head = dict(header, video={"path": str(path.resolve()), "sha256": None})
            file = plan.file_for(path)
            if file is not None:
                head["boxes"] = dict(header["boxes"], file=file.path, file_sha256=provenance.sha256_file(file.path))
            sink = VideoOutputs(out, stem, str(path), reader.info, kset.names, kset.skeleton, outputs, head, series)
            region = plan.region_for(path) if plan.mode == "region" else None
            try:
                stats = self._predict_video(reader, file, None if region is None else Box(region, 1.0, "region"), sink)
            except BaseException:
                sink.close()
                raise
            head["video"]["sha256"] = video_hash.result()
        series_out = sink.finish(stats)
        if file is not None:  # after the results are written: they stay, the error names the mismatch
            file.check_frames_within(stats["n_frames"], str(path))
        entry = {"kind": "video", "path": str(path), "stem": stem, "files": dict(sink.files), "stats": stats}
        entry["quality"] = series_out.quality
        summary.inputs.append(entry)
        if report:
            t = stats["timings"]
            report(
                f"{path.name}: {stats['n_frames']} frames, {t['frames_per_s'] or 0:.1f} frames/s; "
                f"boxes: {sink_sources(sink)}\n" + format_quality_report(series_out.quality)
            )


def sink_sources(sink: VideoOutputs) -> str:
    counts: dict[str, int] = {}
    for r in sink.records:
        counts[r.box_source] = counts.get(r.box_source, 0) + 1
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))


__all__ = ["Predictor", "RunPlan", "RunSummary", "Timings", "plan_run"]
