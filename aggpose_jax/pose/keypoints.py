"""Keypoint sets: joint names, left/right flip pairs, body halves, skeleton and OKS sigmas.

Two sets are built in: ``'coco'`` (COCO-17, human) and ``'infant'`` (Infant-21, AggPose's infant
set). Any COCO-format ``categories`` entry can be turned into a set with
:meth:`KeypointSet.from_coco_category`. All indices are 0-based.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

Pairs = tuple[tuple[int, int], ...]


def _pairs(pairs: Iterable[Sequence[int]]) -> Pairs:
    return tuple((int(a), int(b)) for a, b in pairs)


@dataclasses.dataclass(frozen=True, eq=False)
class KeypointSet:
    """Definition of one keypoint set.

    Attributes:
      name: short identifier ('coco', 'infant', ...).
      names: joint names, one per joint, in model output order.
      flip_pairs: (left, right) index pairs swapped by a horizontal flip.
      upper_body / lower_body: joint indices used by half-body augmentation.
      skeleton: (a, b) index pairs drawn as limbs.
      sigmas: float32[J] OKS per-joint constants (COCO's ``kpt_oks_sigmas``).
      half_body_min_joints: half-body augmentation needs more than this many visible joints.
    """

    name: str
    names: tuple[str, ...]
    flip_pairs: Pairs
    upper_body: tuple[int, ...]
    lower_body: tuple[int, ...]
    skeleton: Pairs
    sigmas: np.ndarray
    half_body_min_joints: int

    def __post_init__(self) -> None:
        # Normalise containers (callers may pass lists) and freeze the sigma array.
        object.__setattr__(self, "names", tuple(str(n) for n in self.names))
        object.__setattr__(self, "flip_pairs", _pairs(self.flip_pairs))
        object.__setattr__(self, "skeleton", _pairs(self.skeleton))
        object.__setattr__(self, "upper_body", tuple(int(i) for i in self.upper_body))
        object.__setattr__(self, "lower_body", tuple(int(i) for i in self.lower_body))
        sigmas = np.array(self.sigmas, dtype=np.float32).reshape(-1)
        sigmas.setflags(write=False)
        object.__setattr__(self, "sigmas", sigmas)
        object.__setattr__(self, "half_body_min_joints", int(self.half_body_min_joints))
        self._validate()

    def _validate(self) -> None:
        j = len(self.names)
        where = f"keypoint set '{self.name}'"
        if j == 0:
            raise ValueError(f"{where}: no joint names")
        if len(set(self.names)) != j:
            raise ValueError(f"{where}: duplicate joint names in {self.names}")
        if self.sigmas.shape != (j,):
            raise ValueError(f"{where}: sigmas has {self.sigmas.shape[0]} values, expected {j} (one per joint)")
        if not np.all(self.sigmas > 0):
            raise ValueError(f"{where}: sigmas must be positive")
        seen: set[int] = set()
        for a, b in self.flip_pairs:
            if not (0 <= a < j and 0 <= b < j) or a == b:
                raise ValueError(f"{where}: flip pair ({a}, {b}) out of range for {j} joints")
            if a in seen or b in seen:
                raise ValueError(f"{where}: joint in more than one flip pair: ({a}, {b})")
            seen.update((a, b))
        for field in ("upper_body", "lower_body"):
            bad = [i for i in getattr(self, field) if not 0 <= i < j]
            if bad:
                raise ValueError(f"{where}: {field} indices {bad} out of range for {j} joints")
        for a, b in self.skeleton:
            if not (0 <= a < j and 0 <= b < j):
                raise ValueError(f"{where}: skeleton edge ({a}, {b}) out of range for {j} joints")

    @property
    def num_joints(self) -> int:
        return len(self.names)

    @property
    def flip_index(self) -> np.ndarray:
        """int32[J] permutation: ``flipped[..., j] = original[..., flip_index[j]]``."""
        index = np.arange(self.num_joints, dtype=np.int32)
        for a, b in self.flip_pairs:
            index[a], index[b] = b, a
        return index

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, KeypointSet):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def _key(self) -> tuple[Any, ...]:
        return (
            self.name,
            self.names,
            self.flip_pairs,
            self.upper_body,
            self.lower_body,
            self.skeleton,
            tuple(self.sigmas.tolist()),
            self.half_body_min_joints,
        )

    def to_coco_category(self, category_id: int = 1, supercategory: str = "person") -> dict[str, Any]:
        """COCO ``categories`` entry (skeleton 1-based, as in COCO files)."""
        return {
            "id": int(category_id),
            "name": "person",
            "supercategory": supercategory,
            "keypoints": list(self.names),
            "skeleton": [[a + 1, b + 1] for a, b in self.skeleton],
        }

    @classmethod
    def from_coco_category(
        cls,
        category: Mapping[str, Any],
        *,
        flip_pairs: Iterable[Sequence[int]],
        sigmas: Sequence[float] | np.ndarray,
        upper_body: Iterable[int] | None = None,
        half_body_min_joints: int = 8,
        name: str | None = None,
    ) -> KeypointSet:
        """Build a set from a COCO ``categories`` entry.

        Joint names come from ``category['keypoints']``; the skeleton from ``category['skeleton']``
        (1-based in COCO files, converted to 0-based). ``upper_body`` defaults to no joints
        (half-body augmentation then only ever picks the lower body); ``lower_body`` is every
        joint not in ``upper_body``.
        """
        if "keypoints" not in category:
            raise ValueError("COCO category: missing field 'keypoints'")
        names = tuple(str(n) for n in category["keypoints"])
        skeleton = []
        for k, edge in enumerate(category.get("skeleton", []) or []):
            if len(edge) != 2:
                raise ValueError(f"COCO category: skeleton[{k}] must be a pair, got {edge!r}")
            a, b = int(edge[0]) - 1, int(edge[1]) - 1
            if not (0 <= a < len(names) and 0 <= b < len(names)):
                raise ValueError(f"COCO category: skeleton[{k}] = {list(edge)} out of range 1..{len(names)}")
            skeleton.append((a, b))
        upper = tuple(sorted(int(i) for i in (upper_body or ())))
        lower = tuple(i for i in range(len(names)) if i not in set(upper))
        return cls(
            name=name or str(category.get("name", "custom")),
            names=names,
            flip_pairs=_pairs(flip_pairs),
            upper_body=upper,
            lower_body=lower,
            skeleton=tuple(skeleton),
            sigmas=np.asarray(sigmas, np.float32),
            half_body_min_joints=half_body_min_joints,
        )


# COCO-17 (HRNet's upper body 0-10, lower 11-16; COCO's standard 19-edge skeleton, 0-based).
COCO17 = KeypointSet(
    name="coco",
    names=(
        "nose",
        "left_eye",
        "right_eye",
        "left_ear",
        "right_ear",
        "left_shoulder",
        "right_shoulder",
        "left_elbow",
        "right_elbow",
        "left_wrist",
        "right_wrist",
        "left_hip",
        "right_hip",
        "left_knee",
        "right_knee",
        "left_ankle",
        "right_ankle",
    ),
    flip_pairs=((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16)),
    upper_body=tuple(range(11)),
    lower_body=tuple(range(11, 17)),
    skeleton=(
        (15, 13),
        (13, 11),
        (16, 14),
        (14, 12),
        (11, 12),
        (5, 11),
        (6, 12),
        (5, 6),
        (5, 7),
        (6, 8),
        (7, 9),
        (8, 10),
        (1, 2),
        (0, 1),
        (0, 2),
        (1, 3),
        (2, 4),
        (3, 5),
        (4, 6),
    ),
    sigmas=(
        np.array([0.26, 0.25, 0.25, 0.35, 0.35, 0.79, 0.79, 0.72, 0.72, 0.62, 0.62, 1.07, 1.07, 0.87, 0.87, 0.89, 0.89])
        / 10.0
    ).astype(np.float32),
    half_body_min_joints=8,
)

# Infant-21: R1..R9 (0-8), L1..L9 (9-17), M1..M3 (18-20); eyes R1/L1, fingers R5/L5, toes R9/L9,
# M1 head, M2 neck, M3 navel.
INFANT21 = KeypointSet(
    name="infant",
    names=tuple(f"R{i}" for i in range(1, 10)) + tuple(f"L{i}" for i in range(1, 10)) + ("M1", "M2", "M3"),
    flip_pairs=tuple((i, i + 9) for i in range(9)),
    upper_body=(0, 1, 2, 3, 4, 9, 10, 11, 12, 13, 18, 19),
    lower_body=(5, 6, 7, 8, 14, 15, 16, 17, 20),
    skeleton=(
        (0, 18),
        (9, 18),
        (18, 19),
        (19, 1),
        (1, 2),
        (2, 3),
        (3, 4),
        (19, 10),
        (10, 11),
        (11, 12),
        (12, 13),
        (19, 20),
        (20, 5),
        (5, 6),
        (6, 7),
        (7, 8),
        (20, 14),
        (14, 15),
        (15, 16),
        (16, 17),
    ),
    sigmas=np.full((21,), 0.05, np.float32),
    half_body_min_joints=9,
)

KEYPOINT_SETS: dict[str, KeypointSet] = {"coco": COCO17, "infant": INFANT21}
_ALIASES = {"coco17": "coco", "coco_17": "coco", "infant21": "infant", "infant_21": "infant"}


def get_keypoint_set(name: str | KeypointSet) -> KeypointSet:
    """The built-in set called ``name`` ('coco' or 'infant'; a KeypointSet passes through)."""
    if isinstance(name, KeypointSet):
        return name
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in KEYPOINT_SETS:
        raise ValueError(f"unknown keypoint set {name!r}; known: {', '.join(sorted(KEYPOINT_SETS))}")
    return KEYPOINT_SETS[key]


def keypoint_set_for(num_joints: int, name: str | KeypointSet | None = None, *, where: str = "model") -> KeypointSet:
    """The keypoint set of a model predicting ``num_joints`` joints: ``name`` if given, else the built-in set
    with that many joints (17: 'coco', 21: 'infant'). ``ValueError`` starting with ``where`` when there is
    none or the named set has another joint count."""
    if name is None:
        matches = [s for s in KEYPOINT_SETS.values() if s.num_joints == num_joints]
        if not matches:
            raise ValueError(f"{where}: the model predicts {num_joints} joints; name its keypoint set (--keypoints)")
        return matches[0]
    kset = get_keypoint_set(name)
    if kset.num_joints != num_joints:
        raise ValueError(
            f"{where}: the model predicts {num_joints} joints but keypoint set '{kset.name}' has {kset.num_joints}"
        )
    return kset
