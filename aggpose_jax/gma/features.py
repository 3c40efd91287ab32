"""The Chambers et al. 2020 infant-movement features (IEEE TNSRE 2020), from OpenPose-18 keypoint series.

Pure numpy. The steps, names and numbers follow ``shared/reference/GMA_FEATURES.md`` (the
specification of what the published code ``cchamber/Infant_movement_assessment`` computes); section
numbers (section 2c, ...) below refer to it. Per video:

1. Frame grid ``0..F`` (F: the last frame with any present keypoint); a body part never present has no
   rows at all (its features are NaN).
2. Per part and coordinate: linear interpolation of interior gaps, leading gap kept missing, trailing gap
   held at the last value; a centred rolling median of ``w = int(0.5 * fps)`` frames, then a centred
   rolling mean of ``w`` frames (a window reaching outside the series or holding a NaN gives NaN).
3. Body-centred, trunk-length positions: the upper body (head, arms) rotated about the shoulder centre
   so that the shoulder line is horizontal, the lower body (hips, legs) about the hip centre, both
   divided by the trunk length (shoulder centre to hip centre); the hip centre sits at (0, 1).
4. Eight joint angles (shoulder, elbow, hip, knee, each side) in degrees from the smoothed pixels.
5. Velocities and accelerations (``k = int(0.25 * fps)``-frame trailing means).
6. 104 features per video (:data:`FEATURE_COLUMNS`) and the paper's 38 left/right averages
   (:data:`SIDE_AVERAGED_COLUMNS`).

Modes (:data:`MODES`): ``'chambers2020'`` (the default) reproduces the published code's numbers, quirks
included; ``'corrected'`` fixes the quirks that are bugs (:data:`QUIRKS` lists every quirk and what each
mode does with it). Normative data and classifiers were built on the published numbers: only
``'chambers2020'`` can be compared with them.

Entry point: :func:`compute_features` (one video) -> :class:`VideoFeatures`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from aggpose_jax.predict.sequences import OPENPOSE18_NAMES

MODES: tuple[str, ...] = ("chambers2020", "corrected")
DEFAULT_MODE = "chambers2020"

BODY_PARTS: tuple[str, ...] = OPENPOSE18_NAMES
_INDEX = {name: i for i, name in enumerate(BODY_PARTS)}
# Section 3c: the lower group (rotated about the hip centre); every other part is in the upper group.
LOWER_BODY: tuple[str, ...] = ("RHip", "RKnee", "RAnkle", "LHip", "LKnee", "LAnkle")
UPPER_BODY: tuple[str, ...] = tuple(p for p in BODY_PARTS if p not in LOWER_BODY)

# Section 4: joint -> (vertex p0, arm p1, arm p2).
JOINTS: dict[str, tuple[str, str, str]] = {
    "RShoulder": ("RShoulder", "Neck", "RElbow"),
    "RElbow": ("RElbow", "RShoulder", "RWrist"),
    "RHip": ("RHip", "LHip", "RKnee"),
    "RKnee": ("RKnee", "RHip", "RAnkle"),
    "LShoulder": ("LShoulder", "Neck", "LElbow"),
    "LElbow": ("LElbow", "LShoulder", "LWrist"),
    "LHip": ("LHip", "RHip", "LKnee"),
    "LKnee": ("LKnee", "LHip", "LAnkle"),
}

POSITION_PARTS: tuple[str, ...] = ("LAnkle", "LWrist", "RAnkle", "RWrist")
POSITION_FEATURES: tuple[str, ...] = (
    "IQRaccx",
    "IQRaccy",
    "IQRvelx",
    "IQRvely",
    "IQRx",
    "IQRy",
    "meanent",
    "medianvelx",
    "medianvely",
    "medianx",
    "mediany",
)
ANGLE_FEATURES: tuple[str, ...] = (
    "IQR_acc_angle",
    "IQR_vel_angle",
    "entropy_angle",
    "mean_angle",
    "median_vel_angle",
    "stdev_angle",
)
ANGLE_JOINTS: tuple[str, ...] = tuple(sorted(JOINTS))
LR_POSITION_PARTS: tuple[str, ...] = ("Ankle", "Ear", "Elbow", "Eye", "Hip", "Knee", "Shoulder", "Wrist")
LR_ANGLE_PARTS: tuple[str, ...] = ("Elbow", "Hip", "Knee", "Shoulder")

# Section 6d: the published column order (the original's pivot tables sort by (feature, body part)).
FEATURE_COLUMNS: tuple[str, ...] = (
    tuple(f"{f}_{bp}" for f in POSITION_FEATURES for bp in POSITION_PARTS)
    + tuple(f"lrCorr_x_{p}" for p in LR_POSITION_PARTS)
    + tuple(f"{f}_{j}" for f in ANGLE_FEATURES for j in ANGLE_JOINTS)
    + tuple(f"lrCorr_angle_{p}" for p in LR_ANGLE_PARTS)
)

# Section 6e: the paper's 38, in the order of the published feature list (compute_surprise.py).
SIDE_AVERAGED_COLUMNS: tuple[str, ...] = (
    "Ankle_medianx",
    "Wrist_medianx",
    "Ankle_mediany",
    "Wrist_mediany",
    "Knee_mean_angle",
    "Elbow_mean_angle",
    "Ankle_IQRx",
    "Wrist_IQRx",
    "Ankle_IQRy",
    "Wrist_IQRy",
    "Knee_stdev_angle",
    "Elbow_stdev_angle",
    "Ankle_medianvelx",
    "Wrist_medianvelx",
    "Ankle_medianvely",
    "Wrist_medianvely",
    "Knee_median_vel_angle",
    "Elbow_median_vel_angle",
    "Ankle_IQRvelx",
    "Wrist_IQRvelx",
    "Ankle_IQRvely",
    "Wrist_IQRvely",
    "Knee_IQR_vel_angle",
    "Elbow_IQR_vel_angle",
    "Ankle_IQRaccx",
    "Wrist_IQRaccx",
    "Ankle_IQRaccy",
    "Wrist_IQRaccy",
    "Knee_IQR_acc_angle",
    "Elbow_IQR_acc_angle",
    "Ankle_meanent",
    "Wrist_meanent",
    "Knee_entropy_angle",
    "Elbow_entropy_angle",
    "Ankle_lrCorr_x",
    "Wrist_lrCorr_x",
    "Knee_lrCorr_angle",
    "Elbow_lrCorr_angle",
)

# Every quirk of the published code (specification section 7, plus what the code shows beyond it) and what
# each mode does with it. The README and the docs print this table.
QUIRKS: tuple[dict[str, str], ...] = (
    {
        "quirk": "hip angle attached by row position (spec 3b, 7.1)",
        "chambers2020": "reproduced: the k-th frame of the shoulder table gets the k-th hip-table angle",
        "corrected": "the hip angle of the same frame",
    },
    {
        "quirk": "lrCorr_angle pairs the R and L samples by position (6c, 7.2)",
        "chambers2020": "reproduced: k-th R sample with k-th L sample, R fixes the length",
        "corrected": "paired by frame",
    },
    {
        "quirk": "cross-group NaN: a missing hip reference blanks the arms and vice versa (3c, 7.3)",
        "chambers2020": "reproduced",
        "corrected": "a point needs only its own group's angle and centre, and the trunk length (which needs both "
        "centres, so in practice only the frames blanked by the row-position quirk come back)",
    },
    {
        "quirk": "stdev_angle = sqrt(degrees(1 - R)), not a standard deviation (6b, 7.4)",
        "chambers2020": "reproduced",
        "corrected": "the circular standard deviation degrees(sqrt(-2 ln R)), same column name",
    },
    {
        "quirk": "L/R averaging of signed x: Ankle_medianx, Wrist_medianx measure asymmetry; the L/R means "
        "of the Shoulder/Hip circular means are linear means of angles (not in the 38, not written) (6e, 7.5)",
        "chambers2020": "reproduced: (medianx_L + medianx_R) / 2",
        "corrected": "lateral distance from the midline: (medianx_L - medianx_R) / 2 (R has x < 0)",
    },
    {
        "quirk": "Pearson correlation of wrapped [0, 360) angles: lrCorr_angle_Shoulder, _Hip (7.6)",
        "chambers2020": "reproduced",
        "corrected": "circular correlation (Jammalamadaka-SenGupta) for Shoulder and Hip",
    },
    {
        "quirk": "trailing-edge extrapolation: velocities held constant over the last frames (5, 7.7)",
        "chambers2020": "reproduced",
        "corrected": "no trailing fill in the derivative smoothing: those frames stay missing",
    },
    {
        "quirk": "trailing gaps in the keypoints held at the last value, leading ones missing; no maximum "
        "gap length (2b, 7.8)",
        "chambers2020": "reproduced",
        "corrected": "trailing gaps stay missing like leading ones; interior gaps of any length still bridged",
    },
    {
        "quirk": "the score is never used: every present point is exact (1, 7.9)",
        "chambers2020": "kept: presence is finite x, y and score > --min-score (default 0)",
        "corrected": "kept, the same rule: --min-score (or --series processed) is the user's choice",
    },
    {
        "quirk": "rotation angle at a = +-pi exactly (and a in (-4e-16, 0)) flips the body (3c, 7.10)",
        "chambers2020": "reproduced (the literal steps)",
        "corrected": "theta = (pi - a) mod 2 pi",
    },
    {
        "quirk": "fps dependence: int() windows (0.48 s at 25 fps, 0.5 s at 30), asymmetric even windows, "
        "causal derivative smoothing, edge losses and entropies that depend on fps (7.11)",
        "chambers2020": "reproduced",
        "corrected": "kept: the windows define the features (the same w and k in both modes)",
    },
    {
        "quirk": "schema instability: an all-NaN column disappears; a never-detected shoulder or hip crashes (7.12)",
        "chambers2020": "all 104 columns always written, NaN where undefined (the reference's choice)",
        "corrected": "the same",
    },
    {
        "quirk": "library-version dependence (pandas <= 0.23 only) (7.13)",
        "chambers2020": "not applicable: numpy only, no pandas",
        "corrected": "not applicable",
    },
    {
        "quirk": "per-frame skeleton choice (most keypoints) can switch identities (7.14)",
        "chambers2020": "not applicable: aggpose-predict follows one subject per video",
        "corrected": "not applicable",
    },
    {
        "quirk": "harmless: duplicate joint-angle rows dropped; speed, displacement, acceleration2 unused (7.15)",
        "chambers2020": "nothing to reproduce (no duplicates made; unused quantities not computed)",
        "corrected": "the same",
    },
    {
        "quirk": "entropy of a part with grid rows but no finite position is 0, not NaN (follows from the "
        "formula: an empty sum; the code gives scipy.stats.entropy an empty distribution)",
        "chambers2020": "reproduced: meanent = 0",
        "corrected": "NaN",
    },
    {
        "quirk": "stdev_angle of an angle that never changes is the square root of rounding noise: 0, about "
        "1e-7, or NaN where 1 - R rounds below 0 (follows from the formula)",
        "chambers2020": "reproduced (which of the three depends on the last bit, as in the published code)",
        "corrected": "0 (the circular standard deviation of a constant, -2 ln R clamped at 0)",
    },
    {
        "quirk": "the hip-angle row offset of one video carries over to the next video of the same run "
        "(the tables of all videos are concatenated before the positional assignment; seen in the code, "
        "not in the specification)",
        "chambers2020": "not reproduced: each video is computed on its own, as if run alone",
        "corrected": "not reproduced",
    },
)


def smoothing_window(fps: float) -> int:
    """Section 2c: ``w = int(0.5 * fps)`` frames (truncated)."""
    return int(0.5 * fps)


def derivative_window(fps: float) -> int:
    """Section 5: ``k = int(0.25 * fps)`` frames (truncated)."""
    return int(0.25 * fps)


def check_fps(fps: Any) -> float:
    """A usable frame rate (a finite number >= 4, so that the derivative window has a frame), else ValueError."""
    try:
        value = float(fps)
    except (TypeError, ValueError):
        raise ValueError(f"fps must be a number, got {fps!r}") from None
    if not (math.isfinite(value) and value >= 4.0):
        raise ValueError(f"fps must be a finite number >= 4 (the derivative window is int(0.25 * fps)), got {fps!r}")
    return value


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    return mode


# ----------------------------------------------------------------------------------------------------
# Series helpers (one 1-D float array each)


def fill_gaps(s: np.ndarray, trailing: bool = True) -> np.ndarray:
    """Section 2b: linear interpolation over the index for interior NaN; leading NaN stay; trailing NaN
    are held at the last finite value (``trailing=True``, the published code) or stay NaN."""
    s = np.asarray(s, np.float64)
    out = s.copy()
    valid = np.flatnonzero(np.isfinite(s))
    if valid.size == 0:
        return out
    first, last = valid[0], valid[-1]
    inside = np.arange(first, last + 1)
    out[first : last + 1] = np.interp(inside, valid, s[valid])
    if trailing:
        out[last + 1 :] = s[last]
    return out


def rolling_centred(s: np.ndarray, w: int, statistic: str) -> np.ndarray:
    """Section 2c: a centred rolling median or mean of ``w`` samples. Output ``i`` covers samples
    ``i - w//2 .. i + ceil(w/2) - 1``; NaN if that reaches outside the series or holds a NaN."""
    s = np.asarray(s, np.float64)
    n = s.shape[0]
    out = np.full(n, np.nan)
    if w <= 0:
        return s.copy()
    if n < w:
        return out
    windows = np.lib.stride_tricks.sliding_window_view(s, w)  # windows[j] = s[j : j + w]
    values = np.median(windows, axis=1) if statistic == "median" else np.mean(windows, axis=1)
    bad = ~np.isfinite(windows).all(axis=1)
    values[bad] = np.nan
    start = w // 2  # output i uses the window starting at i - w//2
    out[start : start + values.shape[0]] = values
    return out


def rolling_trailing_mean(s: np.ndarray, k: int) -> np.ndarray:
    """Section 5: ``out[i] = mean(s[i-k+1 .. i])``; NaN if fewer than k samples or any NaN."""
    s = np.asarray(s, np.float64)
    n = s.shape[0]
    out = np.full(n, np.nan)
    if k <= 0 or n < k:
        return out
    windows = np.lib.stride_tricks.sliding_window_view(s, k)
    values = np.mean(windows, axis=1)
    values[~np.isfinite(windows).all(axis=1)] = np.nan
    out[k - 1 :] = values
    return out


def smooth_keypoint(s: np.ndarray, w: int) -> np.ndarray:
    """Section 2c: the rolling median of ``w`` samples, then the rolling mean of ``w`` samples."""
    if w <= 0:
        return np.asarray(s, np.float64).copy()
    return rolling_centred(rolling_centred(s, w, "median"), w, "mean")


def delta(s: np.ndarray) -> np.ndarray:
    """Section 5: ``out[0] = 0``, ``out[i] = s[i] - s[i-1]``; NaN wherever ``s[i]`` is NaN."""
    s = np.asarray(s, np.float64)
    out = np.zeros_like(s)
    if s.shape[0] > 1:
        out[1:] = s[1:] - s[:-1]
    out[~np.isfinite(s)] = np.nan
    return out


def smooth_dynamics(s: np.ndarray, k: int, trailing_fill: bool = True) -> np.ndarray:
    """Section 5 ``smoothdyn``: gap filling as :func:`fill_gaps`, then the trailing mean of ``k`` samples."""
    return rolling_trailing_mean(fill_gaps(s, trailing=trailing_fill), k)


def wrap_degrees(d: np.ndarray) -> np.ndarray:
    """Section 5: of ``d, d + 360, d - 360`` the one with the smallest magnitude (the first on ties)."""
    d = np.asarray(d, np.float64)
    candidates = np.stack([d, d + 360.0, d - 360.0])
    pick = np.argmin(np.abs(candidates), axis=0)  # argmin takes the first of equal values
    return np.take_along_axis(candidates, pick[None], axis=0)[0]


# ----------------------------------------------------------------------------------------------------
# Statistics (NaN samples skipped)


def _finite(values: np.ndarray) -> np.ndarray:
    v = np.asarray(values, np.float64).ravel()
    return v[np.isfinite(v)]


def median(values: np.ndarray) -> float:
    v = _finite(values)
    return float(np.median(v)) if v.size else math.nan


def iqr(values: np.ndarray) -> float:
    """``Q(0.75) - Q(0.25)``, linear-interpolation quantiles (type 7)."""
    v = _finite(values)
    if v.size == 0:
        return math.nan
    q1, q3 = np.quantile(v, [0.25, 0.75])
    return float(q3 - q1)


def entropy(values: np.ndarray, decimals: int, empty: float = 0.0) -> float:
    """Shannon entropy (nats) of the values rounded to ``decimals`` (round half to even); ``empty`` when
    there is no finite value (0 in the published code: an empty sum)."""
    v = _finite(values)
    if v.size == 0:
        return empty
    _, counts = np.unique(np.round(v, decimals), return_counts=True)
    p = counts / v.size
    return float(-np.sum(p * np.log(p)))


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson r over the pairs where both are finite; NaN with fewer than 2 pairs or a constant side."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    both = np.isfinite(a) & np.isfinite(b)
    if both.sum() < 2:
        return math.nan
    a, b = a[both], b[both]
    if np.all(a == a[0]) or np.all(b == b[0]):  # constant: no correlation (a mean's rounding is no signal)
        return math.nan
    x, y = a - a.mean(), b - b.mean()
    sxx, syy = float(np.sum(x * x)), float(np.sum(y * y))
    if sxx == 0.0 or syy == 0.0:
        return math.nan
    return float(np.sum(x * y) / math.sqrt(sxx * syy))


def circular_correlation(a_deg: np.ndarray, b_deg: np.ndarray) -> float:
    """Jammalamadaka-SenGupta circular correlation of two angle series (degrees), finite pairs only."""
    a, b = np.asarray(a_deg, np.float64), np.asarray(b_deg, np.float64)
    both = np.isfinite(a) & np.isfinite(b)
    if both.sum() < 2:
        return math.nan
    ra, rb = np.radians(a[both]), np.radians(b[both])
    sa = np.sin(ra - np.angle(np.sum(np.exp(1j * ra))))
    sb = np.sin(rb - np.angle(np.sum(np.exp(1j * rb))))
    den = math.sqrt(float(np.sum(sa * sa)) * float(np.sum(sb * sb)))
    return float(np.sum(sa * sb) / den) if den > 0 else math.nan


def _resultant(theta_deg: np.ndarray) -> tuple[complex, int]:
    v = _finite(theta_deg)
    return complex(np.sum(np.exp(1j * np.radians(v)))), int(v.size)


def circular_mean_degrees(theta_deg: np.ndarray) -> float:
    """``degrees(arg(sum(exp(i * radians(theta)))))`` in (-180, 180]."""
    total, n = _resultant(theta_deg)
    return float(np.degrees(np.angle(total))) if n else math.nan


def stdev_angle(theta_deg: np.ndarray, mode: str = DEFAULT_MODE) -> float:
    """``chambers2020``: ``sqrt(degrees(1 - R))`` (NaN where rounding makes ``1 - R`` negative, as in the
    published code); ``corrected``: the circular standard deviation ``degrees(sqrt(-2 ln R))``."""
    total, n = _resultant(theta_deg)
    if n == 0:
        return math.nan
    r = abs(total) / n
    if mode == "corrected":
        return float(np.degrees(math.sqrt(max(0.0, -2.0 * math.log(r))))) if r > 0 else math.nan
    with np.errstate(invalid="ignore"):
        return float(np.sqrt(np.degrees(1.0 - r)))


# ----------------------------------------------------------------------------------------------------
# The pipeline


@dataclasses.dataclass
class JointAngle:
    """One joint's samples (section 4): the frames that have one, the angle (degrees) and its dynamics."""

    frames: np.ndarray
    angle: np.ndarray
    velocity: np.ndarray
    acceleration: np.ndarray


@dataclasses.dataclass
class VideoFeatures:
    """One video's features and the intermediate series (for the report and for checking).

    ``features``: the 104 columns of :data:`FEATURE_COLUMNS`; ``side_averaged``: the 38 of
    :data:`SIDE_AVERAGED_COLUMNS`. Per grid frame (``n_frames`` = F + 1), per OpenPose-18 part:
    ``present`` (T, 18) the input's present points, ``has_rows`` (18,) whether the part was ever present,
    ``smoothed`` (T, 18, 2) smoothed pixels, ``normalised`` (T, 18, 2) body-centred trunk-length
    coordinates, ``velocity``/``acceleration`` (T, 18, 2); ``trunk_length`` (T,); ``angles`` per joint.
    """

    mode: str
    fps: float
    smoothing_window: int
    derivative_window: int
    n_frames: int
    present: np.ndarray
    has_rows: np.ndarray
    smoothed: np.ndarray
    normalised: np.ndarray
    velocity: np.ndarray
    acceleration: np.ndarray
    trunk_length: np.ndarray
    angles: dict[str, JointAngle]
    features: dict[str, float]
    side_averaged: dict[str, float]


def frame_grid(xy: np.ndarray, frames: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """Section 1: place the samples on frames ``0..F`` (F = the last frame with any present point).

    ``xy`` (T, 18, 2) with NaN for missing points, sample ``i`` at frame ``frames[i]`` (default ``i``).
    Returns ((F + 1, 18, 2) array, F + 1); (empty, 0) when nothing is present."""
    xy = np.asarray(xy, np.float64)
    if xy.ndim != 3 or xy.shape[1:] != (len(BODY_PARTS), 2):
        raise ValueError(f"keypoints must have shape (T, {len(BODY_PARTS)}, 2), got {xy.shape}")
    idx = np.arange(xy.shape[0]) if frames is None else np.asarray(frames)
    if idx.shape != (xy.shape[0],):
        raise ValueError(f"frames must have shape ({xy.shape[0]},), got {idx.shape}")
    if idx.size and (not np.issubdtype(idx.dtype, np.integer) and not np.all(idx == np.round(idx))):
        raise ValueError("frames must be whole numbers")
    idx = idx.astype(np.int64)
    if idx.size and idx.min() < 0:
        raise ValueError("frames must be >= 0")
    if np.unique(idx).size != idx.size:
        raise ValueError("frames must not repeat")
    present = np.isfinite(xy).all(axis=2)
    any_present = present.any(axis=1)
    if not any_present.any():
        return np.full((0, len(BODY_PARTS), 2), np.nan), 0
    n = int(idx[any_present].max()) + 1
    grid = np.full((n, len(BODY_PARTS), 2), np.nan)
    keep = idx < n
    grid[idx[keep]] = np.where(present[keep][..., None], xy[keep], np.nan)
    return grid, n


def _rotation_angle(a: np.ndarray, mode: str) -> np.ndarray:
    """Section 3c: the rotation that turns the left-to-right vector to direction pi."""
    if mode == "corrected":
        return np.mod(np.pi - a, 2.0 * np.pi)
    t = a.copy()  # the literal steps of the published code (NaN compares False and stays NaN)
    neg = t < 0
    t[neg] = 2.0 * np.pi + t[neg]
    low = t < np.pi
    t[low] = np.pi - t[low]
    high = (t > np.pi) & (t < 2.0 * np.pi)
    t[high] = 3.0 * np.pi - t[high]
    return t


def _references(xs: np.ndarray, has_rows: np.ndarray, mode: str) -> dict[str, np.ndarray]:
    """Section 3a/3b: per grid frame aS, aH, U (2,), Lc (2,), NaN where a frame has no reference."""
    n = xs.shape[0]
    out = {"aS": np.full(n, np.nan), "aH": np.full(n, np.nan), "U": np.full((n, 2), np.nan)}
    out["Lc"] = np.full((n, 2), np.nan)
    tables = {}
    for key, (right, left) in (("S", ("RShoulder", "LShoulder")), ("H", ("RHip", "LHip"))):
        ri, li = _INDEX[right], _INDEX[left]
        if not (has_rows[ri] and has_rows[li]):
            return out  # a never-detected shoulder or hip: the original crashes, NaN here (spec 7.12)
        rows = np.flatnonzero(np.isfinite(xs[:, ri, 0]) | np.isfinite(xs[:, li, 0]))
        d = xs[rows, ri] - xs[rows, li]
        angle = np.arctan2(d[:, 1], d[:, 0])
        centre = (xs[rows, ri] + xs[rows, li]) / 2.0
        tables[key] = (rows, angle, centre)
    s_rows, a_s, u = tables["S"]
    h_rows, a_h, lc = tables["H"]
    if mode == "chambers2020":
        # Hip angle attached by row position: the k-th shoulder row gets the k-th hip row's angle.
        a_h_on_s = np.full(s_rows.shape[0], np.nan)
        m = min(s_rows.shape[0], h_rows.shape[0])
        a_h_on_s[:m] = a_h[:m]
        both = np.intersect1d(s_rows, h_rows)
        s_pos = np.searchsorted(s_rows, both)
        h_pos = np.searchsorted(h_rows, both)
        out["aS"][both] = a_s[s_pos]
        out["aH"][both] = a_h_on_s[s_pos]
        out["U"][both] = u[s_pos]
        out["Lc"][both] = lc[h_pos]
    else:
        out["aS"][s_rows], out["U"][s_rows] = a_s, u
        out["aH"][h_rows], out["Lc"][h_rows] = a_h, lc
    return out


def _normalise(xs: np.ndarray, refs: dict[str, np.ndarray], mode: str) -> tuple[np.ndarray, np.ndarray]:
    """Section 3c/3d: (T, 18, 2) body-centred trunk-length coordinates and the trunk length (T,)."""
    u, lc = refs["U"], refs["Lc"]
    dist = np.sqrt((u[:, 1] - lc[:, 1]) ** 2 + (u[:, 0] - lc[:, 0]) ** 2)
    out = np.full_like(xs, np.nan)
    upper = np.array([p in UPPER_BODY for p in BODY_PARTS], np.float64)
    for j in range(len(BODY_PARTS)):
        up = upper[j]
        if mode == "chambers2020":  # the arithmetic blend: the other group's NaN propagates
            ref = u * up + lc * (1.0 - up)
            a = refs["aS"] * up + refs["aH"] * (1.0 - up)
        else:
            ref = u if up else lc
            a = refs["aS"] if up else refs["aH"]
        theta = _rotation_angle(a, mode)
        c, s = np.cos(theta), np.sin(theta)
        dx, dy = xs[:, j, 0] - ref[:, 0], xs[:, j, 1] - ref[:, 1]
        x_rot = ref[:, 0] + c * dx - s * dy
        y_rot = ref[:, 1] + s * dx + c * dy
        out[:, j, 0] = (x_rot - ref[:, 0]) / dist
        out[:, j, 1] = (y_rot - ref[:, 1]) / dist + (1.0 - up)
    return out, dist


def joint_angle_degrees(p0: np.ndarray, p1: np.ndarray, p2: np.ndarray, joint: str) -> np.ndarray:
    """Section 4: the angle at ``p0`` between ``p1 - p0`` and ``p2 - p0`` (degrees), with the joint's
    convention (L shoulder/hip mirrored; elbow/knee absolute; shoulder/hip in [0, 360))."""
    v1, v2 = p1 - p0, p2 - p0
    det = v1[..., 0] * v2[..., 1] - v1[..., 1] * v2[..., 0]
    dot = v1[..., 0] * v2[..., 0] + v1[..., 1] * v2[..., 1]
    theta = np.arctan2(det, dot) * 180.0 / np.pi
    if joint in ("LShoulder", "LHip"):
        theta = -theta
    if joint.endswith(("Elbow", "Knee")):
        theta = np.abs(theta)
    else:
        theta = np.where(theta < 0, theta + 360.0, theta)
    return theta


def _angles(xs: np.ndarray, fps: float, k: int, mode: str) -> dict[str, JointAngle]:
    dt = 1.0 / fps
    out = {}
    for joint, (a, b, c) in JOINTS.items():
        p0, p1, p2 = (xs[:, _INDEX[p]] for p in (a, b, c))
        ok = np.isfinite(p0[:, 0]) & np.isfinite(p1[:, 0]) & np.isfinite(p2[:, 0])
        frames = np.flatnonzero(ok)
        theta = joint_angle_degrees(p0[ok], p1[ok], p2[ok], joint)
        disp = np.zeros_like(theta)
        if theta.size > 1:
            disp[1:] = wrap_degrees(theta[1:] - theta[:-1])
        trailing = mode == "chambers2020"
        vel = smooth_dynamics(disp / dt, k, trailing)
        acc = smooth_dynamics(delta(vel) / dt, k, trailing)
        out[joint] = JointAngle(frames, theta, vel, acc)
    return out


def _position_features(part: str, v: VideoFeatures) -> dict[str, float]:
    j = _INDEX[part]
    if not v.has_rows[j]:
        return {f: math.nan for f in POSITION_FEATURES}
    xn, yn = v.normalised[:, j, 0], v.normalised[:, j, 1]
    vx, vy = v.velocity[:, j, 0], v.velocity[:, j, 1]
    ax, ay = v.acceleration[:, j, 0], v.acceleration[:, j, 1]
    empty = 0.0 if v.mode == "chambers2020" else math.nan
    return {
        "IQRaccx": iqr(ax),
        "IQRaccy": iqr(ay),
        "IQRvelx": iqr(vx),
        "IQRvely": iqr(vy),
        "IQRx": iqr(xn),
        "IQRy": iqr(yn),
        "meanent": (entropy(xn, 2, empty) + entropy(yn, 2, empty)) / 2.0,
        "medianvelx": median(np.abs(vx)),
        "medianvely": median(np.abs(vy)),
        "medianx": median(xn),
        "mediany": median(yn),
    }


def _angle_features(a: JointAngle, mode: str) -> dict[str, float]:
    if a.angle.size == 0:
        return {f: math.nan for f in ANGLE_FEATURES}

    def no_inf(x: np.ndarray) -> np.ndarray:
        return np.where(np.isinf(x), np.nan, x)

    theta, vel, acc = no_inf(a.angle), no_inf(a.velocity), no_inf(a.acceleration)
    return {
        "IQR_acc_angle": iqr(acc),
        "IQR_vel_angle": iqr(vel),
        "entropy_angle": entropy(theta, 0),
        "mean_angle": circular_mean_degrees(theta),
        "median_vel_angle": median(np.abs(vel)),
        "stdev_angle": stdev_angle(theta, mode),
    }


def _lr_angle(right: JointAngle, left: JointAngle, part: str, mode: str) -> float:
    if mode == "chambers2020":  # paired by sample position; R fixes the length
        n = right.angle.size
        paired = np.full(n, np.nan)
        m = min(n, left.angle.size)
        paired[:m] = left.angle[:m]
        return pearson(right.angle, paired)
    _, ri, li = np.intersect1d(right.frames, left.frames, return_indices=True)
    r_angle, l_angle = right.angle[ri], left.angle[li]
    if part in ("Shoulder", "Hip"):
        return circular_correlation(r_angle, l_angle)
    return pearson(r_angle, l_angle)


def side_average(features: Mapping[str, float], mode: str = DEFAULT_MODE) -> dict[str, float]:
    """Section 6e: the paper's 38 from the 104 columns: the NaN-skipping mean over L and R
    (``lrCorr_*`` taken as they are). ``corrected`` mirrors ``medianx`` of the right side first."""
    check_mode(mode)
    out = {}
    for name in SIDE_AVERAGED_COLUMNS:
        part, _, feature = name.partition("_")
        if feature.startswith("lrCorr"):
            out[name] = float(features[f"{feature}_{part}"])
            continue
        left, right = float(features[f"{feature}_L{part}"]), float(features[f"{feature}_R{part}"])
        if mode == "corrected" and feature == "medianx":
            right = -right
        values = [v for v in (left, right) if not math.isnan(v)]
        out[name] = sum(values) / len(values) if values else math.nan
    return out


def average_rows(rows: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """The NaN-skipping mean of each of the 104 columns over several videos (the published code averages
    an infant's videos this way before :func:`side_average`)."""
    out = {}
    for col in FEATURE_COLUMNS:
        values = [float(r[col]) for r in rows if not math.isnan(float(r[col]))]
        out[col] = sum(values) / len(values) if values else math.nan
    return out


def compute_features(
    xy: Any,
    fps: float,
    *,
    frames: Any = None,
    mode: str = DEFAULT_MODE,
    image_size: tuple[float, float] | None = None,
) -> VideoFeatures:
    """The features of one video.

    Args:
      xy: (T, 18, 2) OpenPose-18 image coordinates (:data:`BODY_PARTS` order), x right, y down; NaN marks
        a missing point (apply the presence rule, e.g. score > 0, before: see ``gma.inputs``).
      fps: the video's frame rate; time is ``frame / fps``.
      frames: (T,) frame numbers of the samples (default ``0..T-1``).
      mode: ``'chambers2020'`` (the published numbers) or ``'corrected'``.
      image_size: (width, height) of the video: the coordinates are first mapped to
        ``((x - W/2) / H, (y - H/2) / H)`` as the published code does (section 2a). No feature depends on it
        beyond rounding (it can decide a degenerate case: a constant series' correlation or spread).
    """
    mode = check_mode(mode)
    fps = check_fps(fps)
    w, k = smoothing_window(fps), derivative_window(fps)
    xy = np.array(xy, np.float64)
    if image_size is not None:
        width, height = (float(v) for v in image_size)
        if not (math.isfinite(width) and math.isfinite(height) and width > 0 and height > 0):
            raise ValueError(f"image size must be two positive numbers, got {image_size!r}")
        if xy.ndim == 3 and xy.shape[-1] == 2:
            xy = np.stack([(xy[..., 0] - width / 2) / height, (xy[..., 1] - height / 2) / height], axis=-1)
    grid, n = frame_grid(xy, frames)
    present = np.isfinite(grid).all(axis=2)
    has_rows = present.any(axis=0)
    trailing = mode == "chambers2020"

    xs = np.full_like(grid, np.nan)
    for j in np.flatnonzero(has_rows):
        for c in range(2):
            xs[:, j, c] = smooth_keypoint(fill_gaps(grid[:, j, c], trailing=trailing), w)

    refs = _references(xs, has_rows, mode)
    xn, dist = _normalise(xs, refs, mode)
    xn[:, ~has_rows] = np.nan
    dt = 1.0 / fps
    vel = np.full_like(xn, np.nan)
    acc = np.full_like(xn, np.nan)
    for j in np.flatnonzero(has_rows):
        for c in range(2):
            vel[:, j, c] = smooth_dynamics(delta(xn[:, j, c]) / dt, k, trailing)
            acc[:, j, c] = smooth_dynamics(delta(vel[:, j, c]) / dt, k, trailing)
    angles = _angles(xs, fps, k, mode)

    v = VideoFeatures(mode, fps, w, k, n, present, has_rows, xs, xn, vel, acc, dist, angles, {}, {})
    feats: dict[str, float] = {}
    per_part = {p: _position_features(p, v) for p in POSITION_PARTS}
    for f in POSITION_FEATURES:
        for p in POSITION_PARTS:
            feats[f"{f}_{p}"] = per_part[p][f]
    for part in LR_POSITION_PARTS:
        r, lft = _INDEX["R" + part], _INDEX["L" + part]
        if has_rows[r] and has_rows[lft]:
            d_r = np.sqrt(xn[:, r, 0] ** 2 + xn[:, r, 1] ** 2)
            d_l = np.sqrt(xn[:, lft, 0] ** 2 + xn[:, lft, 1] ** 2)
            feats[f"lrCorr_x_{part}"] = pearson(d_r, d_l)
        else:
            feats[f"lrCorr_x_{part}"] = math.nan
    per_joint = {j: _angle_features(angles[j], mode) for j in ANGLE_JOINTS}
    for f in ANGLE_FEATURES:
        for j in ANGLE_JOINTS:
            feats[f"{f}_{j}"] = per_joint[j][f]
    for part in LR_ANGLE_PARTS:
        feats[f"lrCorr_angle_{part}"] = _lr_angle(angles["R" + part], angles["L" + part], part, mode)
    assert tuple(feats) == FEATURE_COLUMNS
    v.features = feats
    v.side_averaged = side_average(feats, mode)
    return v


__all__ = [
    "ANGLE_FEATURES",
    "ANGLE_JOINTS",
    "BODY_PARTS",
    "DEFAULT_MODE",
    "FEATURE_COLUMNS",
    "JOINTS",
    "MODES",
    "POSITION_FEATURES",
    "POSITION_PARTS",
    "QUIRKS",
    "SIDE_AVERAGED_COLUMNS",
    "JointAngle",
    "VideoFeatures",
    "average_rows",
    "compute_features",
    "side_average",
]
