"""Crop geometry against hand numbers and an independently composed affine."""

import numpy as np
import pytest

from aggpose_jax.pose import geometry as G


def composed_affine(center, scale, rot_deg, out_wh, convention="aggpose"):
    """translate(dst centre) . zoom . rotate(-rot) . translate(-centre), built directly."""
    off = 1.0 if convention == "aggpose" else 0.0
    src_w = float(scale[0]) * 200.0
    zoom = (out_wh[0] - off) / (src_w - off)
    th = np.deg2rad(rot_deg)
    rot = np.array([[np.cos(th), np.sin(th)], [-np.sin(th), np.cos(th)]])
    lin = zoom * rot
    dst_c = np.array([(out_wh[0] - off) / 2.0, (out_wh[1] - off) / 2.0])
    return np.concatenate([lin, (dst_c - lin @ np.asarray(center, np.float64))[:, None]], axis=1)


def test_box_to_center_scale_hand_numbers():
    # wide box: height grows to w / 0.75
    c, s = G.box_to_center_scale([10, 20, 100, 50], aspect_ratio=0.75)
    np.testing.assert_allclose(c, [60.0, 45.0])
    np.testing.assert_allclose(s, [100 / 200 * 1.25, (100 / 0.75) / 200 * 1.25], rtol=1e-6)
    # tall box: width grows to h * 0.75
    c, s = G.box_to_center_scale([0, 0, 30, 200], aspect_ratio=0.75)
    np.testing.assert_allclose(c, [15.0, 100.0])
    np.testing.assert_allclose(s, [150 / 200 * 1.25, 200 / 200 * 1.25], rtol=1e-6)
    assert c.dtype == np.float32 and s.dtype == np.float32
    # vectorised form agrees with the single form
    boxes = np.array([[10, 20, 100, 50], [0, 0, 30, 200]], np.float32)
    cs, ss = G.box_to_center_scale(boxes, aspect_ratio=0.75)
    np.testing.assert_allclose(ss[1], s)
    with pytest.raises(ValueError, match="expected"):
        G.box_to_center_scale([1, 2, 3], 0.75)


def test_joints_to_center_scale_half_body_box():
    pts = np.array([[10, 10], [30, 50], [20, 90]], np.float32)
    c, s = G.joints_to_center_scale(pts, aspect_ratio=0.75, padding=1.5)
    np.testing.assert_allclose(c, [20.0, 50.0])
    h = 90 - 10 + 1  # extent + 1
    np.testing.assert_allclose(s, [h * 0.75 / 200 * 1.5, h / 200 * 1.5], rtol=1e-6)


@pytest.mark.parametrize("convention", ["aggpose", "hrnet"])
@pytest.mark.parametrize("rot", [0.0, 30.0, -75.5])
def test_affine_matches_composed_matrix(convention, rot):
    center = np.array([123.4, 77.7], np.float32)
    scale = np.array([0.9, 1.2], np.float32)
    m = G.get_affine_transform(center, scale, rot, (192, 256), convention=convention)
    ref = composed_affine(center, scale, rot, (192, 256), convention)
    np.testing.assert_allclose(m, ref, atol=2e-4)  # the original rounds its points to float32
    inv = G.get_affine_transform(center, scale, rot, (192, 256), inv=True, convention=convention)
    np.testing.assert_allclose(inv @ np.vstack([m, [0, 0, 1]]), np.eye(3)[:2], atol=1e-5)


def test_conventions_centre_and_zoom():
    c, s = np.array([100.0, 80.0], np.float32), np.array([1.0, 4 / 3], np.float32)
    for conv, centre, zoom in [("aggpose", (23.5, 31.5), 47 / 199), ("hrnet", (24.0, 32.0), 48 / 200)]:
        m = G.get_affine_transform(c, s, 0.0, (48, 64), convention=conv)
        np.testing.assert_allclose(G.affine_points(c, m), centre, atol=1e-4)
        np.testing.assert_allclose(m[0, 0], zoom, rtol=1e-6)
    with pytest.raises(ValueError, match="convention"):
        G.get_affine_transform(c, s, 0.0, (48, 64), convention="mmpose")


def test_shift_moves_source_centre():
    c, s = np.array([50.0, 60.0], np.float32), np.array([0.5, 0.5], np.float32)
    m = G.get_affine_transform(c, s, 0.0, (64, 64), shift=(0.1, -0.2), convention="hrnet")
    # the shifted source centre c + (0.1, -0.2) * 100 px lands on the crop centre
    np.testing.assert_allclose(G.affine_points(np.array([60.0, 40.0]), m), [32, 32], atol=1e-4)


def test_batched_transforms_and_transform_preds():
    rng = np.random.default_rng(0)
    centers = rng.uniform(50, 500, (5, 2)).astype(np.float32)
    scales = rng.uniform(0.3, 2.0, (5, 2)).astype(np.float32)
    rots = rng.uniform(-60, 60, 5)
    mats = G.get_affine_transforms(centers, scales, rots, (48, 64))
    for i in range(5):
        np.testing.assert_allclose(mats[i], G.get_affine_transform(centers[i], scales[i], rots[i], (48, 64)), atol=1e-9)
    coords = rng.uniform(0, 48, (5, 17, 2))
    img = G.transform_preds(coords, centers, scales, (48, 64))
    for i in range(5):  # per person with the single-matrix inverse
        inv = G.get_affine_transform(centers[i], scales[i], 0.0, (48, 64), inv=True)
        np.testing.assert_allclose(img[i], G.affine_points(coords[i], inv), atol=1e-9)
    # heatmap centre -> box centre; heatmap corner (0, 0) -> centre - (w-1)/2 / zoom
    fwd = G.get_affine_transforms(centers, scales, 0.0, (48, 64))
    back = G.transform_preds(G.affine_points(img, fwd), centers, scales, (48, 64))
    np.testing.assert_allclose(back, img, atol=1e-7)
    mid = G.transform_preds(np.full((5, 1, 2), [23.5, 31.5]), centers, scales, (48, 64))
    np.testing.assert_allclose(mid[:, 0], centers, atol=1e-3)
    with pytest.raises(ValueError, match="people"):
        G.transform_preds(coords[:2], centers, scales, (48, 64))


def test_flip_joints_mirrors_swaps_and_zeroes_invisible():
    joints = np.array([[10.0, 1.0], [20.0, 2.0], [30.0, 3.0], [40.0, 4.0]], np.float32)
    vis = np.array([1.0, 1.0, 0.0, 1.0], np.float32)
    flip_index = np.array([0, 2, 1, 3])  # pair (1, 2)
    fj, fv = G.flip_joints(joints, vis, image_width=100, flip_index=flip_index)
    np.testing.assert_array_equal(fv, [1, 0, 1, 1])
    np.testing.assert_allclose(fj, [[89, 1], [0, 0], [79, 2], [59, 4]])  # x -> 100 - x - 1


def test_source_window_covers_what_the_warp_reads():
    center, scale = np.array([300.0, 200.0], np.float32), np.array([0.6, 0.8], np.float32)
    m = G.get_affine_transform(center, scale, 40.0, (48, 64))
    x0, y0, x1, y1 = G.source_window(m, (48, 64), (480, 640), margin=2)
    corners = G.affine_points(
        np.array([[0, 0], [47, 0], [0, 63], [47, 63]], float),
        G.get_affine_transform(center, scale, 40.0, (48, 64), inv=True),
    )
    assert x0 <= corners[:, 0].min() - 2 and x1 >= corners[:, 0].max() + 2
    assert y0 <= corners[:, 1].min() - 2 and y1 >= corners[:, 1].max() + 2
    far = G.get_affine_transform(np.array([5000.0, 5000.0], np.float32), scale, 0.0, (48, 64))
    x0, y0, x1, y1 = G.source_window(far, (48, 64), (480, 640))
    assert x1 <= x0 or y1 <= y0
