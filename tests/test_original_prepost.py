"""Pre- and post-processing against the numbers of the ORIGINAL AggPose code (PediaMedAI/AggPose).

``tests/fixtures/original_prepost.npz`` was written by ``tests/fixtures/make_original_prepost.py``,
which imports and runs the original's own functions (crop affine, box -> centre/scale, half-body
box, Gaussian targets, the dataset's sample, crop, flip_back / fliplr_joints, get_max_preds,
gaussian_blur, get_final_preds with DARK, rescoring and OKS-NMS in COCODataset.evaluate, oks_iou)
on deterministic inputs; the fixture records the original's commit. The original's numbers are the
reference. Tolerances: float32 geometry to 1e-4 px (the original computes the three point pairs in
float32, as this project does), Gaussian targets to 1e-6, crops exact (same OpenCV warp), DARK
coordinates to 1e-3 heatmap px (float32 argmax input, float64 Newton step in both).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aggpose_jax.data.transforms import TrainParams, half_body_center_scale, make_train_sample, warp_crop
from aggpose_jax.evaluate.postprocess import build_results, oks_matrix, rescore
from aggpose_jax.evaluate.topdown import decode_to_image
from aggpose_jax.pose import geometry
from aggpose_jax.pose.codec import blur_heatmaps, decode_heatmaps, encode_targets, get_max_preds
from aggpose_jax.pose.flip import flip_heatmaps
from aggpose_jax.pose.keypoints import get_keypoint_set

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "original_prepost.npz")
COCO = get_keypoint_set("coco")


@pytest.fixture(scope="module")
def orig() -> dict[str, np.ndarray]:
    with np.load(FIXTURE) as z:
        return {k: z[k] for k in z.files}


def nchw(x: np.ndarray) -> np.ndarray:
    """(N, J, h, w) of the original -> (N, h, w, J) of this project."""
    return np.moveaxis(x, 1, -1)


def test_fixture_records_the_original_commit(orig):
    assert len(str(orig["original_commit"])) == 40 and int(str(orig["original_commit"]), 16) >= 0


def test_crop_affine_matrices_and_points(orig):
    for i in range(len(orig["affine_rot"])):
        args = (orig["affine_center"][i], orig["affine_scale"][i], orig["affine_rot"][i], orig["affine_size_wh"][i])
        inv = bool(orig["affine_inv"][i])
        mat = geometry.get_affine_transform(*args, shift=orig["affine_shift"][i], inv=inv)
        np.testing.assert_allclose(mat, orig["affine_matrix"][i], rtol=1e-6, atol=1e-6, err_msg=f"case {i}")
        pts = geometry.affine_points(orig["affine_points"][i], mat)
        np.testing.assert_allclose(pts, orig["affine_mapped"][i], atol=1e-4, err_msg=f"case {i}")
    # the vectorised form, one call for all cases with the same direction and shift
    for inv in (False, True):
        sel = np.nonzero((orig["affine_inv"] == inv) & ~orig["affine_shift"].any(axis=1))[0]
        for size in {tuple(s) for s in orig["affine_size_wh"][sel]}:
            rows = sel[(orig["affine_size_wh"][sel] == size).all(axis=1)]
            mats = geometry.get_affine_transforms(
                orig["affine_center"][rows], orig["affine_scale"][rows], orig["affine_rot"][rows], size, inv=inv
            )
            np.testing.assert_allclose(mats, orig["affine_matrix"][rows], rtol=1e-6, atol=1e-5)


def test_box_to_center_scale(orig):
    center, scale = geometry.box_to_center_scale(orig["box_xywh"], 192 / 256)
    np.testing.assert_allclose(center, orig["box_center"], rtol=1e-6)
    np.testing.assert_allclose(scale, orig["box_scale"], rtol=1e-6)


def test_half_body_box(orig):
    for i in range(len(orig["halfbody_center"])):
        vis = orig["halfbody_vis"][i][:, 0]
        out = half_body_center_scale(orig["halfbody_joints"][i][:, :2], vis, COCO.upper_body, 192 / 256, 0.0)
        assert out is not None
        np.testing.assert_allclose(out[0], orig["halfbody_center"][i], rtol=1e-6)
        np.testing.assert_allclose(out[1], orig["halfbody_scale"][i], rtol=1e-6)


def test_gaussian_targets_and_weights(orig):
    target, weight = encode_targets(orig["target_joints"][:, :2], orig["target_vis"][:, 0], (32, 24), sigma=2.0)
    np.testing.assert_array_equal(weight, orig["target_weight"][:, 0])
    np.testing.assert_allclose(np.moveaxis(target, -1, 0), orig["target_heatmaps"], atol=1e-6)


def test_eval_sample_crop_joints_and_targets(orig):
    params = TrainParams(orig["sample_center"], orig["sample_scale"], 0.0, False, None)
    joints, vis = orig["sample_joints"][:, :2], orig["sample_vis"][:, 0]
    out = make_train_sample(
        orig["sample_image"], joints, vis, params, COCO.flip_index, (64, 48), (16, 12), 2.0, return_uint8=True
    )
    np.testing.assert_array_equal(out["crop"], orig["sample_eval_crop"])
    np.testing.assert_array_equal(out["target_weight"], orig["sample_eval_weight"])
    np.testing.assert_allclose(np.moveaxis(out["target"], -1, 0), orig["sample_eval_target"], atol=1e-6)
    trans = geometry.get_affine_transform(orig["sample_center"], orig["sample_scale"], 0.0, (48, 64))
    seen = vis > 0
    np.testing.assert_allclose(
        geometry.affine_points(joints, trans)[seen], orig["sample_eval_joints"][seen, :2], atol=1e-4
    )


def test_train_samples_with_rotation_and_flip(orig):
    """The original's random sample (rotation, scale, flip drawn by it) rebuilt from its draws."""
    joints, vis = orig["sample_joints"][:, :2], orig["sample_vis"][:, 0]
    assert orig["sample_train_flip"].any() and not orig["sample_train_flip"].all()
    for i in range(len(orig["sample_train_flip"])):
        params = TrainParams(
            orig["sample_center"],
            orig["sample_train_scale"][i],
            float(orig["sample_train_rot"][i]),
            bool(orig["sample_train_flip"][i]),
            None,
        )
        out = make_train_sample(orig["sample_image"], joints, vis, params, COCO.flip_index, (64, 48), (16, 12), 2.0)
        np.testing.assert_array_equal(out["target_weight"], orig["sample_train_weight"][i], err_msg=f"sample {i}")
        np.testing.assert_allclose(
            np.moveaxis(out["target"], -1, 0), orig["sample_train_target"][i], atol=1e-5, err_msg=f"sample {i}"
        )


def test_image_crop(orig):
    for i in range(len(orig["crop_rot"])):
        mat = geometry.get_affine_transform(
            orig["crop_center"][i], orig["crop_scale"][i], orig["crop_rot"][i], (24, 32)
        )
        np.testing.assert_array_equal(warp_crop(orig["sample_image"], mat, (32, 24)), orig["crop_out"][i])


@pytest.mark.parametrize("form", ["numpy", "jax", "jit"])
def test_flip_back_heatmaps(orig, form):
    """The one flip test (pose.flip) as evaluation, prediction and export run it: inside the jitted forward."""
    hm = nchw(orig["flip_heatmaps"])
    if form == "numpy":
        out = flip_heatmaps(hm, COCO.flip_index)
    elif form == "jax":
        out = flip_heatmaps(jnp.asarray(hm), COCO.flip_index)
    else:
        out = jax.jit(lambda x: flip_heatmaps(x, COCO.flip_index))(jnp.asarray(hm))
    np.testing.assert_array_equal(np.asarray(out), nchw(orig["flip_back"]))


def test_flip_joints(orig):
    joints, vis = geometry.flip_joints(
        orig["flip_joints"][:, :2], orig["flip_vis"][:, 0], int(orig["flip_width"]), COCO.flip_index
    )
    np.testing.assert_allclose(joints, orig["flip_joints_out"][:, :2], atol=1e-4)
    np.testing.assert_array_equal(vis, orig["flip_vis_out"][:, 0])


def test_argmax_and_blur(orig):
    hm = nchw(orig["decode_heatmaps"])
    coords, maxvals = get_max_preds(hm)
    np.testing.assert_array_equal(coords, orig["decode_argmax"])
    np.testing.assert_array_equal(maxvals, orig["decode_maxvals"][..., 0])
    np.testing.assert_allclose(blur_heatmaps(hm, 11), nchw(orig["decode_blurred"]), rtol=1e-5, atol=1e-7)


def test_dark_decoding_to_image_coordinates(orig):
    hm = nchw(orig["decode_heatmaps"])
    pts, maxvals = decode_to_image(hm, orig["decode_center"], orig["decode_scale"], decode="dark")
    np.testing.assert_array_equal(maxvals, orig["decode_final_maxvals"][..., 0])
    # 1e-3 heatmap px; the boxes here are 1 to 8 image px per heatmap px
    px_per_hm = orig["decode_scale"][:, 0] * 200 / 23
    err = np.abs(pts - orig["decode_preds"]).max(axis=(1, 2))
    assert np.all(err <= 1e-3 * px_per_hm + 1e-4), (err, px_per_hm)
    # the refinement moves most points (so the comparison checks DARK, not only argmax; 11 of 17
    # peaks lie inside the region where the Newton step is taken)
    argmax_pts, _ = decode_to_image(hm, orig["decode_center"], orig["decode_scale"], decode="argmax")
    moved = np.abs(argmax_pts - orig["decode_preds"]).max(axis=-1) > 0.05
    assert moved.mean() > 0.5
    coords, _ = decode_heatmaps(hm, "dark")
    assert coords.dtype == np.float32


def test_oks_of_one_pose_against_several(orig):
    g = orig["oks_g"].reshape(1, 17, 3)
    d = orig["oks_d"].reshape(-1, 17, 3)
    oks = oks_matrix(g, d, np.array([orig["oks_area_g"]]), orig["oks_area_d"], COCO.sigmas)[0]
    np.testing.assert_allclose(oks, orig["oks_out"], rtol=1e-6, atol=1e-9)


def test_rescoring_and_oks_nms_results(orig):
    preds, boxes = orig["nms_preds"], orig["nms_boxes"]
    scales = boxes[:, 2:4]
    np.testing.assert_allclose(np.prod(scales * 200, axis=1), boxes[:, 4])  # the areas the original used
    results = build_results(
        orig["nms_image_ids"], preds[..., :2], preds[..., 2], boxes[:, 5], scales, COCO.sigmas, oks_nms_thre=0.9
    )
    ours = sorted((r["image_id"], round(r["score"], 5), np.asarray(r["keypoints"])) for r in results)
    ref = sorted(
        (int(i), round(float(s), 5), k)
        for i, s, k in zip(orig["nms_result_image_ids"], orig["nms_result_scores"], orig["nms_result_keypoints"])
    )
    assert [(i, s) for i, s, _ in ours] == [(i, s) for i, s, _ in ref]
    for (_, _, a), (_, _, b) in zip(ours, ref):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    # some people were suppressed and one has no joint above the threshold (score 0)
    assert len(results) < len(preds)
    scores = rescore(boxes[:, 5], preds[..., 2], 0.2)
    assert (scores == 0).sum() == 1
