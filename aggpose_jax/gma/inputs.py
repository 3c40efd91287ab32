"""Read ``aggpose-predict`` results as the OpenPose-18 series the movement features need.

Inputs (any mix; a folder means the videos' results inside it):

* ``STEM.json``: the video's record (fps, size, provenance); the keypoints come from the ``STEM.npz``
  or ``STEM.keypoints.csv`` it lists (NPZ preferred).
* ``STEM.npz``: arrays ``frames, times, keypoints_raw, scores, joint_names`` (+ ``keypoints`` when the
  run made a processed series); ``STEM.json`` beside it is read when present.
* ``STEM.keypoints.csv``: the long table ``video, frame, time_s, joint, x, y, score`` (+ ``x_raw, y_raw``
  when processed); one or several videos (the ``video`` column); ``STEM.json`` beside it is read when
  present.

Frame rate: ``--fps`` when given, else the record's nominal ``video.fps`` (its ``median_fps`` when the
container gave none), else the median time step of ``time_s`` / ``times``. Which one was used is
recorded (``fps_source``).

Series: ``raw`` (default, as the published code: the model's output, every point whose score is above
``min_score``, 0 unless set) or ``processed`` (the run's masked / gap-filled / smoothed series, present
where finite; ``min_score`` does not apply, the run's own ``--min-score`` did the masking).

Keypoint sets, all to OpenPose-18 (``aggpose_jax.predict.sequences.OPENPOSE18_NAMES``):

* COCO-17: :func:`aggpose_jax.predict.sequences.coco17_to_openpose18` (Neck = mid-shoulders, its score
  the lower shoulder score).
* OpenPose-18 (a run with ``--keypoint-format openpose18``): as is.
* Infant-21 (the released infant model, :data:`INFANT21_TO_OPENPOSE18`)::

      Nose      -  (none: not used by any feature)
      Neck      M2         REye      R1          LEye      L1
      RShoulder R2         LShoulder L2
      RElbow    R3         LElbow    L3
      RWrist    R4         LWrist    L4
      RHip      R6         LHip      L6
      RKnee     R7         LKnee     L7
      RAnkle    R8         LAnkle    L8
      REar, LEar -  (none: the set has no ears, so lrCorr_x_Ear is NaN)

  Not used: R5/L5 (fingers), R9/L9 (toes), M1 (head), M3 (navel). R/L are the infant's own sides in
  both sets.

Every problem is a ``ValueError`` (or ``OSError``) whose message names the file and the field.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from aggpose_jax.pose.keypoints import COCO17, INFANT21
from aggpose_jax.predict.sequences import OPENPOSE18_NAMES, coco17_to_openpose18

SERIES: tuple[str, ...] = ("raw", "processed")
PREDICTIONS_FORMAT = "aggpose-jax-predictions"

# OpenPose-18 part -> Infant-21 joint name (None: the infant set has no such point).
INFANT21_TO_OPENPOSE18: dict[str, str | None] = {
    "Nose": None,
    "Neck": "M2",
    "RShoulder": "R2",
    "RElbow": "R3",
    "RWrist": "R4",
    "LShoulder": "L2",
    "LElbow": "L3",
    "LWrist": "L4",
    "RHip": "R6",
    "RKnee": "R7",
    "RAnkle": "R8",
    "LHip": "L6",
    "LKnee": "L7",
    "LAnkle": "L8",
    "REye": "R1",
    "LEye": "L1",
    "REar": None,
    "LEar": None,
}

_SUFFIXES = (".keypoints.csv", ".npz", ".json")


@dataclasses.dataclass
class VideoSeries:
    """One video's OpenPose-18 series, ready for ``features.compute_features``.

    ``xy`` (T, 18, 2) with NaN where a point is missing (after the presence rule); ``scores`` (T, 18);
    ``frames`` (T,) frame numbers; ``times`` (T,) seconds (not used by the features). ``provenance``: what
    the features came from, for the output's record. ``image_size``: (width, height) from the record, for
    the published code's pixel normalisation (None without a record)."""

    video: str
    xy: np.ndarray
    scores: np.ndarray
    frames: np.ndarray
    times: np.ndarray
    fps: float
    provenance: dict[str, Any]
    image_size: tuple[int, int] | None = None


def sha256_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def keypoint_set_of(names: Sequence[str]) -> str:
    """'coco17', 'openpose18' or 'infant21' from the joint names (ValueError otherwise)."""
    names = tuple(str(n) for n in names)
    if names == COCO17.names:
        return "coco17"
    if names == OPENPOSE18_NAMES:
        return "openpose18"
    if names == INFANT21.names:
        return "infant21"
    raise ValueError(
        f"joint names {', '.join(names[:5])}{', ...' if len(names) > 5 else ''} ({len(names)} joints) are not "
        "COCO-17, OpenPose-18 or Infant-21"
    )


def to_openpose18(xy: Any, scores: Any, names: Sequence[str]) -> tuple[np.ndarray, np.ndarray, str]:
    """(T, J, 2) keypoints and (T, J) scores of a known set -> OpenPose-18 (T, 18, 2), (T, 18), set name.
    Points the set lacks are NaN with score 0."""
    xy = np.asarray(xy, np.float64)
    scores = np.asarray(scores, np.float64)
    kind = keypoint_set_of(names)
    if kind == "coco17":
        out_xy, out_s, _ = coco17_to_openpose18(xy, scores)
        return out_xy, out_s, kind
    if kind == "openpose18":
        return xy.copy(), scores.copy(), kind
    index = {n: i for i, n in enumerate(names)}
    out_xy = np.full(xy.shape[:-2] + (18, 2), np.nan)
    out_s = np.zeros(xy.shape[:-2] + (18,))
    for j, part in enumerate(OPENPOSE18_NAMES):
        source = INFANT21_TO_OPENPOSE18[part]
        if source is not None:
            out_xy[..., j, :] = xy[..., index[source], :]
            out_s[..., j] = scores[..., index[source]]
    return out_xy, out_s, kind


def apply_presence(xy: np.ndarray, scores: np.ndarray, min_score: float | None) -> np.ndarray:
    """NaN where a point is missing: x or y not finite, or (``min_score`` not None) the score not finite
    or not above ``min_score``."""
    out = np.array(xy, np.float64)
    missing = ~np.isfinite(out).all(axis=-1)
    if min_score is not None:
        s = np.asarray(scores, np.float64)
        missing |= ~(np.isfinite(s) & (s > min_score))
    out[missing] = np.nan
    return out


# ----------------------------------------------------------------------------------------------------
# Files


def _stem_and_kind(path: Path) -> tuple[str, str] | None:
    for suffix in _SUFFIXES:
        if path.name.endswith(suffix) and len(path.name) > len(suffix):
            return path.name[: -len(suffix)], suffix
    return None


def read_record(path: Path) -> dict[str, Any]:
    """A video's ``STEM.json`` (checked: format, complete, a video section)."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err.msg}, line {err.lineno})") from None
    if not isinstance(doc, dict) or doc.get("format") != PREDICTIONS_FORMAT:
        raise ValueError(f"{path}: field format is not {PREDICTIONS_FORMAT!r} (not an aggpose-predict record)")
    if not isinstance(doc.get("video"), dict):
        raise ValueError(f"{path}: field video missing (an image summary, not a video record)")
    if doc.get("complete") is not True:
        raise ValueError(f"{path}: field complete is not true (the prediction run did not finish this video)")
    return doc


def _record_fps(doc: dict[str, Any], path: Path) -> tuple[float | None, str | None]:
    video = doc["video"]
    for key in ("fps", "median_fps"):
        value = video.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ValueError(f"{path}: field video.{key} is not a number ({value!r})")
        if value > 0:
            return float(value), f"record video.{key}"
    return None, None


def _record_size(doc: dict[str, Any], path: Path) -> tuple[int, int] | None:
    video = doc["video"]
    if video.get("width") is None or video.get("height") is None:
        return None
    size = []
    for key in ("width", "height"):
        value = video[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise ValueError(f"{path}: field video.{key} is not a positive number ({value!r})")
        size.append(int(value))
    return size[0], size[1]


def _times_fps(times: np.ndarray) -> float | None:
    t = times[np.isfinite(times)]
    steps = np.diff(t)
    steps = steps[steps > 0]
    return float(1.0 / np.median(steps)) if steps.size else None


def _parse(value: str, path: Path, line: int, field: str) -> float:
    if value == "":
        return math.nan
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"{path}: line {line}: field {field} is not a number ({value!r})") from None


def read_long_csv(path: Path, series: str) -> list[dict[str, Any]]:
    """The videos of a long table: [{video, names, frames, times, xy (T, J, 2), scores (T, J)}]."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{path}: empty file (no header)")
        cols = {name: i for i, name in enumerate(header)}
        for need in ("video", "frame", "joint", "x", "y", "score"):
            if need not in cols:
                raise ValueError(f"{path}: column {need} missing (not an aggpose-predict keypoints table)")
        processed = "x_raw" in cols and "y_raw" in cols
        if series == "processed" and not processed:
            raise ValueError(
                f"{path}: columns x_raw, y_raw missing: the prediction run made no processed series "
                "(use --series raw, or predict with --mask / --max-gap / --smooth)"
            )
        xcol, ycol = ("x_raw", "y_raw") if (series == "raw" and processed) else ("x", "y")
        videos: dict[str, dict[str, Any]] = {}
        for line, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) < len(header):
                raise ValueError(f"{path}: line {line}: {len(row)} fields, the header has {len(header)}")
            v = videos.setdefault(row[cols["video"]], {"names": [], "rows": {}})
            try:
                frame = int(row[cols["frame"]])
            except ValueError:
                raise ValueError(
                    f"{path}: line {line}: field frame is not a whole number ({row[cols['frame']]!r})"
                ) from None
            joint = row[cols["joint"]]
            if joint not in v["names"]:
                v["names"].append(joint)
            t = _parse(row[cols["time_s"]], path, line, "time_s") if "time_s" in cols else math.nan
            values = tuple(_parse(row[cols[c]], path, line, c) for c in (xcol, ycol, "score"))
            per_frame = v["rows"].setdefault(frame, {"t": t, "joints": {}})
            if joint in per_frame["joints"]:
                raise ValueError(f"{path}: line {line}: joint {joint} repeated in frame {frame}")
            per_frame["joints"][joint] = values
    if not videos:
        raise ValueError(f"{path}: no rows")
    out = []
    for name, v in videos.items():
        names = v["names"]
        frames = np.array(sorted(v["rows"]), np.int64)
        xy = np.full((frames.size, len(names), 2), np.nan)
        scores = np.full((frames.size, len(names)), np.nan)
        times = np.array([v["rows"][int(fr)]["t"] for fr in frames], np.float64)
        for i, fr in enumerate(frames):
            for joint, (x, y, s) in v["rows"][int(fr)]["joints"].items():
                j = names.index(joint)
                xy[i, j] = (x, y)
                scores[i, j] = s
        out.append({"video": name, "names": names, "frames": frames, "times": times, "xy": xy, "scores": scores})
    return out


def read_npz(path: Path, series: str) -> dict[str, Any]:
    """One video's arrays: {names, frames, times, xy, scores}."""
    try:
        data = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as err:
        raise ValueError(f"{path}: not a readable NPZ file ({err})") from None
    with data:
        keys = set(data.files)
        for need in ("frames", "keypoints_raw", "scores", "joint_names"):
            if need not in keys:
                raise ValueError(f"{path}: field {need} missing (not an aggpose-predict NPZ)")
        if series == "processed" and "keypoints" not in keys:
            raise ValueError(
                f"{path}: field keypoints missing: the prediction run made no processed series "
                "(use --series raw, or predict with --mask / --max-gap / --smooth)"
            )
        names = [str(n) for n in data["joint_names"]]
        xy = np.asarray(data["keypoints" if series == "processed" else "keypoints_raw"], np.float64)
        scores = np.asarray(data["scores"], np.float64)
        frames = np.asarray(data["frames"])
        times = np.asarray(data["times"], np.float64) if "times" in keys else np.full(frames.shape, np.nan)
    t = frames.shape[0] if frames.ndim == 1 else -1
    if xy.shape != (t, len(names), 2):
        field = "keypoints" if series == "processed" else "keypoints_raw"
        raise ValueError(f"{path}: field {field} has shape {xy.shape}, expected ({t}, {len(names)}, 2)")
    if scores.shape != (t, len(names)):
        raise ValueError(f"{path}: field scores has shape {scores.shape}, expected ({t}, {len(names)})")
    if not np.issubdtype(frames.dtype, np.integer):
        raise ValueError(f"{path}: field frames is not whole numbers (dtype {frames.dtype})")
    return {"names": names, "frames": frames.astype(np.int64), "times": times, "xy": xy, "scores": scores}


@dataclasses.dataclass
class _Input:
    data: Path
    record: Path | None


def discover(inputs: Iterable[str | os.PathLike[str]]) -> list[_Input]:
    """The (data file, record or None) of each video named by ``inputs`` (files or folders)."""
    found: list[_Input] = []
    seen: set[Path] = set()
    for raw in inputs:
        path = Path(raw)
        if not path.exists():
            raise FileNotFoundError(f"input {path} does not exist")
        if path.is_dir():
            stems: dict[str, dict[str, Path]] = {}
            for child in sorted(path.iterdir()):
                sk = _stem_and_kind(child)
                if sk and child.is_file():
                    stems.setdefault(sk[0], {})[sk[1]] = child
            chosen = []
            for _stem, kinds in sorted(stems.items()):
                record = kinds.get(".json")
                if record is not None and not _is_video_record(record):
                    record = None
                if ".npz" in kinds or ".keypoints.csv" in kinds or record is not None:
                    chosen.append(_resolve(kinds.get(".npz") or kinds.get(".keypoints.csv") or record))
            if not chosen:
                raise ValueError(
                    f"input folder {path}: no STEM.json, STEM.npz or STEM.keypoints.csv of aggpose-predict"
                )
            items = chosen
        else:
            items = [_resolve(path)]
        for item in items:
            key = item.data.resolve()
            if key not in seen:
                seen.add(key)
                found.append(item)
    return found


def _is_video_record(path: Path) -> bool:
    """Whether a JSON file in an input folder is a video record (other JSON files there are skipped)."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and doc.get("format") == PREDICTIONS_FORMAT and isinstance(doc.get("video"), dict)


def _resolve(path: Path) -> _Input:
    sk = _stem_and_kind(path)
    if sk is None:
        raise ValueError(f"input {path}: expected STEM.json, STEM.npz or STEM.keypoints.csv of aggpose-predict")
    stem, kind = sk
    if kind == ".json":
        doc = read_record(path)
        outputs = doc.get("outputs") or {}
        for key in ("npz", "long"):
            name = outputs.get(key)
            if name:
                data = path.parent / str(name)
                if not data.is_file():
                    raise FileNotFoundError(f"{path}: field outputs.{key} names {name}, which is not beside it")
                return _Input(data, path)
        raise ValueError(
            f"{path}: field outputs lists neither npz nor long: no keypoints to read "
            "(predict with --outputs including npz or long)"
        )
    record = path.parent / f"{stem}.json"
    return _Input(path, record if record.is_file() else None)


def load_videos(
    inputs: Iterable[str | os.PathLike[str]],
    *,
    fps: float | None = None,
    series: str = "raw",
    min_score: float | None = None,
) -> list[VideoSeries]:
    """Every video named by ``inputs`` as a :class:`VideoSeries` (see the module docstring)."""
    if series not in SERIES:
        raise ValueError(f"unknown series {series!r}; choose one of {', '.join(SERIES)}")
    if series == "processed" and min_score is not None:
        raise ValueError("--min-score applies to the raw series only (the processed series was masked by its run)")
    if min_score is not None and not math.isfinite(min_score):
        raise ValueError(f"min score must be a finite number, got {min_score}")
    threshold = (0.0 if min_score is None else float(min_score)) if series == "raw" else None
    out: list[VideoSeries] = []
    names: dict[str, Path] = {}
    for item in discover(inputs):
        doc = read_record(item.record) if item.record is not None else None
        if item.data.name.endswith(".npz"):
            blocks = [read_npz(item.data, series)]
            blocks[0]["video"] = doc["video"].get("name", item.data.name[:-4]) if doc else item.data.name[:-4]
        else:
            blocks = read_long_csv(item.data, series)
        if doc is not None and len(blocks) > 1:
            raise ValueError(f"{item.data}: field video holds {len(blocks)} videos but {item.record} records one")
        for block in blocks:
            where = item.data
            try:
                xy18, s18, kind = to_openpose18(block["xy"], block["scores"], block["names"])
            except ValueError as err:
                raise ValueError(f"{where}: field joint: {err}") from None
            present_xy = apply_presence(xy18, s18, threshold)
            if fps is not None:
                rate, source = float(fps), "--fps"
            else:
                rate, source = _record_fps(doc, item.record) if doc is not None else (None, None)
                if rate is None:
                    rate, source = _times_fps(block["times"]), "median time step"
                if rate is None:
                    raise ValueError(f"{where}: field time_s gives no frame rate and there is no record; give --fps")
            size = _record_size(doc, item.record) if doc is not None else None
            name = str(block["video"])
            if name in names:
                raise ValueError(f"{where}: video {name} is also in {names[name]} (one row per video)")
            names[name] = where
            prov: dict[str, Any] = {
                "video": name,
                "data_file": str(where.resolve()),
                "data_sha256": sha256_file(where),
                "record": str(item.record.resolve()) if item.record else None,
                "fps": rate,
                "fps_source": source,
                "series": series,
                "presence": (
                    f"x, y finite and score > {threshold:g}" if threshold is not None else "x, y finite (processed)"
                ),
                "keypoint_set": kind,
                "pixel_normalisation": (
                    f"(x - W/2) / H, (y - H/2) / H with W x H = {size[0]} x {size[1]}" if size else "none (no record)"
                ),
                "n_samples": int(block["frames"].shape[0]),
            }
            if doc is not None:
                prov["prediction"] = {
                    "video": doc.get("video"),
                    "keypoints_format": (doc.get("keypoints") or {}).get("format"),
                    "provenance": doc.get("provenance"),
                }
            out.append(VideoSeries(name, present_xy, s18, block["frames"], block["times"], rate, prov, size))
    return out


__all__ = [
    "INFANT21_TO_OPENPOSE18",
    "SERIES",
    "VideoSeries",
    "apply_presence",
    "discover",
    "keypoint_set_of",
    "load_videos",
    "read_long_csv",
    "read_npz",
    "read_record",
    "to_openpose18",
]
