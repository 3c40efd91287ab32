"""Result files of ``aggpose-predict``, written as results are made (a crash keeps what was done).

Per video ``STEM`` (the video's file stem, made unique within a call):

* ``STEM.keypoints.csv`` (``long``): ``video, frame, time_s, joint, x, y, score, box_source,
  identity_uncertain`` -- one row per joint and frame, streamed as frames are predicted (``time_s``: the
  container's presentation time; ``identity_uncertain`` 1: single-subject mode found a person far from
  where the subject was last seen, the keypoints may be someone else's). When a processed series is asked for (masking,
  gap filling, smoothing), the keypoint format changed or normalisation asked for, the file is rewritten
  once the video is done: ``x, y`` then hold the processed series (empty = NaN: masked and not filled)
  and ``x_raw, y_raw, flagged`` the model's output (``x_norm, y_norm`` with normalisation).
* ``STEM.wide.csv`` (``wide``): one row per frame: ``video, frame, time_s, box_source, box_x, box_y,
  box_w, box_h, box_score, identity_uncertain`` then ``<joint>_x, <joint>_y, <joint>_score`` per joint
  (``_x_raw``, ``_y_raw`` and ``_x_norm``, ``_y_norm`` columns as above).
* ``STEM.json`` (``json``): provenance (software, model and checkpoint SHA-256, video SHA-256, settings,
  the run's compile time), the video (fps, size, the container's frame count, start time and duration,
  the frames decoded), joint names, skeleton, the boxes of every frame and their sources, the quality
  report; ``"complete"`` is false until the video is done, and stays false when the decoder stopped
  short of the container's frames (``decoding`` says by how many) or the video failed (``error``).
* ``STEM.npz`` (``npz``): arrays ``frames, times, keypoints_raw, scores, boxes, box_scores,
  box_source, identity_uncertain, joint_names, skeleton`` (+ ``keypoints, flagged`` when processed,
  ``keypoints_normalised``).
* ``STEM.overlay.mp4`` (``video``): the frames with boxes and skeletons at the nominal rate, H.264 when an
  encoder is installed (PyAV), else MPEG-4 part 2 (``mp4v``).

For the images of a call: ``images.keypoints.csv`` (``long``: ``image, person, joint, x, y, score,
box_source, box_score``), ``images.coco.json`` (``coco``: COCO keypoint results, ``image_id`` = the
stem, or its integer for an all-digit stem), ``images.json`` (``json``: provenance, per image its EXIF
orientation and whether it was applied, skipped images with the reason) and ``STEM.overlay.png`` per
image (``png``).

For the run: ``aggpose-predict.json`` (the run: command, every input with its status -- done, incomplete,
failed or skipped, with the reason -- and every file written; ``"complete": false`` until the run ends)
and ``aggpose-predict.log`` (what FFmpeg, OpenCV and XLA printed, kept off the console; only when they
printed something). A folder holding an earlier run's results is refused unless asked to replace them
(:func:`earlier_results`).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from aggpose_jax.data.cli_errors import make_writable_dir
from aggpose_jax.evaluate.draw import draw_skeleton
from aggpose_jax.predict.results import Record
from aggpose_jax.predict.series import Series, SeriesSettings, process
from aggpose_jax.predict.video import VideoError, VideoInfo, VideoWriter, h264_encoder

OUTPUT_KINDS: tuple[str, ...] = ("long", "wide", "json", "npz", "coco", "video", "png")
DEFAULT_OUTPUTS: tuple[str, ...] = ("long", "wide", "json", "npz", "coco")
FORMAT = "aggpose-jax-predictions"
RUN_FORMAT = "aggpose-jax-prediction-run"
MANIFEST = "aggpose-predict.json"
LOG_FILE = "aggpose-predict.log"
RESERVED_STEMS = ("images", "aggpose-predict")
VIDEO_SUFFIXES = {
    "long": ".keypoints.csv",
    "wide": ".wide.csv",
    "json": ".json",
    "npz": ".npz",
    "video": ".overlay.mp4",
}
IMAGE_FILES = {"long": "images.keypoints.csv", "coco": "images.coco.json", "json": "images.json"}
SOURCE_COLORS = {"file": (0, 200, 255), "region": (255, 160, 0), "seed": (0, 0, 255), "track": (0, 220, 0)}
UNCERTAIN_COLOR = (255, 0, 255)


class OutputError(ValueError):
    """An output file or folder cannot be written (the message names it)."""


@contextlib.contextmanager
def writing(path: str) -> Iterator[None]:
    """Turn an OSError while writing ``path`` (a full disk, a lost mount) into an OutputError naming it."""
    try:
        yield
    except OutputError:
        raise
    except OSError as err:
        reason = err.strerror or str(err) or type(err).__name__
        raise OutputError(f"{path}: cannot write ({reason})") from None


def overlay_codec() -> tuple[str, str | None]:
    """(codec of the overlay videos, a note when it is not H.264): H.264 when PyAV (or an OpenCV build with
    an H.264 encoder) is installed, else MPEG-4 part 2."""
    if h264_encoder() is not None:
        return "h264", None
    return "mpeg4", (
        "overlay videos are MPEG-4 part 2 (mp4v): no H.264 encoder is installed, and browsers and slide "
        "programs may not play them; pip install av for H.264"
    )


def planned_files(
    out_dir: str, stems: dict[Path, str], videos: Sequence[Path], images: Sequence[Path], kinds: Sequence[str]
) -> list[str]:
    """Every file a run will write (absolute paths): per video, the images' files, the run's manifest."""
    files = [os.path.join(out_dir, MANIFEST)]
    for v in videos:
        files += [os.path.join(out_dir, stems[v] + VIDEO_SUFFIXES[k]) for k in VIDEO_SUFFIXES if k in kinds]
    if images:
        files += [os.path.join(out_dir, IMAGE_FILES[k]) for k in IMAGE_FILES if k in kinds]
        if "png" in kinds:
            files += [os.path.join(out_dir, f"{stems[p]}.overlay.png") for p in images]
    return files


def _our_json(path: str) -> dict[str, Any] | None:
    """The document of one of our JSON files (a run manifest or a result file), or None."""
    try:
        with open(path, encoding="utf-8") as f:
            head = f.read(4096)
            if FORMAT not in head:
                return None
            doc = json.loads(head + f.read())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return doc if isinstance(doc, dict) and str(doc.get("format", "")).startswith(FORMAT) else None


def earlier_results(out_dir: str) -> list[str]:
    """The files of earlier runs in ``out_dir`` (absolute paths): those a run manifest lists, and the
    result JSONs (with the files they list) of runs made before manifests existed."""
    if not os.path.isdir(out_dir):
        return []
    found: set[str] = set()
    for name in sorted(os.listdir(out_dir)):
        path = os.path.join(out_dir, name)
        if not name.endswith(".json") or not os.path.isfile(path):
            continue
        doc = _our_json(path)
        if doc is None:
            continue
        found.add(path)
        listed = doc.get("files") if doc.get("format") == RUN_FORMAT else list((doc.get("outputs") or {}).values())
        for other in listed or []:
            candidate = os.path.join(out_dir, os.path.basename(str(other)))
            if os.path.isfile(candidate):
                found.add(candidate)
    log = os.path.join(out_dir, LOG_FILE)
    if found and os.path.isfile(log):
        found.add(log)
    return sorted(found)


class RunManifest:
    """``aggpose-predict.json``: the run, its inputs with their status, and every file it wrote."""

    def __init__(self, out_dir: str, header: dict[str, Any], inputs: list[dict[str, Any]]):
        self.path = os.path.join(out_dir, MANIFEST)
        self.out_dir, self.header, self.inputs = out_dir, header, inputs
        self.files: list[str] = [MANIFEST]
        self.extra: dict[str, Any] = {}
        self.write(complete=False)

    def add_files(self, paths: Iterable[str]) -> None:
        for p in paths:
            name = os.path.basename(p)
            if name not in self.files:
                self.files.append(name)

    def write(self, complete: bool) -> None:
        doc = {
            "format": RUN_FORMAT,
            "version": 1,
            "complete": complete,
            "provenance": self.header,
            **self.extra,
            "inputs": self.inputs,
            "files": self.files,
        }
        with writing(self.path):
            _write_json(self.path, doc)


def check_out_dir(out_dir: str | os.PathLike[str]) -> str:
    """Create ``out_dir`` if needed and check that files can be written in it; returns its absolute path."""
    try:
        return make_writable_dir(out_dir)
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise OutputError(f"{os.path.abspath(os.fspath(out_dir))}: cannot write results there ({reason})") from None


def unique_stems(paths: Iterable[Path]) -> dict[Path, str]:
    """A distinct output stem per input: the file stem, with ``_2``, ``_3``... for repeated stems (and for
    the stems of the run's own files, ``images`` and ``aggpose-predict``)."""
    used: set[str] = set(RESERVED_STEMS)
    out: dict[Path, str] = {}
    for p in paths:
        stem, k = p.stem, 1
        while stem in used:
            k += 1
            stem = f"{p.stem}_{k}"
        used.add(stem)
        out[p] = stem
    return out


def _num(value: float, digits: int) -> str:
    return "" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _time(value: float | None) -> str:
    return "" if value is None else f"{value:.6f}"


def _write_json(path: str, obj: Any) -> None:
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=1, allow_nan=False, default=_json_default)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def _json_default(value: Any) -> Any:
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return _finite(float(value))
    if isinstance(value, np.ndarray):
        return [_json_default(v) if isinstance(v, np.generic | np.ndarray) else v for v in value.tolist()]
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _rows_file(path: str, header: Sequence[str]) -> tuple[Any, Any]:
    f = open(path, "w", newline="", encoding="utf-8")  # noqa: SIM115 - kept open while streaming
    writer = csv.writer(f)
    writer.writerow(header)
    return f, writer


def draw_overlay(
    frame_bgr: np.ndarray, records: Sequence[Record], skeleton: Sequence[tuple[int, int]], min_score: float, label: str
) -> np.ndarray:
    """A copy of the frame with each record's box (coloured by source), skeleton and a label line."""
    out = frame_bgr.copy()
    scale = max(1.0, out.shape[0] / 480.0)
    for rec in records:
        if rec.box_source == "none":
            continue
        color = UNCERTAIN_COLOR if rec.identity_uncertain else SOURCE_COLORS.get(rec.box_source, (255, 255, 255))
        if np.isfinite(rec.box).all():
            x, y, w, h = rec.box
            cv2.rectangle(out, (int(round(x)), int(round(y))), (int(round(x + w)), int(round(y + h))), color, 1)
        kp = np.concatenate([rec.keypoints, rec.scores[:, None]], axis=1)
        draw_skeleton(out, kp, skeleton, kpt_thre=min_score, radius=max(2, int(2 * scale)), thickness=int(2 * scale))
    sources = ",".join(sorted({r.box_source for r in records})) or "none"
    if any(r.identity_uncertain for r in records):
        sources += ", identity uncertain"
    text, font, size = f"{label} [{sources}]", cv2.FONT_HERSHEY_SIMPLEX, 0.4 * scale
    (tw, th), base = cv2.getTextSize(text, font, size, 1)
    cv2.rectangle(out, (0, 0), (tw + 8, th + base + 6), (0, 0, 0), -1)
    cv2.putText(out, text, (4, th + 3), font, size, (255, 255, 255), 1, cv2.LINE_AA)
    return out


class VideoOutputs:
    """The result files of one video (see the module docstring): :meth:`add` per frame, then :meth:`finish`."""

    def __init__(
        self,
        out_dir: str,
        stem: str,
        path: str,
        info: VideoInfo,
        joint_names: Sequence[str],
        skeleton: Sequence[tuple[int, int]],
        kinds: Sequence[str],
        header: dict[str, Any],
        settings: SeriesSettings,
    ):
        self.out_dir, self.stem, self.path, self.info = out_dir, stem, path, info
        self.name = os.path.basename(path)
        self.names, self.skeleton = tuple(joint_names), tuple(skeleton)
        self.kinds, self.header, self.settings = set(kinds), header, settings
        self.files: dict[str, str] = {}
        self.records: list[Record] = []
        self.stats: dict[str, Any] = {}
        self.overlay_codec: str | None = None
        self._long = self._wide = self._overlay = None
        try:
            if "long" in self.kinds:
                self._long = _rows_file(self._file("long", ".keypoints.csv"), self._long_header(False, False))
            if "wide" in self.kinds:
                self._wide = _rows_file(self._file("wide", ".wide.csv"), self._wide_header(self.names, False, False))
            if "video" in self.kinds:
                fps = info.fps or 30.0
                codec = "h264" if overlay_codec()[0] == "h264" else None
                self._overlay = VideoWriter(
                    self._file("video", ".overlay.mp4"), fps, (info.width, info.height), codec=codec
                )
                self.overlay_codec = self._overlay.codec_name
            if "json" in self.kinds:
                self._file("json", ".json")
                self._write_json(complete=False)
            if "npz" in self.kinds:
                self._file("npz", ".npz")
        except (OSError, VideoError) as err:
            self.close()
            raise OutputError(f"{out_dir}: cannot write the results of {self.name} ({err})") from None

    def _file(self, kind: str, suffix: str) -> str:
        path = os.path.join(self.out_dir, self.stem + suffix)
        self.files[kind] = path
        return path

    @staticmethod
    def _long_header(processed: bool, normalised: bool) -> list[str]:
        cols = ["video", "frame", "time_s", "joint", "x", "y", "score", "box_source", "identity_uncertain"]
        cols += ["x_raw", "y_raw", "flagged"] if processed else []
        return cols + (["x_norm", "y_norm"] if normalised else [])

    @staticmethod
    def _wide_header(names: Sequence[str], processed: bool, normalised: bool) -> list[str]:
        cols = ["video", "frame", "time_s", "box_source", "box_x", "box_y", "box_w", "box_h", "box_score"]
        cols.append("identity_uncertain")
        cols += [f"{n}_{c}" for n in names for c in ("x", "y", "score")]
        cols += [f"{n}_{c}" for n in names for c in ("x_raw", "y_raw")] if processed else []
        return cols + ([f"{n}_{c}" for n in names for c in ("x_norm", "y_norm")] if normalised else [])

    def _box_cells(self, rec: Record) -> list[str]:
        cells = [rec.box_source] + [_num(float(v), 2) for v in rec.box] + [_num(float(rec.box_score), 4)]
        return cells + [int(rec.identity_uncertain)]

    def add(self, rec: Record, frame_bgr: np.ndarray | None) -> None:
        """Record one frame's result and stream it to the CSVs and the overlay video."""
        self.records.append(rec)
        t = _time(rec.time_s)
        if self._long is not None:
            f, writer = self._long
            with writing(self.files["long"]):
                for j, name in enumerate(self.names):
                    x, y = (float(v) for v in rec.keypoints[j])
                    score = _num(float(rec.scores[j]), 4)
                    row = [self.name, rec.frame, t, name, _num(x, 3), _num(y, 3), score, rec.box_source]
                    writer.writerow(row + [int(rec.identity_uncertain)])
                f.flush()
        if self._wide is not None:
            f, writer = self._wide
            cells = [self.name, rec.frame, t] + self._box_cells(rec)
            for j in range(len(self.names)):
                x, y = (float(v) for v in rec.keypoints[j])
                cells += [_num(x, 3), _num(y, 3), _num(float(rec.scores[j]), 4)]
            with writing(self.files["wide"]):
                writer.writerow(cells)
                f.flush()
        if self._overlay is not None and frame_bgr is not None:
            label = f"{self.name} frame {rec.frame} t={rec.time_s:.3f}s"
            with writing(self.files["video"]):
                self._overlay.write(draw_overlay(frame_bgr, [rec], self.skeleton, self.settings.min_score, label))

    def close(self) -> None:
        """Close the streams (what was written stays)."""
        for kind, stream in (("long", self._long), ("wide", self._wide)):
            if stream is not None:
                with writing(self.files[kind]):
                    stream[0].close()
        if self._overlay is not None:
            with writing(self.files["video"]):
                self._overlay.close()
        self._long = self._wide = self._overlay = None

    def finish(self, stats: dict[str, Any]) -> Series:
        """Process the series, rewrite the CSVs when needed, write the JSON and NPZ; returns the series.

        ``stats['decoding']`` (see ``VideoReader.completeness``) says whether every frame was decoded:
        the JSON is marked complete only then."""
        self.close()
        recs = self.records
        times = np.array([r.time_s for r in recs], np.float64)
        xy = np.stack([r.keypoints for r in recs]).astype(np.float64)
        scores = np.stack([r.scores for r in recs]).astype(np.float64)
        uncertain = np.array([r.identity_uncertain for r in recs], bool)
        self.stats = stats
        series = process(times, xy, scores, self.names, self.skeleton, self.settings, uncertain=uncertain)
        series.quality["identity_uncertain"] = {
            "frames": int(uncertain.sum()),
            "ranges": frame_ranges([r.frame for r in recs], times, uncertain),
        }
        decoding = stats.get("decoding")
        if decoding is not None:
            series.quality["decoding"] = decoding
        processed, normalised = series.xy is not None, series.normalised is not None
        if processed or normalised or series.joint_names != self.names:
            if "long" in self.kinds:
                self._rewrite_long(series)
            if "wide" in self.kinds:
                self._rewrite_wide(series)
        if "npz" in self.kinds:
            self._write_npz(series)
        if "json" in self.kinds:
            self._write_json(complete=decoding is None or bool(decoding["complete"]), series=series)
        return series

    def fail(self, reason: str) -> None:
        """Mark the JSON as not complete, with the reason (the video failed after its files were begun)."""
        self.close()
        if "json" in self.kinds:
            self._write_json(complete=False, error=reason, series=getattr(self, "_series", None))

    def _rewrite(self, kind: str, rows: Iterable[list[Any]]) -> None:
        path = self.files[kind]
        tmp = f"{path}.tmp"
        with writing(path):
            with open(tmp, "w", newline="", encoding="utf-8") as f:
                csv.writer(f).writerows(rows)
            os.replace(tmp, path)

    def _rewrite_long(self, s: Series) -> None:
        processed, normalised = s.xy is not None, s.normalised is not None

        def rows() -> Iterable[list[Any]]:
            yield self._long_header(processed, normalised)
            for i, rec in enumerate(self.records):
                t = _time(rec.time_s)
                for j, name in enumerate(s.joint_names):
                    x, y = s.final[i, j]
                    row = [self.name, rec.frame, t, name, _num(x, 3), _num(y, 3), _num(s.scores[i, j], 4)]
                    row += [rec.box_source, int(rec.identity_uncertain)]
                    if processed:
                        row += [_num(s.xy_raw[i, j, 0], 3), _num(s.xy_raw[i, j, 1], 3), int(s.flagged[i, j])]
                    if normalised:
                        row += [_num(s.normalised[i, j, 0], 5), _num(s.normalised[i, j, 1], 5)]
                    yield row

        self._rewrite("long", rows())

    def _rewrite_wide(self, s: Series) -> None:
        processed, normalised = s.xy is not None, s.normalised is not None

        def rows() -> Iterable[list[Any]]:
            yield self._wide_header(s.joint_names, processed, normalised)
            for i, rec in enumerate(self.records):
                cells = [self.name, rec.frame, _time(rec.time_s)] + self._box_cells(rec)
                for j in range(len(s.joint_names)):
                    cells += [_num(s.final[i, j, 0], 3), _num(s.final[i, j, 1], 3), _num(s.scores[i, j], 4)]
                if processed:
                    for j in range(len(s.joint_names)):
                        cells += [_num(s.xy_raw[i, j, 0], 3), _num(s.xy_raw[i, j, 1], 3)]
                if normalised:
                    for j in range(len(s.joint_names)):
                        cells += [_num(s.normalised[i, j, 0], 5), _num(s.normalised[i, j, 1], 5)]
                yield cells

        self._rewrite("wide", rows())

    def _write_npz(self, s: Series) -> None:
        arrays: dict[str, np.ndarray] = {
            "frames": np.array([r.frame for r in self.records], np.int64),
            "times": s.times,
            "keypoints_raw": s.xy_raw,
            "scores": s.scores,
            "boxes": np.stack([r.box for r in self.records]).astype(np.float64),
            "box_scores": np.array([r.box_score for r in self.records], np.float64),
            "box_source": np.array([r.box_source for r in self.records], dtype="<U6"),
            "identity_uncertain": np.array([r.identity_uncertain for r in self.records], bool),
            "joint_names": np.array(s.joint_names),
            "skeleton": np.array(s.skeleton, np.int64).reshape(-1, 2),
        }
        if s.xy is not None:
            arrays["keypoints"] = s.xy
            arrays["flagged"] = s.flagged
        if s.normalised is not None:
            arrays["keypoints_normalised"] = s.normalised
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        path = self.files["npz"]
        with writing(path):
            with open(f"{path}.tmp", "wb") as f:
                f.write(buf.getvalue())
            os.replace(f"{path}.tmp", path)

    def _write_json(self, complete: bool, series: Series | None = None, error: str | None = None) -> None:
        info = self.info
        doc: dict[str, Any] = {
            "format": FORMAT,
            "version": 1,
            "complete": complete,
            "provenance": self.header,
            "video": {
                "path": os.path.abspath(self.path),
                "name": self.name,
                "fps": info.fps,
                "width": info.width,
                "height": info.height,
                "frame_count_container": info.frame_count,
                "start_time_s": info.start_time_s,
                "start_time_source": info.start_time_source,
                "duration_container_s": info.duration_s,
            },
            "keypoints": {
                "joint_names": list(series.joint_names if series else self.names),
                "skeleton": [list(e) for e in (series.skeleton if series else self.skeleton)],
                "format": self.settings.keypoint_format,
            },
            "outputs": {k: os.path.basename(v) for k, v in self.files.items()},
        }
        if error is not None:
            doc["error"] = error
        if self.overlay_codec is not None:
            doc["overlay_codec"] = self.overlay_codec
        if series is not None:
            self._series = series
            recs = self.records
            counts: dict[str, int] = {}
            for r in recs:
                counts[r.box_source] = counts.get(r.box_source, 0) + 1
            doc["video"].update(
                n_frames=len(recs),
                first_time_s=float(series.times[0]),
                duration_s=float(series.times[-1] - series.times[0]),
                median_fps=series.quality["median_fps"],
            )
            if "decoding" in self.stats:
                doc["decoding"] = self.stats["decoding"]
            doc["stats"] = self.stats
            doc["identity"] = series.quality.get("identity_uncertain")
            doc["boxes"] = {
                "sources": counts,
                "columns": ["frame", "time_s", "x", "y", "w", "h", "score", "source", "identity_uncertain"],
                "frames": [
                    [r.frame, r.time_s]
                    + [_finite(round(float(v), 3)) for v in r.box]
                    + [round(r.box_score, 4), r.box_source, bool(r.identity_uncertain)]
                    for r in recs
                ],
            }
            doc["quality"] = series.quality
        with writing(self.files["json"]):
            _write_json(self.files["json"], doc)


class ImageOutputs:
    """The result files of the images of a call (see the module docstring)."""

    def __init__(
        self,
        out_dir: str,
        joint_names: Sequence[str],
        skeleton: Sequence[tuple[int, int]],
        kinds: Sequence[str],
        header: dict[str, Any],
        min_score: float,
    ):
        self.out_dir, self.names, self.skeleton = out_dir, tuple(joint_names), tuple(skeleton)
        self.kinds, self.header, self.min_score = set(kinds), header, min_score
        self.files: dict[str, str] = {}
        self.coco: list[dict[str, Any]] = []
        self.done: list[dict[str, Any]] = []
        self.skipped: list[dict[str, str]] = []
        self.pngs: list[str] = []
        self._long = None
        try:
            if "long" in self.kinds:
                self.files["long"] = os.path.join(out_dir, "images.keypoints.csv")
                header_row = ["image", "person", "joint", "x", "y", "score", "box_source", "box_score"]
                self._long = _rows_file(self.files["long"], header_row)
            if "coco" in self.kinds:
                self.files["coco"] = os.path.join(out_dir, "images.coco.json")
            if "json" in self.kinds:
                self.files["json"] = os.path.join(out_dir, "images.json")
                self._write_summary(complete=False)
        except OSError as err:
            self.close()
            raise OutputError(f"{out_dir}: cannot write the image results ({err})") from None

    def add(
        self,
        path: str,
        stem: str,
        image_bgr: np.ndarray,
        records: Sequence[Record],
        orientation: dict[str, Any] | None = None,
    ) -> None:
        """One image's people; ``orientation``: its EXIF orientation and whether it was applied."""
        name = os.path.basename(path)
        if self._long is not None:
            f, writer = self._long
            with writing(self.files["long"]):
                for rec in records:
                    for j, joint in enumerate(self.names):
                        x, y = (float(v) for v in rec.keypoints[j])
                        score = _num(float(rec.scores[j]), 4)
                        box_score = _num(rec.box_score, 4)
                        writer.writerow(
                            [name, rec.person, joint, _num(x, 3), _num(y, 3), score, rec.box_source, box_score]
                        )
                f.flush()
        image_id: int | str = int(stem) if stem.isdigit() else stem
        for rec in records:
            if rec.box_source == "none":
                continue
            kps = np.concatenate([rec.keypoints, rec.scores[:, None]], axis=1).astype(np.float64)
            self.coco.append(
                {
                    "image_id": image_id,
                    "category_id": 1,
                    "keypoints": [round(float(v), 3) for v in kps.reshape(-1)],
                    "score": round(float(np.mean(rec.scores)) * float(rec.box_score), 5),
                    "bbox": [round(float(v), 2) for v in rec.box],
                    "box_source": rec.box_source,
                }
            )
        self.done.append(
            {
                "image": name,
                "people": sum(r.box_source != "none" for r in records),
                "sources": [r.box_source for r in records],
                "width": int(image_bgr.shape[1]),
                "height": int(image_bgr.shape[0]),
                **(orientation or {}),
            }
        )
        if "png" in self.kinds:
            out = os.path.join(self.out_dir, f"{Path(stem).name}.overlay.png")
            drawn = draw_overlay(image_bgr, records, self.skeleton, self.min_score, name)
            if not cv2.imwrite(out, drawn):
                raise OutputError(f"{out}: cannot write the overlay picture")
            self.pngs.append(out)

    def skip(self, path: str, reason: str) -> None:
        self.skipped.append({"image": os.path.basename(path), "path": os.path.abspath(path), "reason": reason})

    def close(self) -> None:
        if self._long is not None:
            with writing(self.files["long"]):
                self._long[0].close()
            self._long = None

    def finish(self, complete: bool = True) -> None:
        """Close the table, write the COCO results and the summary (``complete`` False after an error)."""
        self.close()
        if "coco" in self.kinds:
            with writing(self.files["coco"]):
                _write_json(self.files["coco"], self.coco)
        if "json" in self.kinds:
            self._write_summary(complete=complete)

    def _write_summary(self, complete: bool) -> None:
        doc = {
            "format": FORMAT,
            "version": 1,
            "complete": complete,
            "provenance": self.header,
            "keypoints": {"joint_names": list(self.names), "skeleton": [list(e) for e in self.skeleton]},
            "images": self.done,
            "skipped": self.skipped,
            "counts": {"predicted": len(self.done), "skipped": len(self.skipped), "people": len(self.coco)},
            "outputs": {k: os.path.basename(v) for k, v in self.files.items()},
        }
        with writing(self.files["json"]):
            _write_json(self.files["json"], doc)


def frame_ranges(frames: Sequence[int], times: np.ndarray, mask: np.ndarray) -> list[dict[str, Any]]:
    """The runs of True in ``mask`` as ``{start_frame, end_frame, start_s, end_s}`` (ends inclusive)."""
    out = []
    mask = np.asarray(mask, bool)
    edges = np.diff(np.concatenate(([0], mask.astype(np.int8), [0])))
    for a, b in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True):
        start_s = float(times[a]) if times[a] is not None else None
        end_s = float(times[b - 1]) if times[b - 1] is not None else None
        out.append({"start_frame": int(frames[a]), "end_frame": int(frames[b - 1]), "start_s": start_s, "end_s": end_s})
    return out


__all__ = [
    "DEFAULT_OUTPUTS",
    "LOG_FILE",
    "MANIFEST",
    "OUTPUT_KINDS",
    "ImageOutputs",
    "OutputError",
    "RunManifest",
    "VideoOutputs",
    "check_out_dir",
    "draw_overlay",
    "earlier_results",
    "frame_ranges",
    "overlay_codec",
    "planned_files",
    "unique_stems",
    "writing",
]
