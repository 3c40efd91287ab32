"""Prediction records (one per frame or per person) and the in-memory results of the Python API."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from aggpose_jax.predict.video import VideoInfo


@dataclasses.dataclass
class Record:
    """One subject in one frame or image: keypoints (J, 2) and scores (J,) (NaN / 0 without a box), the box
    (x, y, w, h) it was cropped from (before the x1.25 padding), the box's score and where it came from;
    ``identity_uncertain``: single-subject mode found a person far from where the subject was last seen
    (the keypoints may be someone else's)."""

    frame: int
    time_s: float | None
    keypoints: np.ndarray
    scores: np.ndarray
    box: np.ndarray
    box_source: str
    box_score: float = 1.0
    person: int = 0
    identity_uncertain: bool = False

    @classmethod
    def empty(cls, frame: int, time_s: float | None, num_joints: int, person: int = 0) -> Record:
        """A frame without a box: no keypoints."""
        return cls(
            frame,
            time_s,
            np.full((num_joints, 2), np.nan, np.float32),
            np.zeros((num_joints,), np.float32),
            np.full((4,), np.nan),
            "none",
            0.0,
            person,
        )


@dataclasses.dataclass
class VideoPrediction:
    """One video's predictions, frame by frame: ``times`` (T,) from the container (its start included),
    ``keypoints`` (T, J, 2) in image pixels, ``scores`` (T, J), ``boxes`` (T, 4), ``box_scores`` (T,),
    ``box_sources`` (T,), ``identity_uncertain`` (T,) (see :class:`Record`). ``stats`` holds, among others,
    ``decoding`` (whether every frame of the container was decoded, see ``VideoReader.completeness``)."""

    path: str
    info: VideoInfo
    joint_names: tuple[str, ...]
    frames: np.ndarray
    times: np.ndarray
    keypoints: np.ndarray
    scores: np.ndarray
    boxes: np.ndarray
    box_scores: np.ndarray
    box_sources: np.ndarray
    stats: dict[str, Any] = dataclasses.field(default_factory=dict)
    identity_uncertain: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, bool))

    @classmethod
    def from_records(
        cls, path: str, info: VideoInfo, joint_names: tuple[str, ...], records: list[Record], **stats: Any
    ) -> VideoPrediction:
        j = len(joint_names)
        return cls(
            path=path,
            info=info,
            joint_names=joint_names,
            frames=np.array([r.frame for r in records], np.int64),
            times=np.array([r.time_s for r in records], np.float64),
            keypoints=np.stack([r.keypoints for r in records]).astype(np.float64) if records else np.zeros((0, j, 2)),
            scores=np.stack([r.scores for r in records]).astype(np.float64) if records else np.zeros((0, j)),
            boxes=np.stack([r.box for r in records]).astype(np.float64) if records else np.zeros((0, 4)),
            box_scores=np.array([r.box_score for r in records], np.float64),
            box_sources=np.array([r.box_source for r in records], dtype="<U6"),
            stats=dict(stats),
            identity_uncertain=np.array([r.identity_uncertain for r in records], bool),
        )


@dataclasses.dataclass
class ImagePrediction:
    """One image's people: ``keypoints`` (P, J, 2), ``scores`` (P, J), ``boxes`` (P, 4), ``box_scores`` (P,),
    ``box_sources`` (P,). P = 0 when no box was given for it. Coordinates are in the picture as displayed:
    ``exif_orientation`` is the file's EXIF orientation (None: none), ``orientation_applied`` whether the
    image was turned by it before prediction."""

    path: str
    keypoints: np.ndarray
    scores: np.ndarray
    boxes: np.ndarray
    box_scores: np.ndarray
    box_sources: list[str]
    exif_orientation: int | None = None
    orientation_applied: bool = False

    @classmethod
    def from_records(
        cls,
        path: str,
        records: list[Record],
        num_joints: int,
        exif_orientation: int | None = None,
        orientation_applied: bool = False,
    ) -> ImagePrediction:
        people = [r for r in records if r.box_source != "none"]
        turned = {"exif_orientation": exif_orientation, "orientation_applied": orientation_applied}
        if not people:
            empty = (np.zeros((0, num_joints, 2)), np.zeros((0, num_joints)), np.zeros((0, 4)), np.zeros(0), [])
            return cls(path, *empty, **turned)
        return cls(
            path,
            np.stack([r.keypoints for r in people]).astype(np.float64),
            np.stack([r.scores for r in people]).astype(np.float64),
            np.stack([r.box for r in people]).astype(np.float64),
            np.array([r.box_score for r in people], np.float64),
            [r.box_source for r in people],
            **turned,
        )


__all__ = ["ImagePrediction", "Record", "VideoPrediction"]
