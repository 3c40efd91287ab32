"""Where each crop's box comes from: boxes files, fixed regions, and the names every result records.

Box sources (``box_source`` in every output):

* ``file``: a box from the boxes file for this image / frame;
* ``region``: the fixed region given for this input;
* ``seed``: single-subject mode: the subject found on this frame from the whole frame (a whole-frame
  pass, then the box of its confident keypoints, refined);
* ``track``: single-subject mode: the box of the keypoints of an earlier frame (expanded x1.25);
* ``none``: no box for this frame (the boxes file names none): no keypoints.

Boxes files:

* COCO detections JSON: a list of ``{"image_id", "bbox": [x, y, w, h], "score", "category_id"}`` (or a
  COCO dict whose ``annotations`` hold them). ``image_id`` is the image's file stem (string, or the
  integer of an all-digit stem such as COCO's ``000000000139`` -> 139) or, for a video, the 0-based frame
  index. Entries whose ``category_id`` is not 1 (person) are ignored.
* CSV ``frame,x,y,w,h,score``: with or without that header (``image_id`` or ``image`` may name the first
  column; ``score`` may be left out: 1.0). For a video ``frame`` is the 0-based frame index; for images,
  the file stem.

A boxes *file* serves the images of the call and at most one video; for several videos give a *folder*
holding one file per input, named by the input's stem (``clip.json`` or ``clip.csv`` for ``clip.mp4``).

Every problem raises :class:`BoxesError` (a ValueError) with one line naming the file.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

BOX_SOURCES: tuple[str, ...] = ("file", "region", "seed", "track", "none")
BoxKey = int | str


class BoxesError(ValueError):
    """A boxes file or region cannot be used (unreadable, malformed, or naming frames a video lacks)."""


@dataclasses.dataclass(frozen=True)
class Box:
    """One box in image pixels (x, y, w, h) with its detection score and source."""

    xywh: tuple[float, float, float, float]
    score: float = 1.0
    source: str = "file"

    def array(self) -> np.ndarray:
        return np.asarray(self.xywh, np.float64)


def _number(value: Any, where: str, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise BoxesError(f"{where}: {name} must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise BoxesError(f"{where}: {name} must be finite, got {value!r}")
    return v


def _box(values: Sequence[Any], score: Any, where: str) -> Box:
    if len(values) != 4:
        raise BoxesError(f"{where}: a box needs 4 numbers [x, y, w, h], got {list(values)!r}")
    x, y, w, h = (_number(v, where, n) for v, n in zip(values, "xywh"))
    if w <= 0 or h <= 0:
        raise BoxesError(f"{where}: box width and height must be > 0, got w={w:g}, h={h:g}")
    return Box((x, y, w, h), _number(1.0 if score in (None, "") else score, where, "score"), "file")


def _key(value: Any, where: str) -> BoxKey:
    if isinstance(value, bool):
        raise BoxesError(f"{where}: image_id/frame must be a frame index or an image stem, got {value!r}")
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    text = str(value).strip()
    if not text:
        raise BoxesError(f"{where}: empty image_id/frame")
    return int(text) if text.isdigit() else text


class BoxesFile:
    """The boxes of one file: ``{key: [Box, ...]}`` with keys frame indices (int) or image stems (str)."""

    def __init__(self, path: str | os.PathLike[str], boxes: dict[BoxKey, list[Box]]):
        self.path = str(path)
        self.boxes = boxes

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> BoxesFile:
        """Read a COCO detections JSON (``.json``) or a CSV (any other extension)."""
        path = str(path)
        if not os.path.isfile(path):
            raise BoxesError(f"{path}: no such boxes file")
        try:
            with open(path, encoding="utf-8-sig") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as err:
            raise BoxesError(f"{path}: cannot read the boxes file ({err})") from None
        if path.lower().endswith(".json"):
            return cls(path, _parse_json(text, path))
        return cls(path, _parse_csv(text, path))

    def for_image(self, stem: str) -> list[Box]:
        """Boxes of the image with file stem ``stem`` (matched as text, or as the integer of a digit stem)."""
        found = list(self.boxes.get(stem, []))
        if stem.isdigit():
            found += self.boxes.get(int(stem), [])
        return found

    def for_frame(self, index: int) -> list[Box]:
        return list(self.boxes.get(int(index), []))

    def check_frame_keys(self) -> None:
        """Raise unless every key is a frame index (a file for a video)."""
        bad = [k for k in self.boxes if not isinstance(k, int)]
        if bad:
            raise BoxesError(f"{self.path}: names {bad[0]!r}, not a frame index (videos need 0-based frame numbers)")
        negative = [k for k in self.boxes if k < 0]
        if negative:
            raise BoxesError(f"{self.path}: names frame {min(negative)}; frame indices start at 0")

    def check_frames_within(self, n_frames: int, video: str) -> None:
        """Raise when the file names frames at or beyond ``n_frames`` (the frames ``video`` has)."""
        beyond = sorted(k for k in self.boxes if isinstance(k, int) and k >= n_frames)
        if beyond:
            span = f"{beyond[0]}" if len(beyond) == 1 else f"{beyond[0]}..{beyond[-1]} ({len(beyond)} frames)"
            raise BoxesError(
                f"{self.path}: names frame {span} but {video} has {n_frames} frames (0..{n_frames - 1}); "
                "is it the boxes file of another video, or 1-based?"
            )

    def max_frame(self) -> int:
        ints = [k for k in self.boxes if isinstance(k, int)]
        return max(ints) if ints else -1


def _add(out: dict[BoxKey, list[Box]], key: BoxKey, box: Box) -> None:
    out.setdefault(key, []).append(box)


def _parse_json(text: str, path: str) -> dict[BoxKey, list[Box]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise BoxesError(f"{path}: not valid JSON ({err.msg}, line {err.lineno})") from None
    if isinstance(data, dict) and isinstance(data.get("annotations"), list):
        data = data["annotations"]
    if not isinstance(data, list):
        raise BoxesError(f"{path}: expected a list of COCO detections (image_id, bbox, score)")
    out: dict[BoxKey, list[Box]] = {}
    for i, entry in enumerate(data):
        where = f"{path}: entry {i}"
        if not isinstance(entry, dict) or "image_id" not in entry or "bbox" not in entry:
            raise BoxesError(f"{where}: needs 'image_id' and 'bbox'")
        if entry.get("category_id", 1) != 1:
            continue
        bbox = entry["bbox"]
        if not isinstance(bbox, list | tuple):
            raise BoxesError(f"{where}: 'bbox' must be [x, y, w, h], got {bbox!r}")
        _add(out, _key(entry["image_id"], where), _box(bbox, entry.get("score"), where))
    return out


_KEY_COLUMNS = ("frame", "image_id", "image")


def _parse_csv(text: str, path: str) -> dict[BoxKey, list[Box]]:
    rows = [r for r in csv.reader(text.splitlines()) if r and any(c.strip() for c in r)]
    if not rows:
        return {}
    header = [c.strip().lower() for c in rows[0]]
    if header[0] in _KEY_COLUMNS or not _is_number(header[0]):
        missing = [c for c in ("x", "y", "w", "h") if c not in header]
        key_col = next((header.index(c) for c in _KEY_COLUMNS if c in header), None)
        if missing or key_col is None:
            raise BoxesError(f"{path}: CSV header must name the columns frame,x,y,w,h[,score]; got {','.join(rows[0])}")
        cols = [key_col] + [header.index(c) for c in "xywh"]
        score_col = header.index("score") if "score" in header else None
        rows = rows[1:]
        first_line = 2
    else:
        cols, score_col, first_line = [0, 1, 2, 3, 4], 5, 1
    out: dict[BoxKey, list[Box]] = {}
    for n, row in enumerate(rows):
        where = f"{path}: line {n + first_line}"
        need = max(cols) + 1
        if len(row) < need:
            raise BoxesError(f"{where}: expected frame,x,y,w,h[,score], got {','.join(row)}")
        score = row[score_col] if score_col is not None and score_col < len(row) else None
        _add(out, _key(row[cols[0]], where), _box([row[c] for c in cols[1:]], score, where))
    return out


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def parse_region(text: str) -> tuple[str | None, tuple[float, float, float, float]]:
    """``'X,Y,W,H'`` or ``'NAME=X,Y,W,H'`` -> (NAME or None, (x, y, w, h))."""
    name, _, spec = text.rpartition("=")
    parts = [p.strip() for p in spec.split(",")]
    where = f"--region {text!r}"
    if len(parts) != 4:
        raise BoxesError(f"{where}: expected X,Y,W,H (pixels), optionally prefixed by FILE=")
    box = _box(parts, None, where)
    return (name.strip() or None), box.xywh


class BoxPlan:
    """The boxes of the inputs of one call: a boxes file or folder, fixed regions, or none (single subject).

    Args:
      boxes: a boxes file or a folder of per-input files (see the module docstring); None for none.
      regions: ``{input name, stem or path (or None for every input): (x, y, w, h)}``.
      min_score: file boxes scoring below it are dropped.
    """

    def __init__(
        self,
        boxes: str | os.PathLike[str] | None = None,
        regions: dict[str | None, tuple[float, float, float, float]] | None = None,
        min_score: float = 0.0,
    ):
        self.path = None if boxes is None else str(boxes)
        self.regions = dict(regions or {})
        self.min_score = float(min_score)
        if self.path is not None and self.regions:
            raise BoxesError("give either a boxes file or regions, not both")
        if self.path is not None and not os.path.exists(self.path):
            raise BoxesError(f"{self.path}: no such boxes file or folder")
        self._file: BoxesFile | None = None
        if self.path is not None and os.path.isfile(self.path):
            self._file = BoxesFile.read(self.path)

    @property
    def mode(self) -> str:
        """'file', 'region' or 'single_subject'."""
        if self.path is not None:
            return "file"
        return "region" if self.regions else "single_subject"

    def check_inputs(self, inputs: Iterable[Path], videos: Iterable[Path]) -> None:
        """Raise early for regions naming no input, a boxes file given for several videos, or a folder
        lacking an input's file."""
        inputs, videos = list(inputs), list(videos)
        known = {p.name for p in inputs} | {p.stem for p in inputs} | {str(p) for p in inputs}
        unknown = [n for n in self.regions if n is not None and n not in known]
        if unknown:
            raise BoxesError(f"--region {unknown[0]}=...: no input of that name")
        if self.mode == "region" and None not in self.regions:
            lacking = [p for p in inputs if self.region_for(p) is None]
            if lacking:
                raise BoxesError(f"{lacking[0]}: no region given for it (add --region X,Y,W,H for every input)")
        if self._file is not None and len(videos) > 1:
            raise BoxesError(
                f"{self.path}: one boxes file cannot serve {len(videos)} videos; give a folder holding "
                "<video stem>.json or .csv per video"
            )
        if self.path is not None and self._file is None:
            for p in inputs:
                self.file_for(p)

    def region_for(self, path: Path) -> tuple[float, float, float, float] | None:
        for key in (str(path), path.name, path.stem, None):
            if key in self.regions:
                return self.regions[key]
        return None

    def file_for(self, path: Path) -> BoxesFile | None:
        """The boxes file serving input ``path`` (None when not in file mode)."""
        if self.path is None:
            return None
        if self._file is not None:
            return self._file
        for ext in (".json", ".csv"):
            candidate = os.path.join(self.path, path.stem + ext)
            if os.path.isfile(candidate):
                return BoxesFile.read(candidate)
        raise BoxesError(f"{self.path}: boxes folder holds no {path.stem}.json or {path.stem}.csv for {path.name}")

    def keep(self, boxes: list[Box]) -> list[Box]:
        """Boxes at or above ``min_score``, best first."""
        kept = [b for b in boxes if b.score >= self.min_score]
        return sorted(kept, key=lambda b: -b.score)


def box_from_keypoints(
    keypoints: np.ndarray, scores: np.ndarray, min_score: float, min_joints: int = 3, min_size: float = 4.0
) -> np.ndarray | None:
    """The (x, y, w, h) extent of the joints scoring >= ``min_score``; None when fewer than ``min_joints``."""
    ok = (np.asarray(scores) >= min_score) & np.isfinite(keypoints).all(axis=-1)
    if int(ok.sum()) < min_joints:
        return None
    pts = np.asarray(keypoints, np.float64)[ok]
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    size = np.maximum(hi - lo, min_size)
    centre = 0.5 * (lo + hi)
    return np.concatenate([centre - 0.5 * size, size])


__all__ = [
    "BOX_SOURCES",
    "Box",
    "BoxPlan",
    "BoxesError",
    "BoxesFile",
    "box_from_keypoints",
    "parse_region",
]
