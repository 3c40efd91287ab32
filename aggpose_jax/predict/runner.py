"""The prediction pipeline: inputs -> boxes -> batched crops -> model -> keypoints -> result sinks.

A reader thread decodes video frames (with their container timestamps) or image files ahead of the
model, and, when the boxes are known in advance (a boxes file or a fixed region), crops them too. The
main thread fills batches of ``batch_size`` crops, starts the model on one batch and decodes the
previous one (DARK) and writes its results while the model runs. In single-subject mode each batch of
frames is cropped with the box of the last frame of the batch before (see :mod:`.subject`); only the
cheap crop waits for the model there, reading still runs ahead.

A run (:meth:`Predictor.run`) checks everything it can before the model runs (:func:`plan_run`: the inputs,
the boxes files against each video's frames, the smoothing against each video's frame rate, the output
folder and earlier results in it), then processes every input it can: an input that cannot be processed
(an unreadable video, an undecodable image, an image with several people and no boxes) is reported and
skipped, the others are done (:attr:`RunSummary.exit_status` is then :data:`EXIT_PARTIAL`). What the run
should tell a user is a :class:`PredictionWarning` (one line each): an incomplete video, frames whose
subject identity is uncertain, several people at the start of a single-subject video, a skipped input.

:class:`Predictor` is the Python API; ``aggpose-predict`` (:mod:`.cli`) calls :meth:`Predictor.run`.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import os
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from aggpose_jax.pose.keypoints import KeypointSet, keypoint_set_for
from aggpose_jax.predict import provenance
from aggpose_jax.predict.batching import Batcher, Item, Prefetch, Timings
from aggpose_jax.predict.boxes import Box, BoxesError, BoxesFile, BoxPlan
from aggpose_jax.predict.engine import CropEngine
from aggpose_jax.predict.images import read_image
from aggpose_jax.predict.model import LoadedModel, load_model
from aggpose_jax.predict.outputs import (
    DEFAULT_OUTPUTS,
    LOG_FILE,
    OUTPUT_KINDS,
    ImageOutputs,
    OutputError,
    RunManifest,
    VideoOutputs,
    check_out_dir,
    earlier_results,
    frame_ranges,
    overlay_codec,
    planned_files,
    unique_stems,
)
from aggpose_jax.predict.progress import Progress
from aggpose_jax.predict.results import ImagePrediction, Record, VideoPrediction
from aggpose_jax.predict.sequences import format_quality_report
from aggpose_jax.predict.series import SeriesSettings
from aggpose_jax.predict.subject import Follower, SeveralPeopleError, SubjectSettings, seed, several_people
from aggpose_jax.predict.video import NativeLog, VideoError, VideoInfo, VideoReader, is_image, is_video, list_inputs

EXIT_PARTIAL = 3  # a run that finished, but some inputs failed, were skipped or are incomplete
SEVERAL_PEOPLE = "the image shows several people; give their boxes (--boxes FILE)"


class PredictionWarning(UserWarning):
    """Something a user of the results must know (one line, naming the input): an incomplete video, frames
    whose subject identity is uncertain, a skipped input."""


class PlanError(ValueError):
    """Problems found before the model runs, one line each (``problems``)."""

    def __init__(self, problems: Sequence[str]):
        self.problems = [str(p) for p in problems]
        super().__init__("\n".join(self.problems))


def _warn(message: str) -> None:
    warnings.warn(message, PredictionWarning, stacklevel=3)


def _spans(ranges: list[dict[str, Any]], most: int = 3) -> str:
    def one(r: dict[str, Any]) -> str:
        frames = f"{r['start_frame']}" if r["start_frame"] == r["end_frame"] else f"{r['start_frame']}-{r['end_frame']}"
        return f"{frames} ({r['start_s']:.2f}-{r['end_s']:.2f} s)"

    text = ", ".join(one(r) for r in ranges[:most])
    return text + (f" and {len(ranges) - most} more" if len(ranges) > most else "")


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
    the output folder (writable) and kinds, a distinct output stem per input, the inputs that cannot be
    processed (``failed``: path -> reason, reported and skipped) and the earlier run's files that the run
    replaces (``replace``, with ``overwrite``)."""

    out_dir: str
    images: list[Path]
    videos: list[Path]
    infos: dict[Path, VideoInfo]
    boxes: BoxPlan
    outputs: list[str]
    stems: dict[Path, str]
    failed: dict[Path, str] = dataclasses.field(default_factory=dict)
    replace: list[str] = dataclasses.field(default_factory=list)


def plan_run(
    inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    boxes: str | os.PathLike[str] | None = None,
    regions: dict[str | None, tuple[float, float, float, float]] | None = None,
    outputs: Sequence[str] = DEFAULT_OUTPUTS,
    min_box_score: float = 0.0,
    series: SeriesSettings | None = None,
    overwrite: bool = False,
) -> RunPlan:
    """Check what can be checked before the model runs, and raise :class:`PlanError` with every problem
    found (one line each): the inputs exist and have known extensions; the boxes files parse and name only
    frames the videos have (counted exactly when the container's count cannot tell); the smoothing can run
    at each video's frame rate; the output kinds exist, the folder is writable and holds no earlier results
    (unless ``overwrite``: they are then replaced as a whole, see :func:`earlier_results`). A video that
    cannot be opened is not a problem of the call: it is listed in ``failed`` and skipped (unless no input
    is left)."""
    bad = [k for k in outputs if k not in OUTPUT_KINDS]
    if bad:
        raise OutputError(f"unknown output {bad[0]!r}; choose from {', '.join(OUTPUT_KINDS)}")
    paths = list_inputs(inputs)
    images = [p for p in paths if is_image(p)]
    videos = [p for p in paths if is_video(p)]
    plan = BoxPlan(boxes, regions, min_box_score)
    plan.check_inputs(paths, videos)
    problems: list[str] = []
    failed: dict[Path, str] = {}
    infos: dict[Path, VideoInfo] = {}
    for v in videos:
        try:
            with VideoReader(v) as reader:
                infos[v] = info = reader.info
                file = plan.file_for(v)
                if file is not None:
                    _check_boxes_file(file, reader)
        except VideoError as err:
            failed[v] = str(err)
            continue
        except BoxesError as err:
            problems.append(str(err))
        if series is not None:
            try:
                series.check_at(info.fps, str(v))
            except ValueError as err:
                problems.append(str(err))
    if problems:
        raise PlanError(problems)
    if paths and len(failed) == len(paths):
        raise PlanError(list(failed.values()))
    out = check_out_dir(out_dir)
    stems = unique_stems(paths)
    live = [v for v in videos if v not in failed]
    planned = planned_files(out, stems, live, images, outputs)
    folders = [p for p in planned if os.path.isdir(p)]
    if folders:
        raise PlanError([f"{p}: a folder is in the way of an output file" for p in folders])
    earlier = earlier_results(out)
    in_the_way = sorted(set(earlier) | {p for p in planned if os.path.exists(p)})
    if in_the_way and not overwrite:
        names = ", ".join(os.path.basename(p) for p in in_the_way[:3]) + (", ..." if len(in_the_way) > 3 else "")
        raise PlanError(
            [
                f"{out}: holds the results of an earlier run ({len(in_the_way)} files: {names}); give another "
                "--out to keep both, or --overwrite to replace that run's files"
            ]
        )
    used = {os.path.abspath(p) for p in paths}
    clash = [p for p in in_the_way if os.path.abspath(p) in used]
    if clash:
        raise PlanError([f"{clash[0]}: an input is a file of the earlier run that --overwrite would replace"])
    return RunPlan(out, images, videos, infos, plan, list(outputs), stems, failed, in_the_way)


def _check_boxes_file(file: BoxesFile, reader: VideoReader) -> None:
    """A video's boxes file names frame indices the video has: against the container's frame count, and
    when the file reaches that count, against the frames counted exactly."""
    file.check_frame_keys()
    count = reader.info.frame_count
    last = file.max_frame()
    if not count or last < count:
        return
    if last < count + max(2, count // 50):  # within what an estimated count may be off by: count exactly
        count = reader.count_frames()
    file.check_frames_within(count, reader.path)


@dataclasses.dataclass
class RunSummary:
    """What :meth:`Predictor.run` did: per input a dict (name, kind, stem, files, stats, quality), the
    inputs that failed (``{path, reason}``, skipped images included) and the videos decoded incompletely."""

    out_dir: str
    inputs: list[dict[str, Any]]
    images_predicted: int
    images_skipped: list[dict[str, str]]
    timings: Timings
    failed: list[dict[str, str]] = dataclasses.field(default_factory=list)
    incomplete: list[str] = dataclasses.field(default_factory=list)

    @property
    def exit_status(self) -> int:
        """0 when every input was processed completely, else :data:`EXIT_PARTIAL` (3)."""
        return EXIT_PARTIAL if (self.failed or self.incomplete) else 0


class Predictor:
    """Keypoints of images and videos with a loaded AggPose (the Python API beneath ``aggpose-predict``).

    Args:
      model: a ``LoadedModel`` (:func:`aggpose_jax.predict.model.load_model`) or a ``PoseModel``;
        keypoint_set: the set of a ``PoseModel`` (default: from its joint count, 17 'coco', 21 'infant').
      flip: flip test (mirrored crops averaged, as in evaluation). decode: 'dark' or 'argmax'.
      batch_size: crops per model call (default: 4 on CPU, 16 on accelerators). subject: single-subject
        mode settings. min_box_score: boxes-file
        boxes below it are ignored. progress: show a progress bar on stderr.
      apply_exif: turn photos as their EXIF orientation says (keypoints in the picture as displayed);
        False: use the stored pixels as they are.

    ``Predictor.load(path, ...)`` loads any checkpoint kind first (see ``load_model``).
    """

    def __init__(
        self,
        model: Any,
        keypoint_set: KeypointSet | str | None = None,
        *,
        flip: bool = True,
        decode: str = "dark",
        batch_size: int | None = None,
        subject: SubjectSettings | None = None,
        min_box_score: float = 0.0,
        progress: bool = False,
        apply_exif: bool = True,
    ):
        if isinstance(model, LoadedModel):
            self.loaded = model
        else:
            kset = keypoint_set_for(model.config.num_joints, keypoint_set, where="Predictor")
            self.loaded = LoadedModel(model, kset, {"config": model.config.to_dict()})
        self.keypoint_set = self.loaded.keypoint_set
        self.engine = CropEngine(self.loaded.model, self.keypoint_set, flip=flip, decode=decode, batch_size=batch_size)
        self.subject = subject or SubjectSettings()
        self.min_box_score = float(min_box_score)
        self.progress = progress
        self.apply_exif = bool(apply_exif)
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
            "apply_exif_orientation": self.apply_exif,
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
        """Run one opened video into ``sink.add(record, frame)``; returns its stats (``decoding``: whether
        every frame was decoded; ``identity_uncertain``: the frames flagged). Warns (one line each) about
        an incomplete video, frames of uncertain identity and several people at the start."""
        info = reader.info
        name = os.path.basename(info.path)
        if file is not None:  # before the model runs (plan_run has done it for a run)
            _check_boxes_file(file, reader)
        timings = Timings()
        stats: dict[str, Any] = {"boxes_ignored": 0, "reseeds": 0, "several_people_frames": 0}
        bar = Progress(name, info.frame_count, enabled=self.progress)
        wait0 = self.engine.wait_s
        calls0, crops0 = self.engine.calls, self.engine.crops_run
        t_start = time.perf_counter()
        flags: list[tuple[int, float, bool]] = []

        def emit(rec: Record, frame: np.ndarray | None) -> None:
            t0 = time.perf_counter()
            sink.add(rec, frame)
            flags.append((rec.frame, rec.time_s, rec.identity_uncertain))
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
        decoding = reader.completeness()
        frames = [f for f, _, _ in flags]
        times = np.array([t for _, t, _ in flags], np.float64)
        uncertain = np.array([u for _, _, u in flags], bool)
        ranges = frame_ranges(frames, times, uncertain)
        stats.update(
            n_frames=timings.frames,
            repaired_times=reader.repaired_times,
            timings=timings.as_dict(),
            decoding=decoding,
            identity_uncertain={"frames": int(uncertain.sum()), "ranges": ranges},
        )
        if not decoding["complete"]:
            until = decoding["decoded_until_s"] or 0.0
            of = f" of {decoding['duration_container_s']:.2f} s" if decoding["duration_container_s"] else ""
            messages = decoding["decoder_messages"]
            _warn(
                f"{name}: incomplete: {decoding['frames_decoded']} of the container's "
                f"{decoding['frame_count_container']} frames decoded (up to {until:.2f} s{of})"
                + (f", {messages} decoder errors" if messages else "")
                + "; the results hold the decoded frames and say complete: false"
            )
        elif decoding["decoder_messages"]:
            _warn(
                f"{name}: the decoder reported {decoding['decoder_messages']} errors (all "
                f"{decoding['frames_decoded']} frames decoded; some may be damaged; see {LOG_FILE})"
            )
        if ranges:
            _warn(
                f"{name}: identity uncertain in frames {_spans(ranges)}: the subject was not found where it was "
                "last seen but another person was; those keypoints may be theirs, flagged identity_uncertain "
                "and not counted as valid"
            )
        crowd = stats.get("several_people_at_start")
        if crowd is not None:
            x, y, w, h = crowd["box"]
            _warn(
                f"{name}: frame {crowd['frame']} shows several people; following the most confident one "
                f"(box {x:.0f},{y:.0f},{w:.0f},{h:.0f}); give --region or --boxes to choose another"
            )
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
                    found = seed(engine, [img for _, _, img in chunk], settings, anchor=follower.anchor)
                    timings.seed_s += time.perf_counter() - t0 - (engine.wait_s - w0)
                    for k, (index, t, img) in enumerate(chunk):
                        crowd = several_people(found, k)
                        if crowd and follower.anchor is None and "several_people_at_start" not in stats:
                            stats["several_people_at_start"] = {"frame": index, "box": found.boxes[k].tolist()}
                        stats["several_people_frames"] += int(crowd)
                        uncertain = bool(found.uncertain[k])
                        rec = Record(index, t, found.keypoints[k], found.scores[k], found.boxes[k], "seed")
                        rec.identity_uncertain = uncertain
                        emit(rec, img)
                    last = chunk[-1][1]
                    follower.seeded(found.keypoints[-1], found.scores[-1], bool(found.uncertain[-1]), last)
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
                    follower.lose()
                else:
                    kp, sc = engine.decode_heatmaps(heatmaps[-1:], centers[-1:], scales[-1:])
                    follower.update(kp[0], sc[0], chunk[-1][1])
                pending = (chunk[:keep], heatmaps[:keep], centers[:keep], scales[:keep], box)
            if pending is not None:
                decode_emit(pending)
        finally:
            prefetch.close()
        stats["reseeds"] = follower.reseeds

    # ------------------------------------------------------------------ images

    def image(self, image: str | os.PathLike[str] | np.ndarray, *, boxes: Any = None) -> ImagePrediction:
        """Predict one image (a path, or an RGB uint8 array): the single subject, or one person per box
        ((x, y, w, h[, score]) sequences or ``Box`` objects, in the picture as displayed). Returns one
        :class:`ImagePrediction` (its people along the first axis). A file is turned by its EXIF
        orientation unless the predictor was made with ``apply_exif=False``. Without boxes, an image
        showing several people raises :class:`SeveralPeopleError`."""
        orientation = None
        if isinstance(image, np.ndarray):
            if image.ndim != 3 or image.shape[2] != 3:
                raise ValueError(f"image: expected an (H, W, 3) RGB array, got shape {image.shape}")
            bgr, path = np.ascontiguousarray(image[:, :, ::-1].astype(np.uint8)), "<array>"
        else:
            path = os.fspath(image)
            bgr, orientation = read_image(path, apply_exif=self.apply_exif)
            if bgr is None:
                raise VideoError(f"{path}: cannot read or decode the image")
        records: list[Record] = []
        given = None if boxes is None else _as_boxes(boxes, path)
        item = Item(0, None, bgr, given or [], None, path=path)
        for done in self._images([item], given is not None, Timings()):
            if done.error == SEVERAL_PEOPLE:
                raise SeveralPeopleError(f"{path}: {SEVERAL_PEOPLE}")
            records = self._image_records(done)
        applied = self.apply_exif and orientation not in (None, 1)
        return ImagePrediction.from_records(path, records, self.num_joints, orientation, applied)

    def _image_records(self, item: Item) -> list[Record]:
        if not item.boxes:
            return [Record.empty(0, None, self.num_joints)]
        return [
            Record(0, None, item.keypoints[p], item.scores[p], b.array(), b.source, b.score, person=p)
            for p, b in enumerate(item.boxes)
        ]

    def _images(self, items: Iterator[Item] | list[Item], with_boxes: bool, timings: Timings) -> Iterator[Item]:
        """Finished image items, in order. With boxes: batched crops; without: single subject, seeded in
        batches; an image with several people gets the error :data:`SEVERAL_PEOPLE` (no keypoints)."""
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
                        it.error = SEVERAL_PEOPLE
                        continue
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
        overwrite: bool = False,
    ) -> RunSummary:
        """Predict images, folders and videos into result files under ``out_dir`` (see ``outputs``).

        ``inputs`` may also be a :class:`RunPlan` (from :func:`plan_run`, which checks everything that can
        be checked before the model runs). A folder holding an earlier run's results is refused
        (:class:`PlanError`) unless ``overwrite``: then that run's files are removed first, as a whole.
        An input that cannot be processed is skipped and listed in ``RunSummary.failed`` (and in
        ``aggpose-predict.json``); ``RunSummary.exit_status`` is then 3. ``report`` receives the
        per-video quality reports and summary lines (None: quiet); warnings are
        :class:`PredictionWarning`. What FFmpeg and OpenCV print goes to ``aggpose-predict.log``.
        """
        series = series or SeriesSettings(min_score=self.subject.min_score)
        if isinstance(inputs, RunPlan):
            plan = inputs
        else:
            if out_dir is None:
                raise ValueError("run: out_dir is required")
            plan = plan_run(
                inputs,
                out_dir,
                boxes=boxes,
                regions=regions,
                outputs=outputs,
                min_box_score=self.min_box_score,
                series=series,
                overwrite=overwrite,
            )
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
        with NativeLog() as native:
            self._run_planned(plan, header, series, summary, report, native)
        return summary

    def _run_planned(
        self,
        plan: RunPlan,
        header: dict[str, Any],
        series: SeriesSettings,
        summary: RunSummary,
        report: Callable[[str], None] | None,
        native: NativeLog,
    ) -> None:
        out = plan.out_dir
        for path in plan.replace:  # an earlier run's files, replaced as a whole (overwrite)
            os.remove(path)
        if plan.replace and report:
            report(f"replaced the earlier run in {out} ({len(plan.replace)} files removed)")
        entries = {
            p: {"path": str(p), "kind": "video" if is_video(p) else "image", "stem": plan.stems[p], "status": "pending"}
            for p in plan.images + plan.videos
        }
        for p, reason in plan.failed.items():
            entries[p].update(status="failed", reason=reason)
            summary.failed.append({"path": str(p), "reason": reason})
            _warn(f"{p.name}: skipped: {reason}")
        manifest = RunManifest(out, header, list(entries.values()))
        if "video" in plan.outputs and plan.videos:
            codec, note = overlay_codec()
            manifest.extra["overlay_codec"] = codec
            if note:
                _warn(note)
        complete = False
        try:
            t0 = time.perf_counter()
            self.engine.warm_up()  # compile once, before any input (kept out of the per-input timings)
            compile_s = time.perf_counter() - t0
            self.timings.compile_s += compile_s
            header["compile_s"] = round(compile_s, 3)
            manifest.extra["compile_s"] = header["compile_s"]
            if report:
                model = self.loaded.description.get("path", "the model")
                report(f"model {model}: compiled in {compile_s:.1f} s")
            if plan.images:
                self._run_images(plan, header, series, summary, report, entries, manifest)
            for v in plan.videos:
                if v in plan.failed:
                    continue
                try:
                    self._run_video(v, plan, header, series, summary, report, entries[v], manifest)
                except OutputError:
                    raise  # a full disk or a lost folder: nothing further can be written
                except (VideoError, BoxesError, ValueError) as err:  # this input only
                    reason = str(err)
                    entries[v].update(status="failed", reason=reason)
                    summary.failed.append({"path": str(v), "reason": reason})
                    _warn(f"{v.name}: failed: {reason}")
                manifest.write(complete=False)
            complete = True
        finally:
            try:
                if native.save(os.path.join(out, LOG_FILE)):
                    manifest.add_files([LOG_FILE])
                manifest.extra["exit_status"] = summary.exit_status if complete else None
                manifest.extra["failed"] = len(summary.failed)
                manifest.extra["incomplete"] = len(summary.incomplete)
                manifest.write(complete=complete)
            except (OSError, OutputError):
                if complete:
                    raise
                # else the error that stopped the run is the one to report (e.g. the first write to a full disk)
        if report and (summary.failed or summary.incomplete):
            parts = [f"{len(summary.failed)} failed or skipped"] if summary.failed else []
            parts += [f"{len(summary.incomplete)} incomplete"] if summary.incomplete else []
            report(f"not all inputs were processed completely: {', '.join(parts)} (see {manifest.path})")

    def _run_images(
        self,
        run: RunPlan,
        header: dict[str, Any],
        series: SeriesSettings,
        summary: RunSummary,
        report: Callable[[str], None] | None,
        entries: dict[Path, dict[str, Any]],
        manifest: RunManifest,
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
        manifest.add_files(sink.files.values())
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
                img, orientation = read_image(str(p), apply_exif=self.apply_exif)
                if img is None:
                    yield Item(i, None, None, path=str(p), error="cannot read or decode the image")
                    continue
                yield Item(i, None, img, boxes_of(p), path=str(p), exif=orientation)

        def prepare(item: Item) -> Item:
            if item.error is None and item.boxes:
                item.crops = engine.crop_boxes(item.frame, np.stack([b.array() for b in item.boxes]))
            return item

        prefetch = Prefetch(produce(), prepare if with_boxes else None, 2 * engine.batch_size, timings)
        complete = False
        try:
            for item in self._images(iter(prefetch), with_boxes, timings):
                t0 = time.perf_counter()
                entry = entries[Path(item.path)]
                if item.error is not None:
                    sink.skip(item.path, item.error)
                    entry.update(status="skipped", reason=item.error)
                    summary.failed.append({"path": item.path, "reason": item.error})
                    _warn(f"{os.path.basename(item.path)}: skipped: {item.error}")
                else:
                    turned = {
                        "exif_orientation": item.exif,
                        "orientation_applied": self.apply_exif and item.exif not in (None, 1),
                    }
                    sink.add(item.path, stems[Path(item.path)], item.frame, self._image_records(item), turned)
                    entry.update(status="done", **turned)
                    timings.frames += 1
                timings.write_s += time.perf_counter() - t0
                bar.update()
            complete = True
        finally:
            prefetch.close()
            bar.close()
            sink.finish(complete)  # what was done is written either way
            manifest.add_files(sink.pngs)
        timings.wall_s = time.perf_counter() - t_start
        timings.model_wait_s = engine.wait_s - wait0
        timings.model_calls, timings.crops = engine.calls - calls0, engine.crops_run - crops0
        self.timings.add(timings)
        summary.images_predicted = len(sink.done)
        summary.images_skipped = list(sink.skipped)
        summary.inputs.append({"kind": "images", "count": len(images), "files": dict(sink.files)})
        if report:
            report(f"images: {len(sink.done)} predicted, {len(sink.skipped)} skipped, {len(sink.coco)} people -> {out}")

    def _run_video(
        self,
        path: Path,
        run: RunPlan,
        header: dict[str, Any],
        series: SeriesSettings,
        summary: RunSummary,
        report: Callable[[str], None] | None,
        entry: dict[str, Any],
        manifest: RunManifest,
    ) -> None:
        kset, stem, plan, out, outputs = self.keypoint_set, run.stems[path], run.boxes, run.out_dir, run.outputs
        reader = VideoReader(path)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            video_hash = pool.submit(provenance.sha256_file, path)
            head = dict(header, video={"path": str(path.resolve()), "sha256": None})
            file = plan.file_for(path)
            if file is not None:
                head["boxes"] = dict(header["boxes"], file=file.path, file_sha256=provenance.sha256_file(file.path))
            try:
                sink = VideoOutputs(out, stem, str(path), reader.info, kset.names, kset.skeleton, outputs, head, series)
            except BaseException:
                reader.close()
                raise
            manifest.add_files(sink.files.values())
            manifest.write(complete=False)
            region = plan.region_for(path) if plan.mode == "region" else None
            try:
                stats = self._predict_video(reader, file, None if region is None else Box(region, 1.0, "region"), sink)
            except BaseException:
                with contextlib.suppress(OSError, OutputError):  # the first error is the one to report
                    sink.close()
                raise
            head["video"]["sha256"] = video_hash.result()
        stats["timings"]["compile_s"] = header.get("compile_s", 0.0)  # the run's, done before its first input
        try:
            if file is not None:  # frames beyond the decoded ones: the boxes were not this video's
                file.check_frames_within(stats["n_frames"], str(path))
            series_out = sink.finish(stats)
        except (BoxesError, ValueError) as err:
            if isinstance(err, OutputError):
                raise
            sink.fail(str(err))
            raise
        entry.update(files=[os.path.basename(f) for f in sink.files.values()])
        if stats["decoding"]["complete"]:
            entry.update(status="done")
        else:
            entry.update(status="incomplete", reason=f"{stats['decoding']['frames_missing']} frames not decoded")
            summary.incomplete.append(str(path))
        if stats["identity_uncertain"]["frames"]:
            entry["identity_uncertain_frames"] = stats["identity_uncertain"]["frames"]
        result = {"kind": "video", "path": str(path), "stem": stem, "files": dict(sink.files), "stats": stats}
        result["quality"] = series_out.quality
        summary.inputs.append(result)
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


__all__ = [
    "EXIT_PARTIAL",
    "PlanError",
    "PredictionWarning",
    "Predictor",
    "RunPlan",
    "RunSummary",
    "Timings",
    "plan_run",
]
