"""Single-subject mode: find the one subject from the whole frame, follow it, notice a second person.

* Seed: the frame's seed windows (the whole frame, fitted to the model's aspect ratio without padding,
  and for a frame much wider or taller than the model's input, full-height or full-width windows across
  it) are run; the window with the highest mean joint score holds the subject; the box of its confident
  keypoints (x1.25) is the next crop, refined for up to ``passes`` passes in all. Several frames are
  seeded in one batch.
* Follow: a frame's box is the box of an earlier frame's confident keypoints, expanded x1.25 (the
  top-down scale convention): the previous frame's with a batch size of 1, otherwise the last frame of
  the previous batch (at most ``batch_size`` frames earlier).
* Re-seed: when a frame's mean joint score falls below ``reseed_below`` (or fewer than three joints are
  confident), the next frame is seeded again from the whole frame.
* Several people: a seed window whose joints are about as confident as the subject's but lie outside
  the subject's box shows another person; single-subject mode is then refused
  (:class:`SeveralPeopleError`): boxes are needed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from aggpose_jax.predict.boxes import box_from_keypoints
from aggpose_jax.predict.engine import CropEngine


class SeveralPeopleError(ValueError):
    """A frame shows several people, so single-subject mode cannot choose one: boxes are needed."""


@dataclasses.dataclass(frozen=True)
class SubjectSettings:
    """Single-subject mode settings.

    Attributes:
      min_score: joints scoring at least this count as confident (they define the next box).
      reseed_below: a frame whose mean joint score is below it makes the next frame be seeded again.
      padding: the box of the keypoints is expanded by this factor (1.25, the top-down convention).
      passes: model passes of a seed (the seed windows, then refinements on the keypoints' box).
      other_person_ratio: a seed window counts as another person when its mean joint score is at least
        this share of the subject's (and at least ``reseed_below``) and its confident joints lie mostly
        outside the subject's box.
      check_several_people: whether seeds look for another person at all.
    """

    min_score: float = 0.2
    reseed_below: float = 0.25
    padding: float = 1.25
    passes: int = 3
    other_person_ratio: float = 0.6
    check_several_people: bool = True

    def __post_init__(self) -> None:
        if self.passes < 1:
            raise ValueError(f"seed passes must be >= 1, got {self.passes}")
        if self.padding < 1.0:
            raise ValueError(f"padding must be >= 1, got {self.padding}")


@dataclasses.dataclass
class Seeded:
    """Seed results for n frames: keypoints (n, J, 2), scores (n, J), the last pass's box (n, 4) (before
    padding: a seed window or the previous pass's keypoints), and per frame the seed windows (k, 4) that
    show another person."""

    keypoints: np.ndarray
    scores: np.ndarray
    boxes: np.ndarray
    others: list[np.ndarray]


def seed_windows(width: int, height: int, aspect_ratio: float) -> np.ndarray:
    """Seed windows (k, 4) of a frame: the whole frame, and when the frame is much wider (taller) than the
    model's input, full-height (full-width) windows of the model's aspect ratio across it, half overlapping."""
    out = [[0.0, 0.0, float(width), float(height)]]
    if width > 1.3 * aspect_ratio * height:
        size = height * aspect_ratio
        n = int(np.ceil((width - size) / (0.5 * size))) + 1
        out += [[float(x), 0.0, size, float(height)] for x in np.linspace(0.0, width - size, n)]
    elif height > 1.3 * width / aspect_ratio:
        size = width / aspect_ratio
        n = int(np.ceil((height - size) / (0.5 * size))) + 1
        out += [[0.0, float(y), float(width), size] for y in np.linspace(0.0, height - size, n)]
    return np.asarray(out, np.float64)


def _containment(box: np.ndarray, other: np.ndarray) -> float:
    """Share of ``box``'s area inside ``other`` (x, y, w, h)."""
    iw = max(0.0, min(box[0] + box[2], other[0] + other[2]) - max(box[0], other[0]))
    ih = max(0.0, min(box[1] + box[3], other[1] + other[3]) - max(box[1], other[1]))
    return float(iw * ih / max(box[2] * box[3], 1e-9))


def seed(engine: CropEngine, frames: Sequence[np.ndarray], settings: SubjectSettings) -> Seeded:
    """Find the subject in each BGR frame from its seed windows (batched over frames); see the module doc."""
    n, j = len(frames), engine.config.num_joints
    windows = [seed_windows(f.shape[1], f.shape[0], engine.aspect_ratio) for f in frames]
    owner = np.concatenate([np.full(len(w), i) for i, w in enumerate(windows)]).astype(int)
    all_windows = np.concatenate(windows)
    centers, scales = engine.center_scale(all_windows, padding=1.0)
    crops = np.concatenate([engine.crop(frames[i], centers[k], scales[k]).images for k, i in enumerate(owner)])
    win_kp, win_sc = engine.decode_heatmaps(engine.heatmaps(crops), centers, scales)
    win_mean = win_sc.mean(axis=1)
    keypoints, scores = np.zeros((n, j, 2), np.float32), np.zeros((n, j), np.float32)
    used = np.zeros((n, 4))
    for i in range(n):
        ks = np.flatnonzero(owner == i)
        best = ks[int(np.argmax(win_mean[ks]))]
        keypoints[i], scores[i], used[i] = win_kp[best], win_sc[best], all_windows[best]
    for _ in range(settings.passes - 1):
        boxes = [box_from_keypoints(keypoints[i], scores[i], settings.min_score) for i in range(n)]
        todo = [i for i in range(n) if boxes[i] is not None]
        if not todo:
            break
        c, s = engine.center_scale(np.stack([boxes[i] for i in todo]), padding=settings.padding)
        crops = np.concatenate([engine.crop(frames[i], c[k], s[k]).images for k, i in enumerate(todo)])
        kp, sc = engine.decode_heatmaps(engine.heatmaps(crops), c, s)
        for k, i in enumerate(todo):
            keypoints[i], scores[i], used[i] = kp[k], sc[k], boxes[i]
    others: list[np.ndarray] = []
    for i in range(n):
        found: list[np.ndarray] = []
        subject = box_from_keypoints(keypoints[i], scores[i], settings.min_score)
        if settings.check_several_people and subject is not None:
            grown = np.concatenate(
                [subject[:2] - 0.5 * (settings.padding - 1.0) * subject[2:], subject[2:] * settings.padding]
            )
            floor = max(settings.reseed_below, settings.other_person_ratio * float(scores[i].mean()))
            for k in np.flatnonzero(owner == i):
                box = box_from_keypoints(win_kp[k], win_sc[k], settings.min_score)
                if win_mean[k] >= floor and box is not None and _containment(box, grown) < 0.3:
                    if all(_containment(box, f) < 0.3 for f in found):
                        found.append(box)
        others.append(np.asarray(found, np.float64).reshape(-1, 4))
    return Seeded(keypoints, scores, used, others)


def several_people(seeded: Seeded, i: int) -> bool:
    """Whether frame ``i`` of a seed shows another person besides the subject."""
    return len(seeded.others[i]) > 0


class Follower:
    """The box the next frames of a video use: from the latest confident keypoints, or None (seed)."""

    def __init__(self, settings: SubjectSettings):
        self.settings = settings
        self.box: np.ndarray | None = None
        self.reseeds = 0

    def confident(self, scores: np.ndarray) -> bool:
        return bool(np.mean(scores) >= self.settings.reseed_below)

    def update(self, keypoints: np.ndarray, scores: np.ndarray) -> None:
        """Follow from this frame's keypoints, or ask for a seed when it is not confident."""
        box = box_from_keypoints(keypoints, scores, self.settings.min_score) if self.confident(scores) else None
        if box is None and self.box is not None:
            self.reseeds += 1
        self.box = box


__all__ = ["Follower", "Seeded", "SeveralPeopleError", "SubjectSettings", "seed", "seed_windows", "several_people"]
