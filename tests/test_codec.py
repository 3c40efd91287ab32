"""Heatmap codec: unbiased Gaussian targets, argmax and DARK decoding."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from aggpose_jax.pose.codec import blur_heatmaps, decode_heatmaps, encode_targets, get_max_preds

H, W = 64, 48


def _gauss(x: float, y: float, mx: float, my: float, sigma: float = 2.0) -> float:
    return math.exp(-((x - mx) ** 2 + (y - my) ** 2) / (2 * sigma**2))


def test_encode_subpixel_peak_and_values():
    joints = np.array([[10.3, 20.7], [30.0, 5.5]], np.float32)
    target, weight = encode_targets(joints, np.array([1, 2]), (H, W), sigma=2.0)
    assert target.shape == (H, W, 2) and target.dtype == np.float32
    np.testing.assert_array_equal(weight, [1.0, 1.0])
    # Peak at the pixel nearest to the sub-pixel centre (no rounding of the centre itself).
    y, x = np.unravel_index(np.argmax(target[..., 0]), (H, W))
    assert (x, y) == (10, 21)
    assert target[21, 10, 0] < 1.0
    for px, py in [(10, 21), (11, 20), (7, 25), (13, 14), (0, 0), (47, 63)]:
        assert target[py, px, 0] == pytest.approx(_gauss(px, py, 10.3, 20.7), rel=1e-5, abs=1e-12)
    # Exactly on a pixel: value 1 there; symmetric neighbours.
    assert target[5, 30, 1] == pytest.approx(_gauss(30, 5, 30.0, 5.5))
    assert target[5, 30, 1] == pytest.approx(target[6, 30, 1])


def test_encode_whole_map_vs_window():
    joints = np.array([[10.3, 20.7]], np.float32)
    full, _ = encode_targets(joints, np.ones(1), (H, W))
    win, _ = encode_targets(joints, np.ones(1), (H, W), window=True)
    # Released AggPose: Gaussian over the whole map, tiny but non-zero far away.
    assert full[20, 30, 0] == pytest.approx(_gauss(30, 20, 10.3, 20.7), rel=1e-5)
    assert full[20, 30, 0] > 0
    # HRNet window: pixels in [int(mu - 3s), int(mu + 3s + 1)) = x in [4, 17), y in [14, 27).
    assert win[20, 4, 0] == pytest.approx(_gauss(4, 20, 10.3, 20.7), rel=1e-5)
    assert win[20, 16, 0] == pytest.approx(_gauss(16, 20, 10.3, 20.7), rel=1e-5)
    assert win[20, 3, 0] == 0 and win[20, 17, 0] == 0
    assert win[14, 10, 0] > 0 and win[13, 10, 0] == 0 and win[26, 10, 0] > 0 and win[27, 10, 0] == 0
    inside = win[..., 0] > 0
    np.testing.assert_allclose(win[..., 0][inside], full[..., 0][inside])


@pytest.mark.parametrize(
    "x, y, expected",
    [
        (-7.5, 20.0, 1.0),  # br = int(-0.5) = 0: not < 0 (int truncates toward zero)
        (-8.0, 20.0, 0.0),  # br = -1 < 0
        (53.9, 20.0, 1.0),  # ul = int(47.9) = 47 < w
        (54.0, 20.0, 0.0),  # ul = 48 >= w
        (20.0, -8.0, 0.0),
        (20.0, 70.0, 0.0),  # ul = 64 >= h
        (20.0, 69.9, 1.0),
    ],
)
def test_encode_weight_outside_map(x, y, expected):
    target, weight = encode_targets(np.array([[x, y]]), np.ones(1), (H, W))
    assert weight[0] == expected
    if expected == 0:
        assert not target.any()
    else:
        assert target.max() > 0


def test_encode_invisible_joint_has_zero_weight_and_map():
    target, weight = encode_targets(np.array([[10.0, 10.0], [20.0, 20.0]]), np.array([0, 1]), (H, W))
    np.testing.assert_array_equal(weight, [0.0, 1.0])
    assert not target[..., 0].any() and target[..., 1].max() == pytest.approx(1.0)


def test_encode_rejects_bad_shapes():
    with pytest.raises(ValueError, match="joints_xy"):
        encode_targets(np.zeros((3, 3)), np.ones(3), (H, W))
    with pytest.raises(ValueError, match="visible"):
        encode_targets(np.zeros((3, 2)), np.ones(2), (H, W))


def test_argmax_decoding():
    hm = np.zeros((2, H, W, 3), np.float32)
    hm[0, 5, 7, 0] = 0.9
    hm[0, 40, 2, 1] = 0.3
    hm[1, 63, 47, 0] = 0.5
    hm[0, ..., 2] = -1.0  # non-positive map: coordinates masked to 0
    hm[0, 9, 9, 2] = -0.5
    hm[1, ..., 1] = -0.1
    coords, maxvals = decode_heatmaps(hm, method="argmax")
    assert coords.shape == (2, 3, 2) and coords.dtype == np.float32 and maxvals.shape == (2, 3)
    np.testing.assert_array_equal(coords[0, 0], [7, 5])
    np.testing.assert_array_equal(coords[0, 1], [2, 40])
    np.testing.assert_array_equal(coords[1, 0], [47, 63])
    np.testing.assert_array_equal(coords[0, 2], [0, 0])
    np.testing.assert_array_equal(coords[1, 1], [0, 0])
    np.testing.assert_allclose(maxvals[0], [0.9, 0.3, -0.5])
    np.testing.assert_array_equal(get_max_preds(hm)[0], coords)


def test_dark_recovers_subpixel_centres():
    rng = np.random.default_rng(0)
    n, j = 6, 17
    mu = np.stack([rng.uniform(4, W - 5, (n, j)), rng.uniform(4, H - 5, (n, j))], axis=-1)
    hm = np.stack([encode_targets(mu[i], np.ones(j), (H, W), 2.0)[0] for i in range(n)])
    dark, maxvals = decode_heatmaps(hm, method="dark")
    arg, maxvals_a = decode_heatmaps(hm, method="argmax")
    err_dark = np.linalg.norm(dark - mu, axis=-1)
    err_arg = np.linalg.norm(arg - mu, axis=-1)
    assert err_dark.max() < 0.05
    assert err_arg.mean() > 0.3  # argmax is off by ~0.4 px on average
    assert err_dark.mean() < err_arg.mean() / 20
    np.testing.assert_array_equal(maxvals, maxvals_a)  # confidence is the raw maximum


def test_dark_leaves_border_and_flat_maps_alone():
    hm = np.zeros((1, H, W, 3), np.float32)
    hm[0, ..., 0] = encode_targets(np.array([[1.3, 30.2]]), np.ones(1), (H, W))[0][..., 0]  # px = 1
    hm[0, ..., 1] = 0.5  # constant map: zero Hessian, no step
    hm[0, ..., 2] = encode_targets(np.array([[20.0, 62.4]]), np.ones(1), (H, W))[0][..., 0]  # py = 62
    dark, _ = decode_heatmaps(hm, method="dark")
    arg, _ = decode_heatmaps(hm, method="argmax")
    np.testing.assert_array_equal(dark, arg)


def test_blur_matches_opencv_on_zero_padded_maps():
    rng = np.random.default_rng(1)
    hm = (rng.random((2, H, W, 3)) ** 6).astype(np.float32)
    got = blur_heatmaps(hm, 11)
    for i in range(2):
        for k in range(3):
            padded = np.pad(hm[i, :, :, k].astype(np.float64), 5)
            ref = cv2.GaussianBlur(padded, (11, 11), 0)[5:-5, 5:-5]
            ref *= hm[i, :, :, k].max() / ref.max()
            np.testing.assert_allclose(got[i, :, :, k], ref, rtol=1e-10, atol=1e-14)
    assert np.all(blur_heatmaps(np.zeros((1, 8, 8, 1))) == 0)  # no NaN on empty maps


def test_decode_rejects_bad_input():
    with pytest.raises(ValueError, match="method"):
        decode_heatmaps(np.zeros((1, 8, 8, 1)), method="soft")
    with pytest.raises(ValueError, match=r"\(N, h, w, J\)"):
        decode_heatmaps(np.zeros((8, 8, 1)))
