"""Keypoint time series: masking, gap filling, smoothing, normalisation, COCO->OpenPose, quality report."""

from __future__ import annotations

import json

import numpy as np
import pytest

from aggpose_jax.predict import sequences as sq

# Parameters used for every filter below; all in seconds / Hz.
PARAMS = {
    "savgol": {"window_s": 0.4, "polyorder": 2},
    "gaussian": {"sigma_s": 0.06},
    "butterworth": {"cutoff_hz": 3.0, "order": 4},
    "one_euro": {"min_cutoff": 1.0, "beta": 0.01, "d_cutoff": 1.0},
}
ZERO_PHASE = ["savgol", "gaussian", "butterworth"]


def _rms(a: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(a))))


def _crossing(t: np.ndarray, s: np.ndarray, level: float = 0.5) -> float:
    """Time of the first upward crossing of ``level``, by linear interpolation between samples."""
    i = int(np.argmax(s >= level))
    assert i > 0
    return float(t[i - 1] + (level - s[i - 1]) / (s[i] - s[i - 1]) * (t[i] - t[i - 1]))


# ---------------------------------------------------------------------------------------------------
# Filters on known signals


@pytest.mark.parametrize("method", list(PARAMS))
def test_filters_reduce_noise_on_a_sine(method: str) -> None:
    rng = np.random.default_rng(0)
    t = np.arange(450) / 30.0
    clean = 10.0 * np.sin(2 * np.pi * 0.2 * t)
    noisy = clean + rng.normal(0.0, 2.0, t.shape)
    before = noisy.copy()
    smoothed = sq.smooth(noisy, t, method, **PARAMS[method])
    np.testing.assert_array_equal(noisy, before)  # input untouched
    ratio = _rms(smoothed - clean) / _rms(noisy - clean)
    # Zero-phase filters remove well over half of the error; One-Euro is causal (it lags the sine).
    assert ratio < (0.55 if method in ZERO_PHASE else 0.8), ratio


@pytest.mark.parametrize("fps", [25.0, 50.0])
@pytest.mark.parametrize("method", ZERO_PHASE)
def test_zero_phase_filters_do_not_shift_a_step(method: str, fps: float) -> None:
    t = np.arange(int(4 * fps)) / fps
    t_step = 2.0 + 0.5 / fps  # half-way between two samples
    x = (t > t_step).astype(float)
    s = sq.smooth(x, t, method, **PARAMS[method])
    assert abs(_crossing(t, s) - t_step) <= 1.0 / fps
    assert s[0] == pytest.approx(0.0, abs=1e-6) and s[-1] == pytest.approx(1.0, abs=1e-6)


def test_one_euro_is_causal_and_lags_a_step() -> None:
    # The same measurement detects a shift: the causal filter crosses 50 % more than a sample late.
    fps = 25.0
    t = np.arange(100) / fps
    t_step = 2.0 + 0.5 / fps
    s = sq.smooth((t > t_step).astype(float), t, "one_euro", **PARAMS["one_euro"])
    assert _crossing(t, s) > t_step + 1.0 / fps
    np.testing.assert_array_equal(s[t < t_step], 0.0)  # nothing before the step moves


def test_one_euro_uses_the_real_time_step() -> None:
    # One step of the recursion by hand: dx = 1/dt, dx_hat = a_d dx, cutoff = 1 + beta |dx_hat|, y = a.
    def alpha(cutoff: float, dt: float) -> float:
        return 1.0 / (1.0 + 1.0 / (2 * np.pi * cutoff * dt))

    x = np.array([0.0, 1.0])
    for dt in (0.01, 0.04, 1.0):
        y = sq.one_euro_smooth(x, np.array([0.0, dt]), min_cutoff=1.0, beta=0.5, d_cutoff=2.0)
        dx_hat = alpha(2.0, dt) * 1.0 / dt
        assert y[0] == 0.0
        assert y[1] == pytest.approx(alpha(1.0 + 0.5 * dx_hat, dt), rel=1e-12)


@pytest.mark.parametrize("method", list(PARAMS))
def test_same_smoothing_at_25_and_50_fps(method: str) -> None:
    """One underlying signal (0.4, 2.5 and 6 Hz components) sampled over the same 8 s at 25 and 50 fps.

    The filters are discretisations of one continuous-time filter, so with parameters in seconds / Hz
    the two outputs may differ only by discretisation error: the sampled Gaussian kernel, an 11- vs
    21-point least-squares fit, the bilinear transform's frequency warping, a first-order recursion
    (error growing with frequency x time step). Measured: 0-6 % of what the filter changes (largest for
    One-Euro and Savitzky-Golay). We require the disagreement at the common times to be under 10 % of
    what the filter changes, and
    check that frame-based parameters (the 25 fps value in samples reused at 50 fps, i.e. half the
    time span / twice the cutoff) disagree by over 25 %, so the test can tell the two apart. Ends
    (0.5 s each) are excluded: padding lengths and start-up transients are in samples by construction.
    """

    def signal(t: np.ndarray) -> np.ndarray:
        return (
            10 * np.sin(2 * np.pi * 0.4 * t + 0.3) + 3 * np.sin(2 * np.pi * 2.5 * t) + 2 * np.sin(2 * np.pi * 6 * t + 1)
        )

    t25, t50 = np.arange(201) / 25.0, np.arange(401) / 50.0  # both end at 8.0 s
    params = PARAMS[method]
    s25 = sq.smooth(signal(t25), t25, method, **params)
    s50 = sq.smooth(signal(t50), t50, method, **params)
    frame_based = dict(params)  # the 25 fps parameters in samples, reused at 50 fps
    if method == "savgol":
        frame_based["window_s"] = params["window_s"] / 2
    elif method == "gaussian":
        frame_based["sigma_s"] = params["sigma_s"] / 2
    elif method == "butterworth":
        frame_based["cutoff_hz"] = params["cutoff_hz"] * 2
    else:
        frame_based.update(min_cutoff=2 * params["min_cutoff"], d_cutoff=2 * params["d_cutoff"])
    c50 = sq.smooth(signal(t50), t50, method, **frame_based)
    inner = slice(13, -13)
    effect = _rms((s25 - signal(t25))[inner])
    assert effect > 1.0  # the filter does change the signal
    assert _rms((s25 - s50[::2])[inner]) < 0.10 * effect
    assert _rms((s25 - c50[::2])[inner]) > 0.25 * effect


# ---------------------------------------------------------------------------------------------------
# NaN handling


def _noisy_series(n: int = 150, fps: float = 25.0, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / fps
    xy = np.stack([np.sin(2 * np.pi * 0.5 * t), np.cos(2 * np.pi * 0.3 * t)], axis=-1)[:, None, :]
    xy = np.repeat(xy, 3, axis=1) + rng.normal(0.0, 0.2, (n, 3, 2))
    return xy, t


@pytest.mark.parametrize("method", list(PARAMS))
def test_nans_stay_and_stretches_are_smoothed_separately(method: str) -> None:
    xy, t = _noisy_series()
    xy[60:70, 0] = np.nan  # joint 0: a gap splitting it into two stretches
    xy[100, 1, 0] = np.nan  # joint 1: a single missing x
    xy[:5, 2] = np.nan  # joint 2: leading NaNs
    raw = xy.copy()
    out = sq.smooth(xy, t, method, **PARAMS[method])
    np.testing.assert_array_equal(xy, raw)  # input untouched
    np.testing.assert_array_equal(np.isnan(out), np.isnan(raw))  # NaNs neither spread nor filled
    # Each stretch comes out exactly as when smoothed on its own.
    for sl in (slice(0, 60), slice(70, None)):
        alone = sq.smooth(raw[sl, 0], t[sl], method, **PARAMS[method])
        np.testing.assert_allclose(out[sl, 0], alone, rtol=0, atol=1e-12)
    assert not np.allclose(out[:60, 0], raw[:60, 0])  # and is really smoothed
    # Joint 1: x (split) and y (whole) are filtered independently.
    np.testing.assert_allclose(out[:, 1, 1], sq.smooth(raw[:, 1, 1], t, method, **PARAMS[method]), atol=1e-12)


@pytest.mark.parametrize("method", ZERO_PHASE)
def test_stretch_too_short_for_the_filter_is_left_as_is(method: str) -> None:
    # 5 samples at 25 fps: under the Savitzky-Golay window (11), the Butterworth padding (15 + 1) and
    # the Gaussian radius + 1 (7); a single sample is never changed, by any filter.
    xy, t = _noisy_series()
    xy[50:60] = np.nan
    xy[65:75] = np.nan  # leaves samples 60..64
    xy[76:80] = np.nan  # leaves sample 75 alone
    out = sq.smooth(xy, t, method, **PARAMS[method])
    np.testing.assert_array_equal(out[60:65], xy[60:65])
    np.testing.assert_array_equal(out[75], xy[75])
    assert not np.allclose(out[:50], xy[:50])
    assert not np.allclose(out[80:], xy[80:])


def test_interpolate_short_gaps_then_smooth() -> None:
    t = np.arange(100) / 25.0
    x = np.sin(2 * np.pi * 0.5 * t)
    x[20:24] = np.nan  # 4 frames: gap lasts 5 / 25 = 0.2 s
    x[50:56] = np.nan  # 6 frames: 0.28 s
    filled = sq.interpolate_gaps(x, t, max_gap_s=0.2)
    assert np.all(np.isfinite(filled[20:24]))
    assert np.all(np.isnan(filled[50:56]))
    out = sq.smooth(filled, t, "savgol", window_s=0.4)
    np.testing.assert_array_equal(np.isnan(out), np.isnan(filled))


# ---------------------------------------------------------------------------------------------------
# Interpolation and masking


def test_interpolate_gaps_in_time_with_irregular_times() -> None:
    t = np.array([0.0, 0.1, 0.15, 0.4, 0.5, 0.55, 0.9, 1.1, 1.2, 1.3])
    line = 2.0 * t + 1.0  # linear in time: interpolation in time must recover it exactly
    xy = np.stack([line, -line], axis=-1)[:, None, :]
    xy[0] = np.nan  # leading: stays
    xy[2:3] = np.nan  # between t=0.1 and 0.4: 0.3 s, == max_gap_s: filled
    xy[5:7] = np.nan  # between t=0.5 and 1.1: 0.6 s: stays
    xy[9] = np.nan  # trailing: stays
    raw = xy.copy()
    out = sq.interpolate_gaps(xy, t, max_gap_s=0.3)
    np.testing.assert_array_equal(xy, raw)
    np.testing.assert_allclose(out[2, 0], [line[2], -line[2]], rtol=1e-12)
    assert np.all(np.isnan(out[[0, 5, 6, 9]]))
    finite = np.isfinite(raw[:, 0, 0])
    np.testing.assert_array_equal(out[finite], raw[finite])
    # Index-based interpolation would give the midpoint of the neighbours instead (times are irregular).
    assert out[2, 0, 0] != pytest.approx(0.5 * (line[1] + line[3]))
    assert np.all(np.isnan(sq.interpolate_gaps(raw, t, max_gap_s=0.29)[2]))


def test_interpolate_gaps_columns_independent_and_errors() -> None:
    t = np.arange(6) / 10.0
    x = np.array([[0.0, 5.0], [np.nan, 5.0], [2.0, np.nan], [3.0, np.nan], [4.0, np.nan], [5.0, 0.0]])
    out = sq.interpolate_gaps(x, t, max_gap_s=0.25)
    np.testing.assert_allclose(out[:, 0], [0, 1, 2, 3, 4, 5])
    assert np.all(np.isnan(out[2:5, 1]))  # 0.4 s gap
    with pytest.raises(ValueError, match="strictly increasing"):
        sq.interpolate_gaps(x, t[::-1], 0.1)
    with pytest.raises(ValueError, match="max_gap_s"):
        sq.interpolate_gaps(x, t, -1.0)


def test_mask_low_scores() -> None:
    xy = np.arange(12, dtype=float).reshape(2, 3, 2)
    scores = np.array([[0.9, 0.1, 0.3], [np.nan, 0.5, 0.29]])
    raw = xy.copy()
    out, flagged = sq.mask_low_scores(xy, scores, 0.3)
    np.testing.assert_array_equal(flagged, [[False, True, False], [True, False, True]])
    assert np.all(np.isnan(out[flagged])) and np.all(np.isfinite(out[~flagged]))
    np.testing.assert_array_equal(out[~flagged], raw[~flagged])
    np.testing.assert_array_equal(xy, raw)
    with pytest.raises(ValueError, match="scores must have shape"):
        sq.mask_low_scores(xy, scores[:, :2], 0.3)


# ---------------------------------------------------------------------------------------------------
# smooth() dispatch and parameter errors


def test_smooth_rejects_bad_methods_and_parameters() -> None:
    xy, t = _noisy_series()
    with pytest.raises(ValueError, match="unknown smoothing method 'kalman'"):
        sq.smooth(xy, t, "kalman")
    with pytest.raises(ValueError, match=r"unknown \['window'\]"):
        sq.smooth(xy, t, "savgol", window=0.4)
    with pytest.raises(ValueError, match=r"missing \['sigma_s'\]"):
        sq.smooth(xy, t, "gaussian")
    with pytest.raises(ValueError, match="sigma_s must be > 0"):
        sq.smooth(xy, t, "gaussian", sigma_s=-1)
    with pytest.raises(ValueError, match="polyorder must be an integer"):
        sq.smooth(xy, t, "savgol", window_s=0.4, polyorder=2.5)
    with pytest.raises(ValueError, match="below half the frame rate"):
        sq.smooth(xy, t, "butterworth", cutoff_hz=13.0)  # 25 fps
    with pytest.raises(ValueError, match="3-sample window at 25 fps"):
        sq.smooth(xy, t, "savgol", window_s=0.08, polyorder=2)
    with pytest.raises(ValueError, match="beta must be >= 0"):
        sq.check_smoothing("one_euro", {"beta": -0.1})
    sq.check_smoothing("butterworth", {"cutoff_hz": 5.0})  # valid at 25 fps and up: no error
    assert sq.smoothing_parameters("butterworth")["order"] == 4


def test_median_frame_rate_ignores_dropped_frames() -> None:
    t = np.concatenate([np.arange(10) / 30.0, 1.0 + np.arange(10) / 30.0])
    assert sq.median_frame_rate(t) == pytest.approx(30.0)


# ---------------------------------------------------------------------------------------------------
# Normalisation


def _body(shoulder_y: np.ndarray, hip_x: np.ndarray) -> np.ndarray:
    """(T, 4, 2): left/right shoulder at y = shoulder_y, left/right hip at y = 0, hips centred on hip_x."""
    t = len(shoulder_y)
    xy = np.zeros((t, 4, 2))
    xy[:, 0] = np.stack([hip_x - 1, shoulder_y], -1)
    xy[:, 1] = np.stack([hip_x + 1, shoulder_y], -1)
    xy[:, 2] = np.stack([hip_x - 1, np.zeros(t)], -1)
    xy[:, 3] = np.stack([hip_x + 1, np.zeros(t)], -1)
    return xy


def test_mid_hip_and_trunk_length() -> None:
    xy = _body(np.array([2.0, -4.0]), np.array([5.0, 7.0]))
    np.testing.assert_allclose(sq.mid_hip_centre(xy, 2, 3), [[5.0, 0.0], [7.0, 0.0]])
    np.testing.assert_allclose(sq.trunk_length(xy, 0, 1, 2, 3), [2.0, 4.0])


def test_normalise_median_and_per_frame() -> None:
    xy = _body(np.array([2.0, 4.0, 10.0, 3.0]), np.array([5.0, 6.0, 7.0, 8.0]))
    xy[3, 0] = np.nan  # no left shoulder in the last frame: trunk length undefined there
    raw = xy.copy()
    med = sq.normalise(xy, 0, 1, 2, 3, scale="median")  # median of (2, 4, 10) = 4
    np.testing.assert_allclose(med[:3, 2:].mean(axis=1), 0.0, atol=1e-12)  # mid-hip at the origin
    np.testing.assert_allclose(sq.trunk_length(med, 0, 1, 2, 3)[:3], [0.5, 1.0, 2.5])
    np.testing.assert_allclose(med[3, 1], [1.0 / 4, 3.0 / 4])  # still centred and scaled
    per = sq.normalise(xy, 0, 1, 2, 3, scale="per_frame")
    np.testing.assert_allclose(sq.trunk_length(per, 0, 1, 2, 3)[:3], 1.0)
    np.testing.assert_allclose(per[2, 3], [1.0 / 10, 0.0])
    assert np.all(np.isnan(per[3]))
    np.testing.assert_array_equal(xy, raw)
    with pytest.raises(ValueError, match="scale"):
        sq.normalise(xy, 0, 1, 2, 3, scale="mean")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="every frame"):
        sq.normalise(np.full_like(xy, np.nan), 0, 1, 2, 3)


# ---------------------------------------------------------------------------------------------------
# COCO-17 -> OpenPose-18

COCO_NAMES = [
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
]


def _openpose_to_coco_name(name: str) -> str:
    side = {"L": "left_", "R": "right_"}[name[0]]
    return side + name[1:].lower()


def test_coco17_to_openpose18() -> None:
    rng = np.random.default_rng(3)
    xy = rng.uniform(0, 100, (4, 17, 2))
    scores = rng.uniform(0, 1, (4, 17))
    xy[1, 6] = np.nan
    out, out_scores, names = sq.coco17_to_openpose18(xy, scores)
    assert names == (
        "Nose", "Neck", "RShoulder", "RElbow", "RWrist", "LShoulder", "LElbow", "LWrist", "RHip", "RKnee", "RAnkle",
        "LHip", "LKnee", "LAnkle", "REye", "LEye", "REar", "LEar",
    )  # fmt: skip
    assert out.shape == (4, 18, 2) and out_scores.shape == (4, 18)
    assert list(sq.COCO17_NAMES) == COCO_NAMES
    for j, name in enumerate(names):
        if name in ("Nose", "Neck"):
            continue
        k = COCO_NAMES.index(_openpose_to_coco_name(name))
        np.testing.assert_array_equal(out[:, j], xy[:, k])
        np.testing.assert_array_equal(out_scores[:, j], scores[:, k])
    np.testing.assert_array_equal(out[:, 0], xy[:, 0])
    ls, rs = COCO_NAMES.index("left_shoulder"), COCO_NAMES.index("right_shoulder")
    np.testing.assert_allclose(out[[0, 2, 3], 1], 0.5 * (xy[[0, 2, 3], ls] + xy[[0, 2, 3], rs]))
    assert np.all(np.isnan(out[1, 1]))  # a missing shoulder gives no neck
    np.testing.assert_array_equal(out_scores[:, 1], np.minimum(scores[:, ls], scores[:, rs]))
    # Single frame (17, 2) works too.
    single, _, _ = sq.coco17_to_openpose18(xy[0], scores[0])
    np.testing.assert_array_equal(single, out[0])
    with pytest.raises(ValueError, match="17"):
        sq.coco17_to_openpose18(xy[:, :16], scores[:, :16])


# ---------------------------------------------------------------------------------------------------
# Quality report


def test_quality_report_on_a_hand_made_example() -> None:
    t = np.array([0.0, 0.25, 0.5, 0.75, 1.5, 1.75, 2.0, 2.25, 2.5, 3.0])  # irregular
    scores = np.full((10, 2), 0.9)
    scores[3, 0] = 0.1  # frame 3 invalid: gap from 0.5 to 1.5 s (1 frame, 1.0 s)
    scores[6, 1] = 0.0  # frames 6-7 invalid: gap from 1.75 to 2.5 s (2 frames, 0.75 s)
    scores[7, 1] = np.nan
    report = sq.quality_report(scores, t, threshold=0.3, min_stretch_s=0.5, joint_names=["a", "b"])
    json.dumps(report)  # JSON-serialisable
    assert report["n_frames"] == 10
    assert report["duration_s"] == 3.0
    assert report["median_fps"] == pytest.approx(4.0)
    assert report["frames_all_valid_share"] == pytest.approx(0.7)
    assert report["points_valid_share"] == pytest.approx(17 / 20)
    assert report["per_joint_share"] == pytest.approx([0.9, 0.8])
    assert report["joint_names"] == ["a", "b"]
    assert report["longest_gap_frames"] == 2  # frames 6-7 ...
    assert report["longest_gap_s"] == pytest.approx(1.0)  # ... but the longest in time is frame 3's
    assert report["longest_gap_start_s"] == pytest.approx(0.75)
    # Valid runs: 0-2 (0.5 s), 4-5 (0.25 s, too short), 8-9 (0.5 s).
    assert [(s["start_frame"], s["end_frame"], s["n_frames"]) for s in report["usable_stretches"]] == [
        (0, 2, 3),
        (8, 9, 2),
    ]
    assert [(s["start_s"], s["end_s"], s["duration_s"]) for s in report["usable_stretches"]] == [
        (0.0, 0.5, 0.5),
        (2.5, 3.0, 0.5),
    ]
    assert report["usable_s"] == pytest.approx(1.0)
    assert report["usable_share"] == pytest.approx(1.0 / 3.0)
    text = sq.format_quality_report(report)
    assert "10 frames, 3.00 s" in text
    assert "70.0 % of frames" in text
    assert "longest gap: 2 frames; in time 1.00 s from 0.75 s" in text
    assert "0.00-0.50 s, 2.50-3.00 s" in text
    assert "weakest joints: b 80.0 %, a 90.0 %" in text


def test_quality_report_edge_gaps_and_nothing_valid() -> None:
    t = np.arange(8) / 4.0
    scores = np.ones((8, 3))
    scores[:2, 1] = 0.0  # leading gap: from the first frame (0) to the first valid frame (0.5 s)
    report = sq.quality_report(scores, t, threshold=0.5, min_stretch_s=0.0)
    assert (report["longest_gap_frames"], report["longest_gap_s"], report["longest_gap_start_s"]) == (2, 0.5, 0.0)
    assert report["usable_stretches"][0]["start_frame"] == 2
    none = sq.quality_report(np.zeros((8, 3)), t, threshold=0.5)
    assert (none["longest_gap_frames"], none["longest_gap_s"]) == (8, 1.75)
    assert none["usable_stretches"] == [] and none["usable_share"] == 0.0
    assert "usable stretches >= 1 s: 0" in sq.format_quality_report(none)
    full = sq.quality_report(np.ones((8, 3)), t, threshold=0.5)
    assert full["longest_gap_frames"] == 0 and full["longest_gap_start_s"] is None
    assert "longest gap: none" in sq.format_quality_report(full)
    with pytest.raises(ValueError, match="times must have shape"):
        sq.quality_report(scores, t[:-1], 0.5)
