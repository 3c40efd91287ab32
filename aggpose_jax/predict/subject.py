"""Single-subject mode: find the one subject from the whole frame, follow it, keep its identity.

* Seed: the frame's seed windows (the whole frame, fitted to the model's aspect ratio without padding,
  and for a frame much wider or taller than the model's input, full-height or full-width windows across
  it; on a re-seed also the place the subject was last seen) are run. The first seed takes the window
  with the highest mean joint score; the box of its confident keypoints (x1.25) is the next crop, refined
  for up to ``passes`` passes in all. Several frames are seeded in one batch.
* Identity: a re-seed takes the window consistent with the subject's last position and size (centre
  within ``max_shift`` of its size, size within ``max_size_ratio``), even when another person scores
  higher. When no window is consistent but a person is seen elsewhere, that person's keypoints are kept
  for the frame, flagged ``identity_uncertain``, and the follower does not follow them: the next frames
  are seeded again, so the track returns to the subject when it reappears.
* Follow: a frame's box covers the whole body (:func:`body_box`): the confident joints; when some joint
  is not confident, also the joints the model still places with a low score (``low_score``) near them,
  each joint's last confident position (for ``memory_s``), each with a ``margin``, and the previous box
  shrunk by at most ``shrink`` per update, so a limb that scores low for a moment stays inside the crop.
  The crop is that box x1.25 (the top-down scale convention). It comes from the previous frame with a batch size of 1,
  otherwise from the last frame of the previous batch (at most ``batch_size`` frames earlier).
* Re-seed: when a frame's mean joint score falls below ``reseed_below`` (or fewer than three joints are
  confident), the next frame is seeded again.
* Several people: a seed window whose joints are about as confident as the subject's but lie outside
  the subject's box shows another person. Videos follow the subject and count such frames; a single
  image with several people cannot say who the subject is (:class:`SeveralPeopleError`): boxes are needed.
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
      max_shift: a re-seed candidate is the subject when its centre is within this share of the subject's
        last size (the larger side of its box) from the subject's last centre...
      max_size_ratio: ... and its size (square root of the area) within this factor of the subject's.
      low_score: joints scoring at least this (below ``min_score``) still count for the follow box when
        they lie near the confident ones.
      margin: around each joint of uncertain position (low-scoring, or remembered from where it was last
        confident), the follow box keeps this share of the body's size.
      memory_s: a joint's last confident position counts for the follow box this long.
      shrink: while some joint is not confident, the follow box may shrink to this share of the previous
        one per update, not faster.
    """

    min_score: float = 0.2
    reseed_below: float = 0.25
    padding: float = 1.25
    passes: int = 3
    other_person_ratio: float = 0.6
    check_several_people: bool = True
    max_shift: float = 0.6
    max_size_ratio: float = 2.0
    low_score: float = 0.05
    margin: float = 0.1
    memory_s: float = 2.0
    shrink: float = 0.85

    def __post_init__(self) -> None:
        if self.passes < 1:
            raise ValueError(f"seed passes must be >= 1, got {self.passes}")
        if self.padding < 1.0:
            raise ValueError(f"padding must be >= 1, got {self.padding}")
        if not (self.max_shift > 0 and self.max_size_ratio >= 1):
            raise ValueError(
                f"max_shift must be > 0 and max_size_ratio >= 1, got {self.max_shift}, {self.max_size_ratio}"
            )
        if not (0 <= self.margin <= 1 and 0 < self.shrink <= 1 and 0 <= self.low_score <= self.min_score):
            raise ValueError(
                f"need 0 <= margin <= 1, 0 < shrink <= 1 and 0 <= low_score <= min_score, "
                f"got {self.margin}, {self.shrink}, {self.low_score}"
            )
        if not self.memory_s >= 0:
            raise ValueError(f"memory_s must be >= 0, got {self.memory_s}")


@dataclasses.dataclass
class Seeded:
    """Seed results for n frames: keypoints (n, J, 2), scores (n, J), the last pass's box (n, 4) (before
    padding: a seed window or the previous pass's keypoints), per frame the seed windows (k, 4) that
    show another person, and (n,) whether the keypoints are a person found far from the subject's last
    position (``uncertain``: not the subject, as far as can be told)."""

    keypoints: np.ndarray
    scores: np.ndarray
    boxes: np.ndarray
    others: list[np.ndarray]
    uncertain: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, bool))


def grow(box: np.ndarray, share: float) -> np.ndarray:
    """``box`` (x, y, w, h) with ``share`` of its width / height added on each side."""
    box = np.asarray(box, np.float64)
    return np.concatenate([box[:2] - share * box[2:], box[2:] * (1.0 + 2.0 * share)])


def union(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lo = np.minimum(a[:2], b[:2])
    hi = np.maximum(a[:2] + a[2:], b[:2] + b[2:])
    return np.concatenate([lo, hi - lo])


def _intersect(a: np.ndarray, b: np.ndarray) -> np.ndarray | None:
    lo = np.maximum(a[:2], b[:2])
    hi = np.minimum(a[:2] + a[2:], b[:2] + b[2:])
    return None if (hi <= lo).any() else np.concatenate([lo, hi - lo])


def _scaled(box: np.ndarray, factor: float) -> np.ndarray:
    centre = box[:2] + 0.5 * box[2:]
    size = box[2:] * factor
    return np.concatenate([centre - 0.5 * size, size])


def same_subject(box: np.ndarray, anchor: np.ndarray, settings: SubjectSettings) -> bool:
    """Whether a candidate's box (of its confident joints) fits where the subject was last seen."""
    shift = np.hypot(*((box[:2] + 0.5 * box[2:]) - (anchor[:2] + 0.5 * anchor[2:])))
    ratio = np.sqrt(max(box[2] * box[3], 1e-9) / max(anchor[2] * anchor[3], 1e-9))
    return bool(
        shift <= settings.max_shift * max(anchor[2], anchor[3])
        and 1.0 / settings.max_size_ratio <= ratio <= settings.max_size_ratio
    )


def body_box(
    keypoints: np.ndarray,
    scores: np.ndarray,
    previous: np.ndarray | None,
    settings: SubjectSettings,
    remembered: np.ndarray | None = None,
) -> np.ndarray | None:
    """The whole body's box (before the follow margin) from a frame's keypoints; None when fewer than
    three joints are confident.

    When every joint is confident it is their extent. Otherwise a limb scores low for a moment (covered,
    blurred, at the crop's edge) and must not be cropped away: the box also covers the joints the model
    still places with ``low_score`` within half the confident box's size of it, the last confident
    position of each joint not confident now (``remembered``, (J, 2), NaN where unknown), each such
    uncertain point with ``margin`` (a share of the body's size) around it, and ``previous`` shrunk by
    ``shrink``."""
    confident = box_from_keypoints(keypoints, scores, settings.min_score)
    if confident is None:
        return None
    sure = np.asarray(scores) >= settings.min_score
    if sure.all():
        return confident
    body = confident
    near = grow(confident, 0.5)
    points = [p for p, s in zip(keypoints[~sure], scores[~sure], strict=True) if s >= settings.low_score]
    if remembered is not None:
        points += [p for p in np.asarray(remembered)[~sure] if np.isfinite(p).all()]
    half = settings.margin * max(confident[2], confident[3])
    for p in points:
        p = np.asarray(p, np.float64)
        if np.isfinite(p).all() and (near[:2] <= p).all() and (p <= near[:2] + near[2:]).all():
            body = union(body, np.concatenate([p - half, [2 * half, 2 * half]]))
    if previous is not None:
        body = union(body, _scaled(previous, settings.shrink))
    return body


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


def seed(
    engine: CropEngine,
    frames: Sequence[np.ndarray],
    settings: SubjectSettings,
    anchor: np.ndarray | None = None,
) -> Seeded:
    """Find the subject in each BGR frame from its seed windows (batched over frames); see the module doc.

    ``anchor``: the box of the subject's confident joints where it was last seen (a re-seed), or None (the
    first seed: the most confident window)."""
    n, j = len(frames), engine.config.num_joints
    windows = [seed_windows(f.shape[1], f.shape[0], engine.aspect_ratio) for f in frames]
    if anchor is not None:  # also look where the subject was, as a follow crop would
        around = _scaled(grow(anchor, 0.1), settings.padding)
        windows = [np.concatenate([w, around[None]]) for w in windows]
    owner = np.concatenate([np.full(len(w), i) for i, w in enumerate(windows)]).astype(int)
    all_windows = np.concatenate(windows)
    centers, scales = engine.center_scale(all_windows, padding=1.0)
    crops = np.concatenate([engine.crop(frames[i], centers[k], scales[k]).images for k, i in enumerate(owner)])
    win_kp, win_sc = engine.decode_heatmaps(engine.heatmaps(crops), centers, scales)
    win_mean = win_sc.mean(axis=1)
    keypoints, scores = np.zeros((n, j, 2), np.float32), np.zeros((n, j), np.float32)
    used = np.zeros((n, 4))
    uncertain = np.zeros(n, bool)
    for i in range(n):
        ks = np.flatnonzero(owner == i)
        best = ks[int(np.argmax(win_mean[ks]))]
        if anchor is not None:
            boxes = {k: box_from_keypoints(win_kp[k], win_sc[k], settings.min_score) for k in ks}
            fits = [k for k in ks if boxes[k] is not None and same_subject(boxes[k], anchor, settings)]
            fits = [k for k in fits if win_mean[k] >= settings.reseed_below] or fits
            if fits:
                best = max(fits, key=lambda k: win_mean[k])
            else:
                uncertain[i] = boxes[best] is not None and win_mean[best] >= settings.reseed_below
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
    if anchor is not None:  # a refinement may have slid onto someone else
        for i in range(n):
            final = box_from_keypoints(keypoints[i], scores[i], settings.min_score)
            person = final is not None and float(scores[i].mean()) >= settings.reseed_below
            if person and not same_subject(final, anchor, settings):
                uncertain[i] = True
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
    return Seeded(keypoints, scores, used, others, uncertain)


def several_people(seeded: Seeded, i: int) -> bool:
    """Whether frame ``i`` of a seed shows another person besides the subject."""
    return len(seeded.others[i]) > 0


class Follower:
    """The box the next frames of a video use (None: seed), and where the subject was last seen.

    ``box``: the whole body's box of the latest frame followed (see :func:`body_box`), None when the next
    frames must be seeded; ``anchor``: the box of the subject's confident joints when it was last seen
    (kept while it is lost, so that a re-seed looks for it there)."""

    def __init__(self, settings: SubjectSettings):
        self.settings = settings
        self.body: np.ndarray | None = None
        self.anchor: np.ndarray | None = None
        self.reseeds = 0
        self._seen: np.ndarray | None = None  # (J, 2) last confident position of each joint
        self._seen_t: np.ndarray | None = None  # (J,) its time

    @property
    def box(self) -> np.ndarray | None:
        return self.body

    def confident(self, scores: np.ndarray) -> bool:
        return bool(np.mean(scores) >= self.settings.reseed_below)

    def lose(self) -> None:
        """The subject is not confidently seen: seed the next frames (the anchor stays)."""
        if self.body is not None:
            self.reseeds += 1
        self.body = None

    def update(self, keypoints: np.ndarray, scores: np.ndarray, time_s: float | None = None) -> None:
        """Follow from this frame's keypoints (the subject's), or ask for a seed when it is not confident."""
        confident = box_from_keypoints(keypoints, scores, self.settings.min_score) if self.confident(scores) else None
        if confident is None:
            self.lose()
            return
        t = 0.0 if time_s is None else float(time_s)
        keypoints = np.asarray(keypoints, np.float64)
        sure = np.asarray(scores) >= self.settings.min_score
        if self._seen is None:
            self._seen = np.full(keypoints.shape, np.nan)
            self._seen_t = np.full(len(keypoints), -np.inf)
        remembered = np.where((t - self._seen_t <= self.settings.memory_s)[:, None], self._seen, np.nan)
        self.body = body_box(keypoints, scores, self.body, self.settings, remembered)
        self._seen[sure], self._seen_t[sure] = keypoints[sure], t
        self.anchor = confident

    def seeded(self, keypoints: np.ndarray, scores: np.ndarray, uncertain: bool, time_s: float | None = None) -> None:
        """After a seed: follow the subject found, or keep seeding when only someone else was found."""
        if uncertain:
            self.body = None
            return
        self.update(keypoints, scores, time_s)


__all__ = [
    "Follower",
    "Seeded",
    "SeveralPeopleError",
    "SubjectSettings",
    "body_box",
    "same_subject",
    "seed",
    "seed_windows",
    "several_people",
]
