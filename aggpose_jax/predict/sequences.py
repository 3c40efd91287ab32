"""Per-video keypoint time series: masking, gap filling, smoothing, normalisation, conversion, quality.

Conventions:

- ``xy``: float array (T, J, 2) of image coordinates. Masking, interpolation and smoothing accept any
  shape (T, ...): every trailing element (one coordinate of one joint) is an independent *column*.
- ``scores``: (T, J) confidences. ``times``: (T,) seconds, finite and strictly increasing; the steps
  may be irregular (variable frame rate, dropped frames).
- Missing values are NaN. Every function returns new float64 arrays; inputs are never modified, so
  the raw series can be kept beside the processed ones.

Smoothing and NaN: each column is split into *stretches*, maximal runs of consecutive finite
samples. Each stretch is filtered on its own: nothing leaks across a gap, and NaNs stay exactly where
they were (never spread, never filled). A stretch shorter than the filter needs (see each filter) is
returned unchanged. To bridge short gaps, call :func:`interpolate_gaps` before smoothing.

Fixed-rate filters (Savitzky-Golay, Gaussian, Butterworth) treat the samples as equally spaced at the
median time step of ``times`` (:func:`median_frame_rate`; nothing is resampled). Their parameters are
in seconds or Hz and are converted to samples with that rate, so the same parameters give the same
smoothing at 25 and 50 fps. With a variable frame rate the timing error of a sample is its deviation
from that median grid. The One-Euro filter uses the real time step between samples.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import numpy as np

from aggpose_jax.pose.keypoints import COCO17

COCO17_NAMES: tuple[str, ...] = COCO17.names  # the keypoint set's names, in its order

OPENPOSE18_NAMES: tuple[str, ...] = (
    "Nose",
    "Neck",
    "RShoulder",
    "RElbow",
    "RWrist",
    "LShoulder",
    "LElbow",
    "LWrist",
    "RHip",
    "RKnee",
    "RAnkle",
    "LHip",
    "LKnee",
    "LAnkle",
    "REye",
    "LEye",
    "REar",
    "LEar",
)

# COCO-17 index of each OpenPose-18 joint; None marks the Neck (derived from the shoulders).
_OPENPOSE18_FROM_COCO17: tuple[int | None, ...] = (0, None, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3)
_COCO_LEFT_SHOULDER, _COCO_RIGHT_SHOULDER = 5, 6

# Gap durations within this many seconds of ``max_gap_s`` count as equal (float error in k * 0.04 etc.).
_TIME_TOLERANCE_S = 1e-6


# ----------------------------------------------------------------------------------------------------
# Validation helpers


def _as_series(xy: Any, name: str = "xy") -> np.ndarray:
    arr = np.array(xy, dtype=np.float64)  # always a copy
    if arr.ndim < 1:
        raise ValueError(f"{name} must have a leading time axis, got a scalar")
    return arr


def _as_times(times: Any, length: int) -> np.ndarray:
    t = np.asarray(times, dtype=np.float64)
    if t.ndim != 1 or t.shape[0] != length:
        raise ValueError(f"times must have shape ({length},) to match the series, got {t.shape}")
    if not np.all(np.isfinite(t)):
        raise ValueError("times must be finite")
    if length > 1 and not np.all(np.diff(t) > 0):
        raise ValueError("times must be strictly increasing")
    return t


def median_frame_rate(times: Any) -> float:
    """Frame rate (Hz) defined by the median time step; needs at least two strictly increasing times."""
    t = np.asarray(times, dtype=np.float64)
    if t.ndim != 1:
        raise ValueError(f"times must be one-dimensional, got shape {t.shape}")
    t = _as_times(t, t.shape[0])
    if t.shape[0] < 2:
        raise ValueError("at least two time stamps are needed to define a frame rate")
    return float(1.0 / np.median(np.diff(t)))


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(start, stop) index pairs (stop exclusive) of the runs of True in a 1-D boolean mask."""
    edges = np.diff(np.concatenate(([0], mask.astype(np.int8), [0])))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist(), strict=True))


def _column_groups(flat: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Group the columns of a (T, C) array by identical finite-masks: [(column indices, mask)]."""
    finite = np.isfinite(flat)
    groups: dict[bytes, list[int]] = {}
    for c in range(flat.shape[1]):
        groups.setdefault(finite[:, c].tobytes(), []).append(c)
    return [(np.asarray(cols), finite[:, cols[0]]) for cols in groups.values()]


def _filter_stretches(xy: np.ndarray, min_len: int, filt: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Apply ``filt`` (on an (n, k) block, along axis 0) to every finite stretch of at least ``min_len``."""
    out = xy.copy()
    if out.shape[0] == 0:
        return out
    flat = out.reshape(out.shape[0], -1)  # view on ``out``
    for cols, mask in _column_groups(flat):
        for start, stop in _runs(mask):
            if stop - start >= min_len:
                flat[start:stop, cols] = filt(flat[start:stop, cols])
    return out


# ----------------------------------------------------------------------------------------------------
# Masking and gap filling


def mask_low_scores(xy: Any, scores: Any, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Set points whose score is below ``threshold`` (or NaN) to NaN.

    Args:
      xy: (T, J, 2) coordinates. scores: (T, J), i.e. ``xy.shape[:-1]``.
    Returns:
      (xy copy with NaN at flagged points, boolean (T, J) mask of the flagged points). Points that were
      already NaN in ``xy`` stay NaN but are flagged only if their score is low.
    """
    arr = _as_series(xy)
    s = np.asarray(scores, dtype=np.float64)
    if arr.ndim < 2 or s.shape != arr.shape[:-1]:
        raise ValueError(f"scores must have shape {arr.shape[:-1]} (xy.shape[:-1]), got {s.shape}")
    flagged = ~(s >= threshold)  # NaN scores are flagged too
    arr[flagged] = np.nan
    return arr, flagged


def interpolate_gaps(xy: Any, times: Any, max_gap_s: float) -> np.ndarray:
    """Fill short NaN gaps by linear interpolation in time, column by column.

    A gap is a run of NaNs with a finite sample on both sides. Its duration is the time between those
    two finite samples, ``times[after] - times[before]``: at a constant rate ``fps`` a run of ``k``
    missing frames lasts ``(k + 1) / fps`` (so ``max_gap_s = 5 / 25`` fills up to 4 missing frames at
    25 fps). Gaps lasting at most ``max_gap_s`` (plus 1 microsecond for float error) are filled; longer
    gaps, and NaNs before the first or after the last finite sample, stay NaN.
    """
    arr = _as_series(xy)
    t = _as_times(times, arr.shape[0])
    if not (math.isfinite(max_gap_s) and max_gap_s >= 0):
        raise ValueError(f"max_gap_s must be a finite number >= 0, got {max_gap_s}")
    flat = arr.reshape(arr.shape[0], -1)
    for c in range(flat.shape[1]):
        col = flat[:, c]
        valid = np.flatnonzero(np.isfinite(col))
        for k in np.flatnonzero(np.diff(valid) > 1):
            before, after = valid[k], valid[k + 1]
            if t[after] - t[before] <= max_gap_s + _TIME_TOLERANCE_S:
                inside = slice(before + 1, after)
                col[inside] = np.interp(t[inside], t[[before, after]], col[[before, after]])
    return arr


# ----------------------------------------------------------------------------------------------------
# Smoothing


def _positive(method: str, name: str, value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"smoothing '{method}': {name} must be a number, got {value!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"smoothing '{method}': {name} must be > 0, got {value!r}")
    return v


def _whole(method: str, name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"smoothing '{method}': {name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def savgol_window_frames(window_s: float, fps: float) -> int:
    """Savitzky-Golay window length in samples: the odd count whose span (first to last sample) is
    closest to ``window_s`` seconds, ``2 * round(window_s * fps / 2) + 1``."""
    return 2 * round(window_s * fps / 2.0) + 1


def savgol_smooth(xy: Any, times: Any, window_s: float, polyorder: int = 2) -> np.ndarray:
    """Savitzky-Golay smoothing (zero-phase) with a window spanning ``window_s`` seconds.

    The window has :func:`savgol_window_frames` samples at the median frame rate (11 samples at 30 fps
    is ``window_s = 1/3``); it must exceed ``polyorder + 1`` samples (ValueError otherwise). Stretch
    ends use scipy's ``mode='interp'`` (a polynomial fitted to the first / last window). Stretches
    shorter than the window are returned unchanged.
    """
    from scipy.signal import savgol_filter

    window_s = _positive("savgol", "window_s", window_s)
    polyorder = _whole("savgol", "polyorder", polyorder, 0)
    arr = _as_series(xy)
    t = _as_times(times, arr.shape[0])
    if arr.shape[0] < 2:
        return arr
    fps = median_frame_rate(t)
    n = savgol_window_frames(window_s, fps)
    if n <= polyorder + 1:
        raise ValueError(
            f"smoothing 'savgol': window_s={window_s} s gives a {n}-sample window at {fps:.3g} fps, "
            f"which must exceed polyorder + 1 = {polyorder + 1} samples"
        )
    return _filter_stretches(arr, n, lambda b: savgol_filter(b, n, polyorder, axis=0, mode="interp"))


def _odd_extend(block: np.ndarray, pad: int) -> np.ndarray:
    """Point-symmetric extension about both end samples (keeps a local linear trend at the ends)."""
    if pad == 0:
        return block
    head = 2.0 * block[:1] - block[pad:0:-1]
    tail = 2.0 * block[-1:] - block[-2 : -pad - 2 : -1]
    return np.concatenate([head, block, tail], axis=0)


def gaussian_smooth(xy: Any, times: Any, sigma_s: float) -> np.ndarray:
    """Gaussian smoothing (zero-phase) with standard deviation ``sigma_s`` seconds.

    The kernel has sigma ``sigma_s * fps`` samples at the median frame rate and is truncated at
    ``radius = int(4 * sigma + 0.5)`` samples. Each stretch is extended by ``radius`` samples point-
    symmetrically about its end samples (as ``filtfilt``'s odd padding), which keeps a linear trend at
    the ends instead of flattening it. Stretches of ``radius`` samples or fewer are returned unchanged.
    """
    from scipy.ndimage import gaussian_filter1d

    sigma_s = _positive("gaussian", "sigma_s", sigma_s)
    arr = _as_series(xy)
    t = _as_times(times, arr.shape[0])
    if arr.shape[0] < 2:
        return arr
    sigma = sigma_s * median_frame_rate(t)
    radius = int(4.0 * sigma + 0.5)

    def filt(block: np.ndarray) -> np.ndarray:
        smoothed = gaussian_filter1d(_odd_extend(block, radius), sigma, axis=0, mode="nearest", truncate=4.0)
        return smoothed[radius : radius + block.shape[0]]

    return _filter_stretches(arr, radius + 1, filt)


def butterworth_smooth(xy: Any, times: Any, cutoff_hz: float, order: int = 4) -> np.ndarray:
    """Zero-phase Butterworth low-pass (``sosfiltfilt``, forward and backward, odd padding).

    ``cutoff_hz`` is the -3 dB frequency of the single pass; it must be below half the median frame
    rate. The padding is ``3 * (2 * sections + 1)`` samples (15 for order 4); stretches not longer
    than the padding are returned unchanged.
    """
    from scipy.signal import butter, sosfiltfilt

    cutoff_hz = _positive("butterworth", "cutoff_hz", cutoff_hz)
    order = _whole("butterworth", "order", order, 1)
    arr = _as_series(xy)
    t = _as_times(times, arr.shape[0])
    if arr.shape[0] < 2:
        return arr
    fps = median_frame_rate(t)
    if cutoff_hz >= fps / 2.0:
        raise ValueError(
            f"smoothing 'butterworth': cutoff_hz={cutoff_hz} must be below half the frame rate ({fps / 2:.3g} Hz)"
        )
    sos = butter(order, cutoff_hz, btype="low", fs=fps, output="sos")
    padlen = 3 * (2 * sos.shape[0] + 1)
    return _filter_stretches(arr, padlen + 1, lambda b: sosfiltfilt(sos, b, axis=0, padtype="odd", padlen=padlen))


def _one_euro_alpha(cutoff_hz: np.ndarray | float, dt: float) -> np.ndarray | float:
    tau = 1.0 / (2.0 * np.pi * cutoff_hz)
    return 1.0 / (1.0 + tau / dt)


def one_euro_smooth(
    xy: Any, times: Any, min_cutoff: float = 1.0, beta: float = 0.0, d_cutoff: float = 1.0
) -> np.ndarray:
    """One-Euro filter (Casiez et al. 2012): causal, adaptive low-pass; uses the real time steps.

    Per sample, with ``dt`` the real time since the previous sample: ``dx = (x - x_prev) / dt`` (raw
    finite difference, as in the authors' reference code; the filtered previous value would make the
    speed estimate grow with the frame rate); ``dx_hat`` = low-pass of ``dx`` at ``d_cutoff`` Hz;
    ``x_hat`` = low-pass of ``x`` at ``min_cutoff + beta * |dx_hat|`` Hz, each low-pass being
    ``prev + alpha * (new - prev)`` with ``alpha = 1 / (1 + 1 / (2 pi cutoff dt))``. Speeds are in
    coordinate units per second, so ``beta`` is in Hz per (unit/s), i.e. 1/unit (values from frame-based
    implementations such as mmpose 0.x do not carry over). The state restarts at the first sample of
    each stretch, which is passed through. Not zero-phase: the output lags the motion.
    """
    min_cutoff = _positive("one_euro", "min_cutoff", min_cutoff)
    d_cutoff = _positive("one_euro", "d_cutoff", d_cutoff)
    try:
        beta = float(beta)
    except (TypeError, ValueError):
        raise ValueError(f"smoothing 'one_euro': beta must be a number, got {beta!r}") from None
    if not (math.isfinite(beta) and beta >= 0):
        raise ValueError(f"smoothing 'one_euro': beta must be >= 0, got {beta!r}")
    arr = _as_series(xy)
    t = _as_times(times, arr.shape[0])
    out = np.full_like(arr, np.nan)
    if arr.shape[0] == 0:
        return out
    x = arr.reshape(arr.shape[0], -1)
    y = out.reshape(out.shape[0], -1)
    x_hat = np.full(x.shape[1], np.nan)
    dx_hat = np.zeros(x.shape[1])
    running = np.zeros(x.shape[1], dtype=bool)  # columns whose previous sample was finite
    for i in range(x.shape[0]):
        xi = x[i]
        finite = np.isfinite(xi)
        cont = finite & running
        if cont.any():
            dt = t[i] - t[i - 1]
            a_d = _one_euro_alpha(d_cutoff, dt)
            dx_hat = np.where(cont, a_d * (xi - x[i - 1]) / dt + (1.0 - a_d) * dx_hat, 0.0)
            a = _one_euro_alpha(min_cutoff + beta * np.abs(dx_hat), dt)
            x_hat = np.where(cont, a * xi + (1.0 - a) * x_hat, xi)
        else:
            dx_hat = np.zeros_like(dx_hat)
            x_hat = xi.copy()
        x_hat[~finite] = np.nan
        y[i] = x_hat
        running = finite
    return out


SMOOTHING_METHODS: dict[str, Callable[..., np.ndarray]] = {
    "savgol": savgol_smooth,
    "gaussian": gaussian_smooth,
    "butterworth": butterworth_smooth,
    "one_euro": one_euro_smooth,
}


def smoothing_parameters(method: str) -> dict[str, Any]:
    """Parameter names of a smoothing method with their defaults (``inspect.Parameter.empty`` if required)."""
    fn = _smoothing_function(method)
    params = list(inspect.signature(fn).parameters.values())[2:]
    return {p.name: p.default for p in params}


def _smoothing_function(method: str) -> Callable[..., np.ndarray]:
    try:
        return SMOOTHING_METHODS[method]
    except (KeyError, TypeError):
        raise ValueError(f"unknown smoothing method {method!r}; choose one of {', '.join(SMOOTHING_METHODS)}") from None


def check_smoothing(method: str, params: Mapping[str, Any]) -> None:
    """Raise ValueError early (before any data is read) for an unknown method, unknown or missing
    parameter names, or values that are invalid at any frame rate."""
    expected = smoothing_parameters(method)
    unknown = sorted(set(params) - set(expected))
    missing = sorted(k for k, v in expected.items() if v is inspect.Parameter.empty and k not in params)
    if unknown or missing:
        problems = [f"unknown {unknown}" if unknown else "", f"missing {missing}" if missing else ""]
        raise ValueError(
            f"smoothing '{method}': parameters {'; '.join(p for p in problems if p)}; accepted: {', '.join(expected)}"
        )
    # A one-sample series runs every value check but none of the frame-rate-dependent ones.
    _smoothing_function(method)(np.zeros((1, 1)), np.zeros(1), **params)


def check_smoothing_at(method: str, params: Mapping[str, Any], fps: float) -> None:
    """Raise ValueError when ``method`` with ``params`` cannot run at ``fps`` (e.g. a Butterworth cutoff at or
    above half the frame rate, a Savitzky-Golay window of too few samples), before any data is computed."""
    check_smoothing(method, params)
    if not (math.isfinite(fps) and fps > 0):
        return
    n = 64
    _smoothing_function(method)(np.zeros((n, 1)), np.arange(n) / float(fps), **params)


def smooth(xy: Any, times: Any, method: str, **params: Any) -> np.ndarray:
    """Smooth a keypoint series with one of :data:`SMOOTHING_METHODS`.

    ``method``: ``'savgol'`` (window_s, polyorder=2), ``'gaussian'`` (sigma_s), ``'butterworth'``
    (cutoff_hz, order=4) or ``'one_euro'`` (min_cutoff=1.0, beta=0.0, d_cutoff=1.0). Unknown methods,
    unknown / missing parameters and invalid values raise one ValueError. See the module docstring for
    the NaN handling; the input is not modified.
    """
    check_smoothing(method, params)
    return _smoothing_function(method)(xy, times, **params)


# ----------------------------------------------------------------------------------------------------
# Normalisation


def mid_hip_centre(xy: Any, left_hip: int, right_hip: int) -> np.ndarray:
    """(..., 2) midpoint of the two hips of ``xy`` (..., J, 2); NaN where either hip is NaN."""
    arr = _as_series(xy)
    return 0.5 * (arr[..., left_hip, :] + arr[..., right_hip, :])


def trunk_length(xy: Any, left_shoulder: int, right_shoulder: int, left_hip: int, right_hip: int) -> np.ndarray:
    """(...,) distance from the shoulder midpoint to the hip midpoint of ``xy`` (..., J, 2)."""
    arr = _as_series(xy)
    shoulders = 0.5 * (arr[..., left_shoulder, :] + arr[..., right_shoulder, :])
    return np.linalg.norm(shoulders - mid_hip_centre(arr, left_hip, right_hip), axis=-1)


def normalise(
    xy: Any,
    left_shoulder: int,
    right_shoulder: int,
    left_hip: int,
    right_hip: int,
    scale: Literal["median", "per_frame"] = "median",
) -> np.ndarray:
    """Centre every frame on its mid-hip and divide by the trunk length (shoulder centre to hip centre).

    ``scale='median'`` (default) divides all frames by one number, the median trunk length over the
    frames where it is finite and > 0: body proportions and the infant's own motion towards or away
    from the camera are kept. ``scale='per_frame'`` divides each frame by its own trunk length (NaN for
    frames where it is NaN or 0): the trunk is then of length 1 in every frame. Indices refer to the
    joint axis of ``xy`` (COCO-17: 5, 6, 11, 12; infant-21 R2/L2, R6/L6: 1, 10, 5, 14).
    """
    arr = _as_series(xy)
    if arr.ndim < 2 or arr.shape[-1] != 2:
        raise ValueError(f"xy must have shape (..., J, 2), got {arr.shape}")
    centred = arr - mid_hip_centre(arr, left_hip, right_hip)[..., None, :]
    length = trunk_length(arr, left_shoulder, right_shoulder, left_hip, right_hip)
    usable = np.isfinite(length) & (length > 0)
    if scale == "median":
        if not usable.any():
            raise ValueError("trunk length is undefined (NaN or 0) in every frame; cannot normalise")
        return centred / float(np.median(length[usable]))
    if scale == "per_frame":
        per_frame = np.where(usable, length, np.nan)
        return centred / per_frame[..., None, None]
    raise ValueError(f"scale must be 'median' or 'per_frame', got {scale!r}")


# ----------------------------------------------------------------------------------------------------
# Keypoint-set conversion


def coco17_to_openpose18(xy: Any, scores: Any) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """COCO-17 keypoints (..., 17, 2) and scores (..., 17) to OpenPose-18 order, adding the Neck.

    Neck = midpoint of the two shoulders (NaN if either is NaN); its score = the lower shoulder score.
    Returns (xy (..., 18, 2), scores (..., 18), :data:`OPENPOSE18_NAMES`).
    """
    arr = _as_series(xy)
    s = np.array(scores, dtype=np.float64)
    if arr.ndim < 2 or arr.shape[-2:] != (17, 2) or s.shape != arr.shape[:-1]:
        raise ValueError(f"expected xy (..., 17, 2) and scores (..., 17), got {arr.shape} and {s.shape}")
    ls, rs = _COCO_LEFT_SHOULDER, _COCO_RIGHT_SHOULDER
    neck_xy = 0.5 * (arr[..., ls, :] + arr[..., rs, :])
    neck_score = np.minimum(s[..., ls], s[..., rs])  # NaN if either is NaN
    out_xy = np.stack([neck_xy if i is None else arr[..., i, :] for i in _OPENPOSE18_FROM_COCO17], axis=-2)
    out_s = np.stack([neck_score if i is None else s[..., i] for i in _OPENPOSE18_FROM_COCO17], axis=-1)
    return out_xy, out_s, OPENPOSE18_NAMES


# ----------------------------------------------------------------------------------------------------
# Quality report


def quality_report(
    scores: Any,
    times: Any,
    threshold: float,
    min_stretch_s: float = 1.0,
    joint_names: Sequence[str] | None = None,
    exclude: Any = None,
) -> dict[str, Any]:
    """Summarise how usable a video's keypoints are; returns a JSON-serialisable dict.

    A point is *valid* when its score is >= ``threshold`` (NaN scores are invalid) and its frame is not
    in ``exclude`` ((T,) booleans: frames known to be unusable, e.g. another person's keypoints); a frame
    is valid when every joint is. Durations are measured between frame times: a usable stretch (a run of
    valid frames) lasts from its first to its last frame's time and is listed when that is
    >= ``min_stretch_s``; a gap (a run of invalid frames) lasts from the last valid frame before it to the
    first valid frame after it (the measure :func:`interpolate_gaps` compares with ``max_gap_s``), or from
    / to the first / last frame of the video when the gap touches an end (the whole video if no frame is
    valid).

    Keys: ``n_frames``, ``duration_s`` (last minus first time), ``median_fps`` (None for one frame),
    ``threshold``, ``min_stretch_s``, ``frames_all_valid_share``, ``points_valid_share``,
    ``per_joint_share`` (list, joint order), ``excluded_frames`` (frames of ``exclude``), ``joint_names``
    (if given), ``longest_gap_frames`` (most consecutive invalid frames), ``longest_gap_s`` (longest gap
    in time; with a variable frame rate it may be another gap), ``longest_gap_start_s`` (time of that
    gap's first invalid frame; None without a gap), ``usable_stretches`` (list of dicts ``start_s``,
    ``end_s``, ``duration_s``, ``start_frame``, ``end_frame`` (inclusive), ``n_frames``), ``usable_s``
    (sum of their durations) and ``usable_share`` (``usable_s / duration_s``; 0 for a single frame).
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2 or s.shape[0] == 0:
        raise ValueError(f"scores must have shape (T, J) with T >= 1, got {s.shape}")
    t = _as_times(times, s.shape[0])
    if joint_names is not None and len(joint_names) != s.shape[1]:
        raise ValueError(f"joint_names has {len(joint_names)} names for {s.shape[1]} joints")
    if not math.isfinite(min_stretch_s) or min_stretch_s < 0:
        raise ValueError(f"min_stretch_s must be >= 0, got {min_stretch_s}")
    n = s.shape[0]
    valid_points = s >= threshold
    excluded = np.zeros(n, bool) if exclude is None else np.asarray(exclude, bool).reshape(n)
    valid_points &= ~excluded[:, None]
    valid = valid_points.all(axis=1)

    longest_frames, longest_s, longest_start = 0, 0.0, None
    for start, stop in _runs(~valid):
        begin = t[start - 1] if start > 0 else t[0]
        end = t[stop] if stop < n else t[-1]
        gap_s = float(end - begin)
        longest_frames = max(longest_frames, stop - start)
        if longest_start is None or gap_s > longest_s:
            longest_s, longest_start = gap_s, float(t[start])

    stretches = []
    for start, stop in _runs(valid):
        duration = float(t[stop - 1] - t[start])
        if duration >= min_stretch_s:
            stretches.append(
                {
                    "start_s": float(t[start]),
                    "end_s": float(t[stop - 1]),
                    "duration_s": duration,
                    "start_frame": int(start),
                    "end_frame": int(stop - 1),
                    "n_frames": int(stop - start),
                }
            )
    duration_s = float(t[-1] - t[0])
    usable_s = float(sum(st["duration_s"] for st in stretches))
    report: dict[str, Any] = {
        "n_frames": int(n),
        "duration_s": duration_s,
        "median_fps": median_frame_rate(t) if n > 1 else None,
        "threshold": float(threshold),
        "min_stretch_s": float(min_stretch_s),
        "frames_all_valid_share": float(valid.mean()),
        "points_valid_share": float(valid_points.mean()),
        "per_joint_share": [float(v) for v in valid_points.mean(axis=0)],
        "excluded_frames": int(excluded.sum()),
    }
    if joint_names is not None:
        report["joint_names"] = [str(name) for name in joint_names]
    report.update(
        {
            "longest_gap_frames": int(longest_frames),
            "longest_gap_s": longest_s,
            "longest_gap_start_s": longest_start,
            "usable_stretches": stretches,
            "usable_s": usable_s,
            "usable_share": usable_s / duration_s if duration_s > 0 else 0.0,
        }
    )
    return report


def format_quality_report(report: Mapping[str, Any], max_stretches: int = 5, weakest: int = 3) -> str:
    """A few lines summarising a :func:`quality_report` for printing."""
    fps = report["median_fps"]
    fps_text = f", median {fps:.2f} fps" if fps else ""
    lines = [
        f"{report['n_frames']} frames, {report['duration_s']:.2f} s{fps_text}; score threshold {report['threshold']:g}",
        (
            f"all joints valid in {100 * report['frames_all_valid_share']:.1f} % of frames; "
            f"points valid: {100 * report['points_valid_share']:.1f} %"
        ),
    ]
    if report["longest_gap_frames"]:
        lines.append(
            f"longest gap: {report['longest_gap_frames']} frames; in time {report['longest_gap_s']:.2f} s "
            f"from {report['longest_gap_start_s']:.2f} s"
        )
    else:
        lines.append("longest gap: none")
    stretches = report["usable_stretches"]
    spans = ", ".join(f"{st['start_s']:.2f}-{st['end_s']:.2f} s" for st in stretches[:max_stretches])
    if len(stretches) > max_stretches:
        spans += f", ... (+{len(stretches) - max_stretches} more)"
    lines.append(
        f"usable stretches >= {report['min_stretch_s']:g} s: {len(stretches)}, "
        f"{report['usable_s']:.2f} s ({100 * report['usable_share']:.1f} %)" + (f": {spans}" if spans else "")
    )
    shares = report["per_joint_share"]
    names = report.get("joint_names") or [str(j) for j in range(len(shares))]
    order = sorted(range(len(shares)), key=lambda j: shares[j])[:weakest]
    lines.append("weakest joints: " + ", ".join(f"{names[j]} {100 * shares[j]:.1f} %" for j in order))
    uncertain = report.get("identity_uncertain")
    if uncertain and uncertain.get("frames"):
        spans = ", ".join(f"{r['start_s']:.2f}-{r['end_s']:.2f} s" for r in uncertain["ranges"][:max_stretches])
        more = len(uncertain["ranges"]) - max_stretches
        spans += f", ... (+{more} more)" if more > 0 else ""
        lines.append(
            f"identity uncertain (a person far from the subject's last place): {uncertain['frames']} frames, "
            f"not counted as valid: {spans}"
        )
    decoding = report.get("decoding")
    if decoding and not decoding.get("complete", True):
        lines.append(
            f"INCOMPLETE: {decoding['frames_decoded']} of the container's {decoding['frame_count_container']} "
            f"frames decoded ({decoding['frames_missing']} missing)"
        )
    if decoding and decoding.get("decoder_messages"):
        lines.append(f"decoder messages: {decoding['decoder_messages']} (see the log beside the results)")
    return "\n".join(lines)
