"""Result files of ``aggpose-predict``, written as results are made (a crash keeps what was done).

Per video ``STEM`` (the video's file stem, made unique within a call):

* ``STEM.keypoints.csv`` (``long``): ``video, frame, time_s, joint, x, y, score, box_source`` -- one row
  per joint and frame, streamed as frames are predicted. When a processed series is asked for (masking,
  gap filling, smoothing), the keypoint format changed or normalisation asked for, the file is rewritten
  once the video is done: ``x, y`` then hold the processed series (empty = NaN: masked and not filled)
  and ``x_raw, y_raw, flagged`` the model's output (``x_norm, y_norm`` with normalisation).
* ``STEM.wide.csv`` (``wide``): one row per frame: ``video, frame, time_s, box_source, box_x, box_y,
  box_w, box_h, box_score`` then ``<joint>_x, <joint>_y, <joint>_score`` per joint (``_x_raw``,
  ``_y_raw`` and ``_x_norm``, ``_y_norm`` columns as above).
* ``STEM.json`` (``json``): provenance (software, model and checkpoint SHA-256, video SHA-256, settings),
  the video (fps, size, frame count, duration), joint names, skeleton, the boxes of every frame and
  their sources, the quality report; ``"complete": false`` until the video is done.
* ``STEM.npz`` (``npz``): arrays ``frames, times, keypoints_raw, scores, boxes, box_scores,
  box_source, joint_names, skeleton`` (+ ``keypoints, flagged`` when processed, ``keypoints_normalised``).
* ``STEM.overlay.mp4`` (``video``): the frames with boxes and skeletons (mp4v, at the nominal rate).

For the images of a call: ``images.keypoints.csv`` (``long``: ``image, person, joint, x, y, score,
box_source, box_score``), ``images.coco.json`` (``coco``: COCO keypoint results, ``image_id`` = the
stem, or its integer for an all-digit stem), ``images.json`` (``json``: provenance, skipped images with
the reason) and ``STEM.overlay.png`` per image (``png``).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from aggpose_jax.data.cli_errors import make_writable_dir
from aggpose_jax.evaluate.draw import draw_skeleton
from aggpose_jax.predict.results import Record
from aggpose_jax.predict.series import Series, SeriesSettings, process
from aggpose_jax.predict.video import VideoError, VideoInfo, VideoWriter

OUTPUT_KINDS: tuple[str, ...] = ("long", "wide", "json", "npz", "coco", "video", "png")
DEFAULT_OUTPUTS: tuple[str, ...] = ("long", "wide", "json", "npz", "coco")
FORMAT = "aggpose-jax-predictions"
SOURCE_COLORS = {"file": (0, 200, 255), "region": (255, 160, 0), "seed": (0, 0, 255), "track": (0, 220, 0)}


class OutputError(ValueError):
    """An output file or folder cannot be written."""


def check_out_dir(out_dir: str | os.PathLike[str]) -> str:
    """Create ``out_dir`` if needed and check that files can be written in it; returns its absolute path."""
    try:
        return make_writable_dir(out_dir)
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise OutputError(f"{os.path.abspath(os.fspath(out_dir))}: cannot write results there ({reason})") from None


def unique_stems(paths: Iterable[Path]) -> dict[Path, str]:
    """A distinct output stem per input: the file stem, with ``_2``, ``_3``... for repeated stems."""
    used: set[str] = {"images"}
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
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, allow_nan=False, default=_json_default)
    os.replace(tmp, path)


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
        color = SOURCE_COLORS.get(rec.box_source, (255, 255, 255))
        if np.isfinite(rec.box).all():
            x, y, w, h = rec.box
            cv2.rectangle(out, (int(round(x)), int(round(y))), (int(round(x + w)), int(round(y + h))), color, 1)
        kp = np.concatenate([rec.keypoints, rec.scores[:, None]], axis=1)
        draw_skeleton(out, kp, skeleton, kpt_thre=min_score, radius=max(2, int(2 * scale)), thickness=int(2 * scale))
    sources = ",".join(sorted({r.box_source for r in records})) or "none"
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
        self._long = self._wide = self._overlay = None
        try:
            if "long" in self.kinds:
                self._long = _rows_file(self._file("long", ".keypoints.csv"), self._long_header(False, False))
            if "wide" in self.kinds:
                self._wide = _rows_file(self._file("wide", ".wide.csv"), self._wide_header(self.names, False, False))
            if "video" in self.kinds:
                fps = info.fps or 30.0
                self._overlay = VideoWriter(self._file("video", ".overlay.mp4"), fps, (info.width, info.height))
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
        cols = ["video", "frame", "time_s", "joint", "x", "y", "score", "box_source"]
        cols += ["x_raw", "y_raw", "flagged"] if processed else []
        return cols + (["x_norm", "y_norm"] if normalised else [])

    @staticmethod
    def _wide_header(names: Sequence[str], processed: bool, normalised: bool) -> list[str]:
        cols = ["video", "frame", "time_s", "box_source", "box_x", "box_y", "box_w", "box_h", "box_score"]
        cols += [f"{n}_{c}" for n in names for c in ("x", "y", "score")]
        cols += [f"{n}_{c}" for n in names for c in ("x_raw", "y_raw")] if processed else []
        return cols + ([f"{n}_{c}" for n in names for c in ("x_norm", "y_norm")] if normalised else [])

    def _box_cells(self, rec: Record) -> list[str]:
        return [rec.box_source] + [_num(float(v), 2) for v in rec.box] + [_num(float(rec.box_score), 4)]

    def add(self, rec: Record, frame_bgr: np.ndarray | None) -> None:
        """Record one frame's result and stream it to the CSVs and the overlay video."""
        self.records.append(rec)
        t = _time(rec.time_s)
        if self._long is not None:
            f, writer = self._long
            for j, name in enumerate(self.names):
                x, y = (float(v) for v in rec.keypoints[j])
                writer.writerow(
                    [
                        self.name,
                        rec.frame,
                        t,
                        name,
                        _num(x, 3),
                        _num(y, 3),
                        _num(float(rec.scores[j]), 4),
                        rec.box_source,
                    ]
                )
            f.flush()
        if self._wide is not None:
            f, writer = self._wide
            cells = [self.name, rec.frame, t] + self._box_cells(rec)
            for j in range(len(self.names)):
                x, y = (float(v) for v in rec.keypoints[j])
                cells += [_num(x, 3), _num(y, 3), _num(float(rec.scores[j]), 4)]
            writer.writerow(cells)
            f.flush()
        if self._overlay is not None and frame_bgr is not None:
            label = f"{self.name} frame {rec.frame} t={rec.time_s:.3f}s"
            self._overlay.write(draw_overlay(frame_bgr, [rec], self.skeleton, self.settings.min_score, label))

    def close(self) -> None:
        """Close the streams (what was written stays)."""
        for stream in (self._long, self._wide):
            if stream is not None:
                stream[0].close()
        if self._overlay is not None:
            self._overlay.close()
        self._long = self._wide = self._overlay = None

    def finish(self, stats: dict[str, Any]) -> Series:
        """Process the series, rewrite the CSVs when needed, write the JSON and NPZ; returns the series."""
        self.close()
        recs = self.records
        times = np.array([r.time_s for r in recs], np.float64)
        xy = np.stack([r.keypoints for r in recs]).astype(np.float64)
        scores = np.stack([r.scores for r in recs]).astype(np.float64)
        series = process(times, xy, scores, self.names, self.skeleton, self.settings)
        processed, normalised = series.xy is not None, series.normalised is not None
        if processed or normalised or series.joint_names != self.names:
            if "long" in self.kinds:
                self._rewrite_long(series)
            if "wide" in self.kinds:
                self._rewrite_wide(series)
        if "npz" in self.kinds:
            self._write_npz(series)
        self.stats = stats
        if "json" in self.kinds:
            self._write_json(complete=True, series=series)
        return series

    def _rewrite(self, kind: str, rows: Iterable[list[Any]]) -> None:
        path = self.files[kind]
        tmp = f"{path}.tmp"
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
                    row.append(rec.box_source)
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
        with open(f"{path}.tmp", "wb") as f:
            f.write(buf.getvalue())
        os.replace(f"{path}.tmp", path)

    def _write_json(self, complete: bool, series: Series | None = None) -> None:
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
            },
            "keypoints": {
                "joint_names": list(series.joint_names if series else self.names),
                "skeleton": [list(e) for e in (series.skeleton if series else self.skeleton)],
                "format": self.settings.keypoint_format,
            },
            "outputs": {k: os.path.basename(v) for k, v in self.files.items()},
        }
        if series is not None:
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
            doc["stats"] = self.stats
            doc["boxes"] = {
                "sources": counts,
                "columns": ["frame", "time_s", "x", "y", "w", "h", "score", "source"],
                "frames": [
                    [r.frame, r.time_s]
                    + [_finite(round(float(v), 3)) for v in r.box]
                    + [round(r.box_score, 4), r.box_source]
                    for r in recs
                ],
            }
            doc["quality"] = series.quality
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

    def add(self, path: str, stem: str, image_bgr: np.ndarray, records: Sequence[Record]) -> None:
        name = os.path.basename(path)
        if self._long is not None:
            f, writer = self._long
            for rec in records:
                for j, joint in enumerate(self.names):
                    x, y = (float(v) for v in rec.keypoints[j])
                    score = _num(float(rec.scores[j]), 4)
                    writer.writerow(
                        [name, rec.person, joint, _num(x, 3), _num(y, 3), score, rec.box_source, _num(rec.box_score, 4)]
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
            }
        )
        if "png" in self.kinds:
            out = os.path.join(self.out_dir, f"{Path(stem).name}.overlay.png")
            drawn = draw_overlay(image_bgr, records, self.skeleton, self.min_score, name)
            if not cv2.imwrite(out, drawn):
                raise OutputError(f"{out}: cannot write the overlay picture")

    def skip(self, path: str, reason: str) -> None:
        self.skipped.append({"image": os.path.basename(path), "path": os.path.abspath(path), "reason": reason})

    def close(self) -> None:
        if self._long is not None:
            self._long[0].close()
            self._long = None

    def finish(self, complete: bool = True) -> None:
        """Close the table, write the COCO results and the summary (``complete`` False after an error)."""
        self.close()
        if "coco" in self.kinds:
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
        _write_json(self.files["json"], doc)


__all__ = [
    "DEFAULT_OUTPUTS",
    "OUTPUT_KINDS",
    "ImageOutputs",
    "OutputError",
    "VideoOutputs",
    "check_out_dir",
    "draw_overlay",
    "unique_stems",
]
