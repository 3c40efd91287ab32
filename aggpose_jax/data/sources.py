"""Random-access sources of person records (Grain ``RandomAccessDataSource`` protocol).

Every source yields the same record dict, one per person::

    {'image_id': int64, 'image_file': str, 'image_bytes': bytes (b'' if the file is missing),
     'bbox': float32[4] (x, y, w, h), 'keypoints': float32[J, 3] (x, y, v),
     'score': float32, 'area': float32}

``CocoKeypointSource`` reads a COCO keypoint annotation file (plus, for evaluation, an optional
person-detection results file); ``TfdsKeypointSource`` reads shards prepared by
``aggpose_jax.data.tfds_builder``. Image files are only read in ``__getitem__``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from aggpose_jax.pose.keypoints import KeypointSet, get_keypoint_set

Record = dict[str, Any]

TFDS_NAME = "aggpose_keypoints"  # TFDS dataset name; configs are keypoint-set names
SPLIT_ALIASES = {"val": "validation", "valid": "validation", "validation": "validation", "train": "train"}


def make_record(
    image_id: int, image_file: str, image_bytes: bytes, bbox: Any, keypoints: Any, score: float, area: float
) -> Record:
    """A record with the canonical dtypes."""
    return {
        "image_id": np.int64(image_id),
        "image_file": str(image_file),
        "image_bytes": bytes(image_bytes),
        "bbox": np.asarray(bbox, np.float32).reshape(4),
        "keypoints": np.asarray(keypoints, np.float32).reshape(-1, 3),
        "score": np.float32(score),
        "area": np.float32(area),
    }


def load_json(path: str) -> Any:
    """Parse a JSON file; anything that is not JSON -> ValueError naming the file."""
    try:
        with open(path, "rb") as f:
            return json.loads(f.read())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a valid JSON file ({e})") from None


def clean_box(bbox: Sequence[float], width: float, height: float) -> tuple[float, float, float, float] | None:
    """HRNet's box cleaning: clip to the image; None if nothing is left."""
    x, y, w, h = (float(v) for v in bbox)
    x1, y1 = max(0.0, x), max(0.0, y)
    x2 = min(width - 1.0, x1 + max(0.0, w - 1.0))
    y2 = min(height - 1.0, y1 + max(0.0, h - 1.0))
    if x2 >= x1 and y2 >= y1:
        return x1, y1, x2 - x1, y2 - y1
    return None


class _Fields:
    """Reads required fields of one JSON file, raising ``ValueError('<file>: <where>: ...')``."""

    def __init__(self, path: str):
        self.path = path

    def error(self, where: str, what: str) -> ValueError:
        return ValueError(f"{self.path}: {where}: {what}")

    def get(self, obj: Any, key: str, where: str) -> Any:
        if not isinstance(obj, dict):
            raise self.error(where, f"expected an object, got {type(obj).__name__}")
        if key not in obj:
            raise self.error(f"{where}.{key}" if where else key, "missing required field")
        return obj[key]

    def get_list(self, obj: Any, key: str, where: str = "") -> list:
        value = self.get(obj, key, where)
        if not isinstance(value, list):
            raise self.error(f"{where}.{key}" if where else key, f"expected a list, got {type(value).__name__}")
        return value

    def numbers(self, value: Any, where: str, length: int | None = None) -> np.ndarray:
        try:
            arr = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            raise self.error(where, "expected a list of numbers") from None
        if arr.ndim != 1 or (length is not None and arr.shape[0] != length):
            want = f"{length} numbers" if length is not None else "a flat list of numbers"
            raise self.error(where, f"expected {want}, got shape {list(arr.shape)}")
        if not np.all(np.isfinite(arr)):
            raise self.error(where, "contains NaN or infinite values")
        return arr

    def number(self, value: Any, where: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self.error(where, f"expected a finite number, got {value!r}")
        return float(value)

    def integer(self, value: Any, where: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(where, f"expected an integer, got {value!r}")
        return int(value)


def _bulk_numbers(f: _Fields, rows: list, where_fmt: str, length: int) -> np.ndarray:
    """rows (lists of ``length`` numbers) -> float64 (N, length); the first bad row names its field."""
    try:
        arr = np.asarray(rows, dtype=np.float64).reshape(len(rows), length)
        ok = bool(np.isfinite(arr).all())
    except (TypeError, ValueError):
        ok = False
    if not ok:
        for k, row in enumerate(rows):
            f.numbers(row, where_fmt.format(k), length)
        raise AssertionError("unreachable: a bad row was not found")  # pragma: no cover
    return arr


def _person_category_id(fields: _Fields, categories: list, kset: KeypointSet) -> int:
    """Id of the 'person' category (or the only category); checks its joint count."""
    if not categories:
        raise fields.error("categories", "empty list (need the person category)")
    chosen = [k for k, c in enumerate(categories) if isinstance(c, dict) and c.get("name") == "person"]
    if not chosen:
        if len(categories) != 1:
            raise fields.error("categories", "no category named 'person' and more than one category")
        chosen = [0]
    k = chosen[0]
    cat = categories[k]
    cat_id = fields.integer(fields.get(cat, "id", f"categories[{k}]"), f"categories[{k}].id")
    names = cat.get("keypoints")
    if isinstance(names, list) and names and len(names) != kset.num_joints:
        raise fields.error(
            f"categories[{k}].keypoints",
            f"{len(names)} joint names but keypoint set '{kset.name}' has {kset.num_joints} joints",
        )
    return cat_id


class CocoKeypointSource:
    """Person records from a COCO keypoint annotation file (HRNet's top-down data recipe).

    Ground-truth mode (no ``detections_file``): one record per person annotation of the person
    category that is not a crowd, whose box survives HRNet's cleaning (clipped to the image,
    ``area > 0``) and that has at least one labelled joint (``max(v) > 0``; HRNet applies this
    in training and in GT-box evaluation alike). ``score`` is 1.
    Detection mode (evaluation only): one record per detection of category 1 with
    ``score >= det_score_threshold`` (HRNet's rule), box as given, keypoints zero.

    Picklable; ``__getitem__`` reads the image file then (b'' when it is missing).
    """

    def __init__(
        self,
        ann_file: str,
        image_dir: str,
        *,
        keypoint_set: KeypointSet | str,
        train: bool,
        detections_file: str | None = None,
        det_score_threshold: float = 0.0,
    ):
        self.ann_file = os.fspath(ann_file)
        self.image_dir = os.fspath(image_dir)
        self.keypoint_set = get_keypoint_set(keypoint_set)
        self.train = bool(train)
        self.detections_file = os.fspath(detections_file) if detections_file else None
        self.det_score_threshold = float(det_score_threshold)
        if self.train and self.detections_file:
            raise ValueError(
                f"CocoKeypointSource: detections_file {self.detections_file} is for evaluation only (train=False)"
            )
        images = self._load_annotations()
        if self.detections_file:
            self._load_detections(images)

    # ------------------------------------------------------------------ loading
    def _load_annotations(self) -> dict[int, int]:
        """Parse and validate ``ann_file``; fills the record arrays (GT mode). Returns id -> image index."""
        f = _Fields(self.ann_file)
        data = load_json(self.ann_file)
        if not isinstance(data, dict):
            raise f.error("<top level>", f"expected a JSON object, got {type(data).__name__}")
        images = f.get_list(data, "images")
        annotations = f.get_list(data, "annotations")
        categories = f.get_list(data, "categories")
        person_id = _person_category_id(f, categories, self.keypoint_set)

        self.image_ids = np.zeros((len(images),), np.int64)
        self.image_files: list[str] = []
        sizes = np.zeros((len(images), 2), np.float64)  # (width, height)
        index_of: dict[int, int] = {}
        for k, img in enumerate(images):
            where = f"images[{k}]"
            image_id = f.integer(f.get(img, "id", where), f"{where}.id")
            file_name = f.get(img, "file_name", where)
            if not isinstance(file_name, str) or not file_name:
                raise f.error(f"{where}.file_name", f"expected a non-empty string, got {file_name!r}")
            width = f.number(f.get(img, "width", where), f"{where}.width")
            height = f.number(f.get(img, "height", where), f"{where}.height")
            if image_id in index_of:
                raise f.error(f"{where}.id", f"duplicate image id {image_id}")
            index_of[image_id] = k
            self.image_ids[k] = image_id
            self.image_files.append(file_name)
            sizes[k] = (width, height)

        num_joints = self.keypoint_set.num_joints
        n = len(annotations)
        ann_image = np.zeros((n,), np.int64)
        bboxes: list[Any] = [None] * n
        kps_rows: list[Any] = [None] * n
        areas = np.full((n,), np.nan)  # NaN: no 'area' field -> box area
        person = np.zeros((n,), bool)
        for k, ann in enumerate(annotations):  # cheap structural checks; values are checked in bulk
            where = f"annotations[{k}]"
            image_id = f.get(ann, "image_id", where)
            bboxes[k] = f.get(ann, "bbox", where)
            kps_rows[k] = f.get(ann, "keypoints", where)
            if type(image_id) is not int:
                f.integer(image_id, f"{where}.image_id")
            if image_id not in index_of:
                raise f.error(f"{where}.image_id", f"{image_id} is not an id in 'images'")
            if isinstance(kps_rows[k], list) and len(kps_rows[k]) != 3 * num_joints:
                raise f.error(
                    f"{where}.keypoints",
                    f"{len(kps_rows[k])} values, expected {3 * num_joints} ({num_joints} joints x 3) "
                    f"for keypoint set '{self.keypoint_set.name}'",
                )
            ann_image[k] = index_of[image_id]
            person[k] = ann.get("category_id", person_id) == person_id and not ann.get("iscrowd", 0)
            if "area" in ann:
                areas[k] = f.number(ann["area"], f"{where}.area")
        bbox = _bulk_numbers(f, bboxes, "annotations[{}].bbox", 4)
        kps = _bulk_numbers(f, kps_rows, "annotations[{}].keypoints", 3 * num_joints).reshape(n, num_joints, 3)
        areas = np.where(np.isnan(areas), bbox[:, 2] * bbox[:, 3], areas)

        # HRNet's cleaning (see clean_box), vectorised.
        width, height = sizes[ann_image, 0], sizes[ann_image, 1]
        x1, y1 = np.maximum(0.0, bbox[:, 0]), np.maximum(0.0, bbox[:, 1])
        x2 = np.minimum(width - 1.0, x1 + np.maximum(0.0, bbox[:, 2] - 1.0))
        y2 = np.minimum(height - 1.0, y1 + np.maximum(0.0, bbox[:, 3] - 1.0))
        labelled = kps[:, :, 2].max(axis=1, initial=0.0) > 0 if n else np.zeros((0,), bool)
        keep = np.flatnonzero(person & (x2 >= x1) & (y2 >= y1) & (areas > 0) & labelled)
        keep = keep[np.argsort(ann_image[keep], kind="stable")]  # image order, then file order
        clean = np.stack([x1, y1, x2 - x1, y2 - y1], axis=1)
        self._fill(list(ann_image[keep]), clean[keep], kps[keep], np.ones((keep.size,), np.float32), areas[keep])
        return index_of

    def _load_detections(self, index_of: dict[int, int]) -> None:
        """Replace the GT people by detections from ``detections_file`` (COCO results format)."""
        path = self.detections_file
        assert path is not None
        f = _Fields(path)
        dets = load_json(path)
        if not isinstance(dets, list):
            raise f.error("<top level>", f"expected a JSON list of detections, got {type(dets).__name__}")
        img_idx, boxes, scores = [], [], []
        for k, det in enumerate(dets):
            where = f"[{k}]"
            image_id = f.integer(f.get(det, "image_id", where), f"{where}.image_id")
            bbox = f.numbers(f.get(det, "bbox", where), f"{where}.bbox", 4)
            score = f.number(f.get(det, "score", where), f"{where}.score")
            if det.get("category_id", 1) != 1 or score < self.det_score_threshold:
                continue
            if image_id not in index_of:
                raise f.error(f"{where}.image_id", f"{image_id} is not an image of {self.ann_file}")
            img_idx.append(index_of[image_id])
            boxes.append(bbox)
            scores.append(score)
        zeros = [np.zeros((self.keypoint_set.num_joints, 3))] * len(boxes)
        self._fill(img_idx, boxes, zeros, np.asarray(scores, np.float32), [b[2] * b[3] for b in boxes])

    def _fill(self, img_idx: list[int], boxes: list, kps: list, scores: np.ndarray, areas: list) -> None:
        n, num_joints = len(img_idx), self.keypoint_set.num_joints
        self._image_index = np.asarray(img_idx, np.int32).reshape(n)
        self._bbox = np.asarray(boxes, np.float32).reshape(n, 4)
        self._keypoints = np.asarray(kps, np.float32).reshape(n, num_joints, 3)
        self._score = np.asarray(scores, np.float32).reshape(n)
        self._area = np.asarray(areas, np.float32).reshape(n)

    # ------------------------------------------------------------------ construction helpers
    @classmethod
    def from_root(
        cls,
        root: str,
        split: str,
        *,
        keypoints: KeypointSet | str = "coco",
        detections_file: str | None = None,
        det_score_threshold: float = 0.0,
    ) -> CocoKeypointSource:
        """ROOT/annotations/person_keypoints_{split}2017.json with images in ROOT/{split}2017.

        ``split`` is 'train' or 'val' ('validation' is accepted). A relative ``detections_file``
        that does not exist from the working directory is looked up under ``root``.
        """
        split = {"validation": "val", "valid": "val"}.get(split, split)
        if split not in ("train", "val"):
            raise ValueError(f"CocoKeypointSource.from_root: split must be 'train' or 'val', got {split!r}")
        ann_file = os.path.join(root, "annotations", f"person_keypoints_{split}2017.json")
        if detections_file and not os.path.isabs(detections_file) and not os.path.exists(detections_file):
            detections_file = os.path.join(root, detections_file)
        return cls(
            ann_file,
            os.path.join(root, f"{split}2017"),
            keypoint_set=keypoints,
            train=split == "train",
            detections_file=detections_file,
            det_score_threshold=det_score_threshold,
        )

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return int(self._image_index.shape[0])

    def image_path(self, index: int) -> str:
        return os.path.join(self.image_dir, self.image_files[int(self._image_index[index])])

    def __getitem__(self, index: int) -> Record:
        index = int(index)
        if not -len(self) <= index < len(self):
            raise IndexError(f"record {index} out of range for {len(self)} records")
        img = int(self._image_index[index])
        try:
            with open(os.path.join(self.image_dir, self.image_files[img]), "rb") as fh:
                data = fh.read()
        except OSError:
            data = b""  # the decode stage counts and skips it
        return make_record(
            self.image_ids[img],
            self.image_files[img],
            data,
            self._bbox[index],
            self._keypoints[index],
            self._score[index],
            self._area[index],
        )

    def __repr__(self) -> str:
        mode = f"detections={self.detections_file!r}" if self.detections_file else "gt_boxes"
        return (
            f"CocoKeypointSource({self.ann_file!r}, {len(self)} people in {len(self.image_files)} images, "
            f"keypoints={self.keypoint_set.name!r}, train={self.train}, {mode})"
        )


def resolve_tfds_dir(name_or_dir: str | None, data_dir: str | None, keypoints: str) -> str:
    """Directory holding ``dataset_info.json`` of a prepared dataset.

    ``name_or_dir``: such a directory; or a dataset directory with version sub-directories (the
    highest version is taken); or a TFDS name ('aggpose_keypoints/coco[/1.0.0]') under ``data_dir``
    (default ``$TFDS_DATA_DIR`` or ~/tensorflow_datasets). None means 'aggpose_keypoints/<keypoints>'.
    """
    name = name_or_dir or f"{TFDS_NAME}/{keypoints}"
    candidates = [name]
    if not os.path.isabs(name):
        base = (
            data_dir or os.environ.get("TFDS_DATA_DIR") or os.path.join(os.path.expanduser("~"), "tensorflow_datasets")
        )
        candidates.insert(0, os.path.join(base, name))
    for path in candidates:
        if os.path.isfile(os.path.join(path, "dataset_info.json")):
            return path
        if os.path.isdir(path):
            versions = [v for v in os.listdir(path) if os.path.isfile(os.path.join(path, v, "dataset_info.json"))]
            versions = [v for v in versions if all(p.isdigit() for p in v.split("."))]
            if versions:
                best = max(versions, key=lambda v: tuple(int(p) for p in v.split(".")))
                return os.path.join(path, best)
    raise FileNotFoundError(
        f"no prepared TFDS dataset at {' or '.join(candidates)} (build it with "
        "`python -m aggpose_jax.data.tfds_builder ROOT --keypoints NAME --data-dir DIR`)"
    )


class TfdsKeypointSource:
    """Person records from ArrayRecord shards written by ``aggpose_jax.data.tfds_builder``.

    Same records, in the same order, as the ``CocoKeypointSource`` the shards were built from.
    Opened lazily (also after unpickling in a Grain worker); needs no TensorFlow.

    Args:
      name_or_dir: see :func:`resolve_tfds_dir`.
      split: 'train' or 'val'/'validation' (TFDS slicing such as 'train[:10]' works too).
      data_dir: TFDS data directory for a name.
      keypoints / keypoint_set: the expected keypoint set (name or KeypointSet); default 'coco'.
    """

    def __init__(
        self,
        name_or_dir: str | None = None,
        split: str = "train",
        *,
        data_dir: str | None = None,
        keypoints: KeypointSet | str | None = None,
        keypoint_set: KeypointSet | str | None = None,
    ):
        self.keypoint_set = get_keypoint_set(keypoint_set or keypoints or "coco")
        self.dataset_dir = resolve_tfds_dir(name_or_dir, data_dir, self.keypoint_set.name)
        base, sep, rest = split.partition("[")
        self.split = SPLIT_ALIASES.get(base, base) + sep + rest
        self._source: Any = None
        n = self._open()
        shape = tuple(self._source.dataset_info.features["keypoints"].shape)
        if shape != (self.keypoint_set.num_joints, 3):
            raise ValueError(
                f"{self.dataset_dir}: features.keypoints has shape {shape}, expected "
                f"({self.keypoint_set.num_joints}, 3) for keypoint set '{self.keypoint_set.name}'"
            )
        self._len = n

    def _open(self) -> int:
        import tensorflow_datasets as tfds  # imported here: only this source needs it

        builder = tfds.builder_from_directory(self.dataset_dir)
        self._source = builder.as_data_source(split=self.split)
        return len(self._source)

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index: int) -> Record:
        if self._source is None:
            self._open()
        index = int(index)
        if not -self._len <= index < self._len:
            raise IndexError(f"record {index} out of range for {self._len} records")
        ex = self._source[index % self._len]
        file_name = ex["image_file"]
        if isinstance(file_name, bytes):
            file_name = file_name.decode("utf-8")
        return make_record(
            ex["image_id"], file_name, ex["image_bytes"], ex["bbox"], ex["keypoints"], ex["score"], ex["area"]
        )

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_source"] = None
        return state

    def __repr__(self) -> str:
        return f"TfdsKeypointSource({self.dataset_dir!r}, split={self.split!r}, {self._len} people)"
