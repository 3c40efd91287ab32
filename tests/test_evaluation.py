"""Evaluation: flip test, rescoring, OKS-NMS, COCO OKS AP end to end on perfect heatmaps."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
from train_helpers import child_env

from aggpose_jax.evaluate.coco_eval import STAT_NAMES, coco_keypoint_eval
from aggpose_jax.evaluate.draw import LEGEND_HEIGHT, draw_predictions
from aggpose_jax.evaluate.postprocess import build_results, oks_matrix, oks_nms, rescore
from aggpose_jax.evaluate.topdown import evaluate
from aggpose_jax.pose import geometry
from aggpose_jax.pose.codec import encode_targets
from aggpose_jax.pose.flip import flip_heatmaps, flip_images, with_flip_test
from aggpose_jax.pose.keypoints import get_keypoint_set

IMAGE_HW = (256, 192)
HEATMAP_HW = (64, 48)
COCO_SIGMAS = (
    np.array([0.26, 0.25, 0.25, 0.35, 0.35, 0.79, 0.79, 0.72, 0.72, 0.62, 0.62, 1.07, 1.07, 0.87, 0.87, 0.89, 0.89])
    / 10.0
)


# ----------------------------------------------------------------------------- flip


def test_flip_heatmaps_is_an_involution_and_swaps_joints():
    kset = get_keypoint_set("coco")
    rng = np.random.default_rng(0)
    hm = rng.random((2, 8, 6, 17)).astype(np.float32)
    back = flip_heatmaps(flip_heatmaps(hm, kset.flip_index), kset.flip_index)
    np.testing.assert_array_equal(back, hm)
    once = flip_heatmaps(hm, kset.flip_index)
    # Left eye (1) of the flipped-back map = right eye (2) of the mirrored one, columns mirrored.
    np.testing.assert_array_equal(once[..., 1], hm[:, :, ::-1, 2])
    np.testing.assert_array_equal(once[..., 2], hm[:, :, ::-1, 1])
    np.testing.assert_array_equal(once[..., 0], hm[:, :, ::-1, 0])  # nose has no partner
    shifted = flip_heatmaps(hm, kset.flip_index, shift=True)
    np.testing.assert_array_equal(shifted[:, :, 1:], once[:, :, :-1])
    np.testing.assert_array_equal(shifted[:, :, 0], once[:, :, 0])
    with pytest.raises(ValueError, match="flip_index"):
        flip_heatmaps(hm, np.arange(5))


def test_flip_images_mirrors_width():
    img = np.arange(2 * 3 * 4 * 3, dtype=np.float32).reshape(2, 3, 4, 3)
    np.testing.assert_array_equal(flip_images(img)[:, :, 0], img[:, :, 3])
    np.testing.assert_array_equal(flip_images(flip_images(img)), img)


SHARDED_FLIP_SCRIPT = """
import dataclasses
import jax, jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
from aggpose_jax import sharding as shd
from aggpose_jax.heatmaps import jitted
from aggpose_jax.models.aggpose import get_model_config
from aggpose_jax.params import split_model
from aggpose_jax.pose.keypoints import get_keypoint_set

depths = ((1, 1, 1, 1), (1, 1, 1), (1, 1), (1,))
cfg = dataclasses.replace(get_model_config("aggpose_tiny"), stage_depths=depths, image_size=(64, 64))
mesh = shd.make_mesh(jax.devices())
graphdef, params, other = split_model(cfg)
rep = NamedSharding(mesh, P())
state = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=rep), (params, other))
images = jax.ShapeDtypeStruct((8, 64, 64, 3), jnp.float32, sharding=NamedSharding(mesh, P(shd.DATA_AXIS)))
flip = tuple(int(j) for j in get_keypoint_set("coco").flip_index)
hlo = jitted(graphdef, flip, rep).lower(state, images).compile().as_text()
print(sorted(op for op in ("all-to-all", "collective-permute", "all-gather") if op in hlo))
"""


def test_flip_test_on_a_sharded_batch_moves_no_data_between_devices():
    """The eval forward over 4 devices: each crop's mirror image stays on its device (interleaved pairs);
    appending the mirrored half instead compiled to all-to-all and collective-permute exchanges."""
    env = child_env(devices=4)
    out = subprocess.run([sys.executable, "-c", SHARDED_FLIP_SCRIPT], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split("\n")[-2] == "['all-gather']"  # the replicated output only


# ----------------------------------------------------------------------------- rescoring, NMS


def test_rescore_mean_of_confident_joints_times_box_score():
    maxvals = np.array([[0.9, 0.5, 0.1, 0.2], [0.1, 0.0, 0.15, 0.2]])
    got = rescore(np.array([0.8, 1.0]), maxvals, in_vis_thre=0.2)
    np.testing.assert_allclose(got, [0.8 * (0.9 + 0.5) / 2, 0.0], rtol=1e-6)


def test_oks_matrix_formula():
    sig = np.array([0.1, 0.05])
    a = np.array([[[0.0, 0.0], [10.0, 10.0]]])
    b = np.array([[[3.0, 4.0], [10.0, 10.0]]])
    area_a, area_b = np.array([100.0]), np.array([300.0])
    s2 = (2 * sig) ** 2 * 200.0  # variance x mean area
    want = (np.exp(-25.0 / s2[0] / 2) + 1.0) / 2
    np.testing.assert_allclose(oks_matrix(a, b, area_a, area_b, sig), [[want]], rtol=1e-9)


def test_oks_nms_hand_example():
    sig = COCO_SIGMAS
    rng = np.random.default_rng(0)
    base = rng.uniform(100, 300, (17, 2))
    kpts = np.stack(
        [
            base,  # 0: best score
            base + 0.5,  # 1: near-duplicate of 0 -> removed
            base + 150.0,  # 2: another person -> kept
            base + 150.0 + 0.3,  # 3: duplicate of 2, better score than 2 -> 2 removed
            base + 20.0,  # 4: same area, 20 px away: OKS well below 0.9 -> kept
        ]
    )
    scores = np.array([0.9, 0.8, 0.5, 0.6, 0.4])
    areas = np.full(5, 200.0 * 200.0)
    oks = oks_matrix(kpts, kpts, areas, areas, sig)
    assert oks[0, 1] > 0.9 and oks[2, 3] > 0.9 and oks[0, 4] < 0.9 and oks[0, 2] < 0.01
    np.testing.assert_array_equal(oks_nms(kpts, scores, areas, sig, 0.9), [0, 3, 4])
    np.testing.assert_array_equal(oks_nms(kpts, scores, areas, sig, 1.0), [0, 1, 3, 2, 4])
    assert oks_nms(kpts[:0], scores[:0], areas[:0], sig).shape == (0,)


def test_build_results_format_and_nms_per_image():
    kp = np.zeros((3, 17, 2))
    kp[:, :, 0] = np.arange(17) * 5.0 + 100
    kp[:, :, 1] = 200.0
    maxvals = np.full((3, 17), 0.5)
    maxvals[1] = 0.4
    scales = np.ones((3, 2))
    # Persons 0 and 1 are identical but in different images: both kept; person 2 duplicates 0.
    res = build_results(np.array([7, 8, 7]), kp, maxvals, np.array([1.0, 1.0, 0.5]), scales, COCO_SIGMAS)
    assert [r["image_id"] for r in res] == [7, 8]
    r = res[0]
    assert r["category_id"] == 1 and len(r["keypoints"]) == 51
    assert r["keypoints"][:3] == [100.0, 200.0, 0.5]
    assert r["score"] == pytest.approx(0.5)
    assert res[1]["score"] == pytest.approx(0.4)
    no_nms = build_results(np.array([7, 8, 7]), kp, maxvals, np.ones(3), scales, COCO_SIGMAS, oks_nms_thre=None)
    assert len(no_nms) == 3
    json.dumps(res)  # plain Python types


# ----------------------------------------------------------------------------- COCO eval


def _write_gt(root, num_joints, num_images=3, people=2, seed=0):
    """A tiny COCO keypoint GT file; some joints unlabelled (v=0). Returns (path, anns)."""
    rng = np.random.default_rng(seed)
    images, anns = [], []
    for i in range(num_images):
        images.append({"id": 100 + i, "file_name": f"{100 + i:012d}.jpg", "width": 640, "height": 480})
        for p in range(people):
            w, h = rng.uniform(120, 180), rng.uniform(200, 260)
            x, y = 20 + p * 300 + rng.uniform(0, 40), rng.uniform(10, 200)
            kp = np.zeros((num_joints, 3))
            kp[:, 0] = rng.uniform(x + 5, x + w - 5, num_joints)
            kp[:, 1] = rng.uniform(y + 5, y + h - 5, num_joints)
            kp[:, 2] = rng.choice([1, 2], num_joints)
            kp[rng.choice(num_joints, 2, replace=False)] = 0  # unlabelled
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": 100 + i,
                    "category_id": 1,
                    "iscrowd": 0,
                    "bbox": [x, y, w, h],
                    "area": w * h * 0.7,
                    "num_keypoints": int((kp[:, 2] > 0).sum()),
                    "keypoints": [float(v) for v in kp.reshape(-1)],
                }
            )
    gt = {
        "images": images,
        "annotations": anns,
        "categories": [
            {
                "id": 1,
                "name": "person",
                "supercategory": "person",
                "keypoints": [f"k{j}" for j in range(num_joints)],
                "skeleton": [],
            }
        ],
    }
    path = os.path.join(root, "annotations", "person_keypoints_val2017.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(gt, f)
    return path, anns


def _perfect_results(anns, noise=0.0, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for a in anns:
        kp = np.asarray(a["keypoints"], np.float64).reshape(-1, 3).copy()
        kp[:, :2] += rng.normal(0, noise, kp[:, :2].shape) if noise else 0.0
        kp[:, 2] = 0.9
        out.append({"image_id": a["image_id"], "category_id": 1, "keypoints": kp.reshape(-1).tolist(), "score": 0.9})
    return out


def test_coco_eval_infant_sigmas_21_joints(tmp_path):
    kset = get_keypoint_set("infant")
    assert kset.num_joints == 21
    ann_file, anns = _write_gt(str(tmp_path), 21)
    stats, summary = coco_keypoint_eval(_perfect_results(anns), ann_file, kset.sigmas)
    assert tuple(stats) == STAT_NAMES
    assert stats["AP"] == pytest.approx(1.0) and stats["AR"] == pytest.approx(1.0)
    assert "Average Precision" in summary
    # Errors of a few pixels cost AP with the tight infant sigmas (0.05) ...
    noisy, _ = coco_keypoint_eval(_perfect_results(anns, noise=6.0), ann_file, kset.sigmas)
    assert noisy["AP"] < 0.9
    # ... and less with sigmas 4x larger: the sigmas are really used.
    loose, _ = coco_keypoint_eval(_perfect_results(anns, noise=6.0), ann_file, kset.sigmas * 4)
    assert loose["AP"] > noisy["AP"]
    with pytest.raises(ValueError, match="sigmas"):
        coco_keypoint_eval(_perfect_results(anns), ann_file, COCO_SIGMAS)


def test_coco_eval_empty_results_warn_and_zero(tmp_path, caplog):
    ann_file, _ = _write_gt(str(tmp_path), 17)
    with caplog.at_level("WARNING"):
        stats, _ = coco_keypoint_eval([], ann_file, COCO_SIGMAS)
    assert all(v == 0.0 for v in stats.values()) and tuple(stats) == STAT_NAMES
    assert "no predictions" in caplog.text


def test_coco_eval_missing_annotation_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        coco_keypoint_eval([{"image_id": 1}], str(tmp_path / "nope.json"), COCO_SIGMAS)


# ----------------------------------------------------------------------------- end to end


class PerfectModel:
    """predict_fn returning GT heatmaps. Each crop carries its person index in channel 0 and a
    marker in the left column of channel 1 (in the right column once mirrored)."""

    def __init__(self, heatmaps, flip_index):
        self.heatmaps = heatmaps
        self.flip_index = flip_index
        self.calls = 0

    def __call__(self, images):
        self.calls += 1
        idx = np.rint(images[:, 0, 1, 0]).astype(int)
        mirrored = images[:, 0, -1, 1] > 0.5
        out = self.heatmaps[idx].copy()
        if mirrored.any():
            out[mirrored] = flip_heatmaps(out[mirrored], self.flip_index)
        return out


def _crop_loader(anns, num_joints, batch_size=4, image_hw=(6, 5)):
    """Eval batches as the pipeline makes them (GT boxes), with padding rows at the end."""
    centers, scales, heatmaps = [], [], []
    for a in anns:
        c, s = geometry.box_to_center_scale(a["bbox"], IMAGE_HW[1] / IMAGE_HW[0])
        trans = geometry.get_affine_transform(c, s, 0.0, HEATMAP_HW[::-1])
        kp = np.asarray(a["keypoints"]).reshape(num_joints, 3)
        hm, _ = encode_targets(geometry.affine_points(kp[:, :2], trans), kp[:, 2], HEATMAP_HW, 2.0)
        centers.append(c), scales.append(s), heatmaps.append(hm)
    n = len(anns)
    batches = []
    for start in range(0, n, batch_size):
        rows = list(range(start, min(start + batch_size, n)))
        pad = batch_size - len(rows)
        idx = rows + [rows[-1]] * pad
        images = np.zeros((batch_size,) + image_hw + (3,), np.float32)
        images[..., 0] = np.array(idx, np.float32)[:, None, None]
        images[:, :, 0, 1] = 1.0
        batches.append(
            {
                "image": images,
                "image_id": np.array([anns[i]["image_id"] for i in idx], np.int64),
                "center": np.stack([centers[i] for i in idx]),
                "scale": np.stack([scales[i] for i in idx]),
                "score": np.ones(batch_size, np.float32),
                "area": np.ones(batch_size, np.float32),
                "valid": np.array([True] * len(rows) + [False] * pad),
            }
        )
    return batches, np.stack(heatmaps)


@pytest.mark.parametrize("decode", ["dark", "argmax"])
def test_evaluate_perfect_heatmaps(tmp_path, decode):
    kset = get_keypoint_set("coco")
    ann_file, anns = _write_gt(str(tmp_path), 17, num_images=3, people=2)
    batches, heatmaps = _crop_loader(anns, 17, batch_size=4)
    model = PerfectModel(heatmaps, kset.flip_index)
    out_dir = str(tmp_path / "eval")
    stats = evaluate(
        with_flip_test(model, kset.flip_index),
        batches,
        keypoint_set=kset,
        ann_file=ann_file,
        out_dir=out_dir,
        decode=decode,
        image_size=(6, 5),
        heatmap_size=HEATMAP_HW,
        draw_images=0,
    )
    assert model.calls == len(batches)  # flip test: plain and mirrored crops in one call per batch
    with open(os.path.join(out_dir, "keypoints_results.json")) as f:
        results = json.load(f)
    assert len(results) == len(anns) and stats["num_people"] == len(anns)
    with open(os.path.join(out_dir, "stats.json")) as f:
        assert json.load(f)["AP"] == stats["AP"]
    # Errors in image pixels of the labelled joints.
    gt = {a["id"]: np.asarray(a["keypoints"]).reshape(17, 3) for a in anns}
    errs = []
    for r, a in zip(results, anns):  # one result per GT person, in loader order
        kp = np.asarray(r["keypoints"]).reshape(17, 3)
        lab = gt[a["id"]][:, 2] > 0
        errs.append(np.linalg.norm(kp[lab, :2] - gt[a["id"]][lab, :2], axis=1))
        assert np.all(kp[lab, 2] > 0.9)  # peak pixel of a sub-pixel Gaussian
    err = np.concatenate(errs)
    # Image pixels per heatmap pixel (isotropic zoom; 'aggpose' convention: (w - 1) intervals).
    px_per_hm = max(float(b["scale"][:, 0].max()) * 200 / (HEATMAP_HW[1] - 1) for b in batches)
    if decode == "dark":
        assert stats["AP"] == pytest.approx(1.0) and stats["AR"] == pytest.approx(1.0)
        assert err.max() < 0.05 * px_per_hm
    else:
        # Integer heatmap pixels: errors up to half a heatmap pixel per axis, AP still high.
        assert err.max() <= 0.5 * np.sqrt(2) * px_per_hm + 1e-3
        assert err.mean() > 0.1 * px_per_hm
        assert stats["AP50"] == pytest.approx(1.0) and stats["AP"] > 0.9


def test_evaluate_without_flip_and_with_empty_loader(tmp_path):
    kset = get_keypoint_set("coco")
    ann_file, anns = _write_gt(str(tmp_path), 17, num_images=2, people=1)
    batches, heatmaps = _crop_loader(anns, 17, batch_size=4)
    model = PerfectModel(heatmaps, kset.flip_index)
    stats = evaluate(
        model,
        batches,
        keypoint_set=kset,
        ann_file=ann_file,
        out_dir=str(tmp_path / "a"),
        draw_images=0,
    )
    assert model.calls == len(batches) and stats["AP"] == pytest.approx(1.0)
    empty = evaluate(model, [], keypoint_set=kset, ann_file=ann_file, out_dir=str(tmp_path / "b"), draw_images=0)
    assert empty["AP"] == 0.0 and empty["num_people"] == 0


def test_evaluate_infant_21_joints_flip_and_no_nms(tmp_path):
    kset = get_keypoint_set("infant")
    ann_file, anns = _write_gt(str(tmp_path), 21, num_images=2, people=2, seed=3)
    batches, heatmaps = _crop_loader(anns, 21, batch_size=3)
    model = PerfectModel(heatmaps, kset.flip_index)
    stats = evaluate(
        with_flip_test(model, kset.flip_index),
        batches,
        keypoint_set=kset,
        ann_file=ann_file,
        out_dir=str(tmp_path / "e"),
        oks_nms_thre=None,
        draw_images=0,
    )
    assert stats["AP"] == pytest.approx(1.0) and stats["num_people"] == len(anns)
    # A model that forgets to swap left/right on the mirrored crop is caught by the flip test:
    # the averaged maps are bimodal, the peaks land between or on the wrong side.
    wrong = PerfectModel(heatmaps, np.arange(21))
    bad = evaluate(
        with_flip_test(wrong, kset.flip_index),
        batches,
        keypoint_set=kset,
        ann_file=ann_file,
        out_dir=str(tmp_path / "w"),
        oks_nms_thre=None,
        draw_images=0,
    )
    assert bad["AP"] < 0.5


def test_evaluate_rejects_wrong_heatmap_size(tmp_path):
    kset = get_keypoint_set("coco")
    ann_file, anns = _write_gt(str(tmp_path), 17, num_images=1, people=1)
    batches, heatmaps = _crop_loader(anns, 17)
    with pytest.raises(ValueError, match="heatmap_size"):
        evaluate(
            PerfectModel(heatmaps, kset.flip_index),
            batches,
            keypoint_set=kset,
            ann_file=ann_file,
            out_dir=str(tmp_path),
            heatmap_size=(32, 24),
            draw_images=0,
        )


def test_draw_predictions_png(tmp_path):
    kset = get_keypoint_set("coco")
    ann_file, anns = _write_gt(str(tmp_path), 17, num_images=2, people=2)
    img_dir = tmp_path / "val2017"
    img_dir.mkdir()
    for i in (100, 101):
        cv2.imwrite(str(img_dir / f"{i:012d}.jpg"), np.full((480, 640, 3), 60, np.uint8))
    # Via evaluate: draws into out_dir/predictions.png from ROOT/val2017.
    batches, heatmaps = _crop_loader(anns, 17)
    evaluate(
        with_flip_test(PerfectModel(heatmaps, kset.flip_index), kset.flip_index),
        batches,
        keypoint_set=kset,
        ann_file=ann_file,
        out_dir=str(tmp_path / "eval"),
        draw_images=2,
    )
    png = cv2.imread(str(tmp_path / "eval" / "predictions.png"))
    assert png is not None and png.shape[0] == 320 + LEGEND_HEIGHT and png.shape[1] >= 2 * 320  # + legend band
    assert (png != 60).any(axis=-1).mean() > 0.01  # skeletons were drawn
    # From arrays directly.
    res = _perfect_results(anns)
    out = draw_predictions([(100, np.zeros((480, 640, 3), np.uint8))], res, kset, str(tmp_path / "p.png"))
    drawn = cv2.imread(out)
    assert drawn.shape == (320 + LEGEND_HEIGHT, 427, 3) and drawn.any()


def test_evaluate_synthetic_val_through_pipeline(synthetic_coco_root, tmp_path):
    """GT heatmaps rendered through the eval pipeline's own crops decode back to AP 1.0."""
    import hashlib

    import ml_collections

    from aggpose_jax.data import pipeline as P

    root = str(synthetic_coco_root)
    ann_file = os.path.join(root, "annotations", "person_keypoints_val2017.json")
    cfg = ml_collections.ConfigDict(
        {
            "root": root,
            "source": "coco_json",
            "keypoints": "coco",
            "image_size": IMAGE_HW,
            "heatmap_size": HEATMAP_HW,
            "sigma": 2.0,
            "use_gt_bbox": True,
            "num_workers": 0,
        }
    )
    kset = get_keypoint_set("coco")
    source = P.make_source(cfg, "val")
    records = [source[i] for i in range(len(source))]
    loader = P.make_loader(
        source, keypoint_set=kset, data_config=cfg, train=False, batch_size=8, shard_index=0, shard_count=1
    )
    batches = list(loader)

    # Heatmaps a perfect model would give for each crop (keyed by the crop's bytes), from the GT
    # joints of the record whose box gives the crop's centre.
    table = {}
    for b in batches:
        for i in np.nonzero(b["valid"])[0]:
            cand = [
                r
                for r in records
                if int(r["image_id"]) == int(b["image_id"][i])
                and np.allclose(
                    geometry.box_to_center_scale(r["bbox"], IMAGE_HW[1] / IMAGE_HW[0])[0], b["center"][i], atol=1e-3
                )
            ]
            assert cand, "eval row without its record"
            kp = cand[0]["keypoints"]
            trans = geometry.get_affine_transform(b["center"][i], b["scale"][i], 0.0, HEATMAP_HW[::-1])
            hm, _ = encode_targets(geometry.affine_points(kp[:, :2], trans), kp[:, 2], HEATMAP_HW)
            img = np.asarray(b["image"][i], np.float32)
            table[hashlib.sha1(img.tobytes()).hexdigest()] = hm
            table[hashlib.sha1(img[:, ::-1].copy().tobytes()).hexdigest()] = flip_heatmaps(hm[None], kset.flip_index)[0]

    blank = np.zeros(HEATMAP_HW + (kset.num_joints,), np.float32)  # padding rows

    def predict(images):
        return np.stack([table.get(hashlib.sha1(np.ascontiguousarray(x).tobytes()).hexdigest(), blank) for x in images])

    stats = {}
    for decode in ("dark", "argmax"):
        stats[decode] = evaluate(
            with_flip_test(predict, kset.flip_index),
            batches,
            keypoint_set=kset,
            ann_file=ann_file,
            out_dir=str(tmp_path / decode),
            decode=decode,
            image_size=IMAGE_HW,
            heatmap_size=HEATMAP_HW,
            draw_images=2,
        )
    n_valid = sum(int(np.asarray(b["valid"]).sum()) for b in batches)
    assert stats["dark"]["num_people"] == n_valid == len(records)
    assert stats["dark"]["AP"] == pytest.approx(1.0) and stats["dark"]["AR"] == pytest.approx(1.0)
    assert stats["argmax"]["AP50"] == pytest.approx(1.0) and stats["argmax"]["AP"] > 0.9
    assert os.path.isfile(tmp_path / "dark" / "predictions.png")
