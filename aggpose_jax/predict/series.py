"""A video's keypoint series after prediction: keypoint format, masking, gap filling, smoothing,
normalisation and the quality report, as one settings object applied in a fixed order.

Order: (1) convert the keypoint set (COCO-17 -> OpenPose-18 adds the Neck); (2) the quality report, on
the raw scores (frames whose subject identity is uncertain count as invalid); (3) when processing is on:
joints scoring below ``min_score`` and the frames of uncertain identity set to NaN and flagged, gaps up to
``max_gap_s`` interpolated, then the smoothing filter; (4) optionally the normalised series
(mid-hip centre, trunk length). The raw series is always kept beside the processed one. The functions
are those of :mod:`aggpose_jax.predict.sequences`.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from aggpose_jax.predict import sequences

KEYPOINT_FORMATS = ("native", "openpose18")

# Default parameters for the filters whose main parameter has none (seconds or Hz).
SMOOTHING_DEFAULTS: dict[str, dict[str, float]] = {
    "savgol": {"window_s": 1.0 / 3.0},
    "gaussian": {"sigma_s": 0.05},
    "butterworth": {"cutoff_hz": 5.0},
    "one_euro": {},
}

OPENPOSE18_SKELETON: tuple[tuple[int, int], ...] = (
    (1, 2),
    (2, 3),
    (3, 4),
    (1, 5),
    (5, 6),
    (6, 7),
    (1, 8),
    (8, 9),
    (9, 10),
    (1, 11),
    (11, 12),
    (12, 13),
    (1, 0),
    (0, 14),
    (14, 16),
    (0, 15),
    (15, 17),
)

# (left shoulder, right shoulder, left hip, right hip) by joint names, for normalisation.
_TRUNK_NAMES = (
    ("left_shoulder", "right_shoulder", "left_hip", "right_hip"),
    ("LShoulder", "RShoulder", "LHip", "RHip"),
    ("L2", "R2", "L6", "R6"),
)


@dataclasses.dataclass(frozen=True)
class SeriesSettings:
    """What to do with a video's keypoint series (see the module docstring).

    Attributes:
      min_score: score threshold of the quality report and of masking.
      mask: set low-score joints to NaN (implied by ``max_gap_s`` > 0 and by smoothing).
      max_gap_s: interpolate gaps up to this long (seconds between the finite samples around the gap).
      smooth: None or one of ``sequences.SMOOTHING_METHODS``; ``smooth_params`` its parameters (completed
        with the defaults, so that every value used is recorded).
      min_stretch_s: the quality report's shortest usable stretch.
      keypoint_format: 'native' (the model's set) or 'openpose18' (COCO-17 models only).
      normalise: also produce the series centred on the mid-hip and divided by the median trunk length.
    """

    min_score: float = 0.2
    mask: bool = False
    max_gap_s: float = 0.0
    smooth: str | None = None
    smooth_params: Mapping[str, float] = dataclasses.field(default_factory=dict)
    min_stretch_s: float = 1.0
    keypoint_format: str = "native"
    normalise: bool = False

    def __post_init__(self) -> None:
        if self.keypoint_format not in KEYPOINT_FORMATS:
            raise ValueError(f"keypoint format must be one of {KEYPOINT_FORMATS}, got {self.keypoint_format!r}")
        if not self.max_gap_s >= 0:
            raise ValueError(f"max gap must be >= 0 seconds, got {self.max_gap_s}")
        if not self.min_stretch_s >= 0:
            raise ValueError(f"min stretch must be >= 0 seconds, got {self.min_stretch_s}")
        if self.smooth is not None:
            defaults = {
                k: v for k, v in sequences.smoothing_parameters(self.smooth).items() if v is not inspect.Parameter.empty
            }
            params = {**defaults, **SMOOTHING_DEFAULTS.get(self.smooth, {}), **dict(self.smooth_params)}
            sequences.check_smoothing(self.smooth, params)
            object.__setattr__(self, "smooth_params", params)

    @property
    def processing(self) -> bool:
        """Whether a processed series (masked, filled, smoothed) is produced beside the raw one."""
        return self.mask or self.max_gap_s > 0 or self.smooth is not None

    def check_at(self, fps: float | None, where: str) -> None:
        """Raise ValueError (one line naming ``where`` and the rate) when the smoothing cannot run at ``fps``."""
        if self.smooth is None or not fps:
            return
        try:
            sequences.check_smoothing_at(self.smooth, self.smooth_params, fps)
        except ValueError as err:
            raise ValueError(f"{where} ({fps:.3g} fps): {err}") from None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["smooth_params"] = dict(self.smooth_params)
        d["processing"] = self.processing
        d["order"] = "convert, quality (raw scores), mask, interpolate gaps, smooth, normalise"
        return d


@dataclasses.dataclass
class Series:
    """A video's series. ``xy_raw`` / ``scores``: the model's output (in ``joint_names`` order); ``xy``: the
    processed series (NaN where masked and not filled) or None; ``flagged``: (T, J) low-score mask or None;
    ``normalised``: (T, J, 2) or None; ``quality``: the quality report."""

    times: np.ndarray
    joint_names: tuple[str, ...]
    skeleton: tuple[tuple[int, int], ...]
    xy_raw: np.ndarray
    scores: np.ndarray
    xy: np.ndarray | None
    flagged: np.ndarray | None
    normalised: np.ndarray | None
    quality: dict[str, Any]

    @property
    def final(self) -> np.ndarray:
        """The series to use: processed if processing is on, else raw."""
        return self.xy_raw if self.xy is None else self.xy


def convert(
    xy: np.ndarray, scores: np.ndarray, names: Sequence[str], skeleton: Sequence[tuple[int, int]], keypoint_format: str
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...], tuple[tuple[int, int], ...]]:
    """Keypoints in ``keypoint_format``: (xy, scores, joint names, skeleton)."""
    if keypoint_format == "native":
        return np.asarray(xy, np.float64), np.asarray(scores, np.float64), tuple(names), tuple(skeleton)
    if tuple(names) != sequences.COCO17_NAMES:
        raise ValueError("keypoint format 'openpose18' needs a COCO-17 model")
    out_xy, out_s, out_names = sequences.coco17_to_openpose18(xy, scores)
    return out_xy, out_s, out_names, OPENPOSE18_SKELETON


def trunk_indices(names: Sequence[str]) -> tuple[int, int, int, int] | None:
    """(left shoulder, right shoulder, left hip, right hip) indices, or None for an unknown set."""
    for candidate in _TRUNK_NAMES:
        if all(n in names for n in candidate):
            return tuple(list(names).index(n) for n in candidate)  # type: ignore[return-value]
    return None


def process(
    times: np.ndarray,
    xy: np.ndarray,
    scores: np.ndarray,
    names: Sequence[str],
    skeleton: Sequence[tuple[int, int]],
    settings: SeriesSettings,
    uncertain: np.ndarray | None = None,
) -> Series:
    """Apply ``settings`` to one video's raw series (times (T,), xy (T, J, 2), scores (T, J)); ``uncertain``
    (T,): frames whose keypoints may be another person's (invalid in the report, masked when processing)."""
    times = np.asarray(times, np.float64)
    xy_raw, sc, names, skeleton = convert(xy, scores, names, skeleton, settings.keypoint_format)
    quality = sequences.quality_report(
        np.nan_to_num(sc, nan=0.0),
        times,
        settings.min_score,
        settings.min_stretch_s,
        joint_names=names,
        exclude=uncertain,
    )
    out, flagged = None, None
    if settings.processing:
        out, flagged = sequences.mask_low_scores(xy_raw, sc, settings.min_score)
        if uncertain is not None and np.any(uncertain):
            gone = np.asarray(uncertain, bool)
            out[gone] = np.nan
            flagged[gone] = True
        if settings.max_gap_s > 0 and len(times) > 1:
            out = sequences.interpolate_gaps(out, times, settings.max_gap_s)
        if settings.smooth is not None and len(times) > 1:
            out = sequences.smooth(out, times, settings.smooth, **dict(settings.smooth_params))
    normalised = None
    if settings.normalise:
        idx = trunk_indices(names)
        if idx is None:
            raise ValueError(f"normalise: no shoulders and hips known in the joints {', '.join(names)}")
        base = xy_raw if out is None else out
        usable = np.isfinite(sequences.trunk_length(base, *idx))
        if usable.any():
            normalised = sequences.normalise(base, *idx)
        else:
            normalised = np.full_like(base, np.nan)
    return Series(times, tuple(names), tuple(skeleton), xy_raw, sc, out, flagged, normalised, quality)


def parse_smoothing(text: str) -> tuple[str, dict[str, float]]:
    """``'butterworth'`` or ``'butterworth:cutoff_hz=6,order=4'`` -> (method, params)."""
    method, _, rest = text.partition(":")
    method = method.strip()
    if method not in sequences.SMOOTHING_METHODS:
        raise ValueError(f"unknown smoothing {method!r}; choose one of {', '.join(sequences.SMOOTHING_METHODS)}")
    params: dict[str, float] = {}
    expected = sequences.smoothing_parameters(method)
    for item in filter(None, (p.strip() for p in rest.split(","))):
        name, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"smoothing {text!r}: expected NAME=VALUE, got {item!r}")
        name = name.strip()
        default = expected.get(name)
        try:
            number: float = int(value) if isinstance(default, int) and not isinstance(default, bool) else float(value)
        except ValueError:
            raise ValueError(f"smoothing {text!r}: {name} must be a number, got {value!r}") from None
        params[name] = number
    return method, params


def smoothing_help() -> str:
    """One line per method with its parameters and defaults."""
    lines = []
    for method in sequences.SMOOTHING_METHODS:
        defaults = {**sequences.smoothing_parameters(method), **SMOOTHING_DEFAULTS.get(method, {})}
        shown = ", ".join(f"{k}={'?' if v is inspect.Parameter.empty else f'{v:g}'}" for k, v in defaults.items())
        lines.append(f"{method}: {shown}")
    return "; ".join(lines)


__all__ = [
    "KEYPOINT_FORMATS",
    "OPENPOSE18_SKELETON",
    "Series",
    "SeriesSettings",
    "convert",
    "parse_smoothing",
    "process",
    "smoothing_help",
    "trunk_indices",
]
