"""Per-sample transforms against the release's recipe, computed independently."""

import logging
import os

import cv2
import numpy as np
import pytest

from aggpose_jax.data import transforms as T
from aggpose_jax.pose.keypoints import get_keypoint_set

COCO_PAIRS = [(1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16)]
NO_AUG = T.AugmentConfig(
    scale_factor=0.0, rotation_factor=0.0, rotation_prob=0.0, flip=False, half_body_prob=0.0, color_jitter_prob=0.0
)


@pytest.fixture(scope="module")
def coco():
    return get_keypoint_set("coco")


def smooth_image(h=90, w=120, seed=1):
    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (0, 0), 2)


def bilinear_zero_border(img, xs, ys):
    """Plain bilinear sampling with a zero border, in float64."""
    img = img.astype(np.float64)
    h, w = img.shape[:2]
    x0, y0 = np.floor(xs).astype(int), np.floor(ys).astype(int)
    fx, fy = (xs - x0)[..., None], (ys - y0)[..., None]

    def px(yy, xx):
        ok = (xx >= 0) & (xx < w) & (yy >= 0) & (yy < h)
        return np.where(ok[..., None], img[np.clip(yy, 0, h - 1), np.clip(xx, 0, w - 1)], 0.0)

    return (
        px(y0, x0) * (1 - fx) * (1 - fy)
        + px(y0, x0 + 1) * fx * (1 - fy)
        + px(y0 + 1, x0) * (1 - fx) * fy
        + px(y0 + 1, x0 + 1) * fx * fy
    )


def independent_affine(center, scale_w, rot_deg, out_w, out_h):
    """AggPose convention: crop centre ((w-1)/2, (h-1)/2), zoom (w-1)/(src_w-1), rotation -rot."""
    zoom = (out_w - 1) / (scale_w * 200.0 - 1)
    th = np.deg2rad(rot_deg)
    lin = zoom * np.array([[np.cos(th), np.sin(th)], [-np.sin(th), np.cos(th)]])
    t = np.array([(out_w - 1) / 2, (out_h - 1) / 2]) - lin @ np.asarray(center, np.float64)
    return lin, t


# ----------------------------------------------------------------------------- decoding


def test_decode_gives_rgb_and_none_on_bad_bytes():
    bgr = smooth_image(20, 30)
    ok, png = cv2.imencode(".png", bgr)
    rgb = T.decode_image(png.tobytes())
    np.testing.assert_array_equal(rgb, bgr[..., ::-1])
    assert T.decode_image(b"") is None
    assert T.decode_image(b"\xff\xd8 definitely not a jpeg") is None


def test_decode_transform_skips_counts_and_logs_once(tmp_path, caplog):
    dec = T.DecodeImage(report_dir=str(tmp_path))
    name = f"missing_{os.getpid()}_{id(tmp_path)}.jpg"
    with caplog.at_level(logging.WARNING, logger="aggpose_jax.data.transforms"):
        outs = [dec.map({"image_file": name, "image_bytes": b""}) for _ in range(3)]
        bad = dec.map({"image_file": name + "x", "image_bytes": b"garbage"})
    assert all(not T.DropUndecodable().filter(o) for o in outs + [bad])
    msgs = [r.getMessage() for r in caplog.records]
    assert sum(f"{name}: missing" in m for m in msgs) == 1  # three skips, one warning
    assert sum(f"{name}x: corrupt" in m for m in msgs) == 1
    lines = open(tmp_path / f"{os.getpid()}.jsonl").read().splitlines()
    assert len(lines) == 4 and sum(name + '"' in line for line in lines) == 3  # every skip is reported
    ok, jpg = cv2.imencode(".jpg", smooth_image(10, 10))
    good = dec.map({"image_file": "ok.jpg", "image_bytes": jpg.tobytes()})
    assert T.DropUndecodable().filter(good) and good["image"].shape == (10, 10, 3)
    assert "image_bytes" not in good


# ----------------------------------------------------------------------------- crop + joints


@pytest.mark.parametrize("flip", [False, True])
def test_crop_and_joints_match_independent_affine(coco, flip):
    img = smooth_image()
    c, s, rot = np.array([60.3, 41.7], np.float32), np.array([0.45, 0.6], np.float32), 30.0
    rng = np.random.default_rng(3)
    joints = rng.uniform(30, 90, (17, 2)).astype(np.float32)
    vis = np.ones(17, np.float32)
    out = T.make_train_sample(
        img,
        joints,
        vis,
        T.TrainParams(c, s, rot, flip, None),
        coco.flip_index,
        (64, 48),
        (16, 12),
        2.0,
        return_uint8=True,
    )
    src, cc, jj = img, c.astype(np.float64), joints.astype(np.float64)
    if flip:  # mirror the image, the centre and the joints; swap the pairs
        src, cc = img[:, ::-1], np.array([img.shape[1] - 1 - c[0], c[1]])
        jj = np.stack([img.shape[1] - 1 - jj[:, 0], jj[:, 1]], axis=1)
        for a, b in COCO_PAIRS:
            jj[[a, b]] = jj[[b, a]]
    lin, t = independent_affine(cc, s[0], rot, 48, 64)
    yy, xx = np.mgrid[0:64, 0:48]
    back = (np.stack([xx, yy], -1) - t) @ np.linalg.inv(lin).T
    ref = bilinear_zero_border(src, back[..., 0], back[..., 1])
    assert np.abs(out["crop"] - ref).max() <= 1.0  # OpenCV samples at 1/32 px, rounds to uint8
    lin_hm, t_hm = independent_affine(cc, s[0], rot, 12, 16)
    np.testing.assert_allclose(out["joints_hm"], jj @ lin_hm.T + t_hm, atol=1e-3)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(out["image"], (out["crop"] / 255.0 - mean) / std, atol=1e-5)
    assert out["image"].dtype == np.float32 and out["image"].shape == (64, 48, 3)


def test_flip_mirrors_crop_and_swaps_targets(coco):
    assert sorted(tuple(sorted(p)) for p in coco.flip_pairs) == COCO_PAIRS
    expected = np.arange(17)
    for a, b in COCO_PAIRS:
        expected[a], expected[b] = b, a
    np.testing.assert_array_equal(coco.flip_index, expected)
    img = smooth_image()
    c, s = np.array([60.3, 41.7], np.float32), np.array([0.45, 0.6], np.float32)
    joints = np.random.default_rng(4).uniform(35, 85, (17, 2)).astype(np.float32)
    vis = np.ones(17, np.float32)
    vis[5] = 0
    a = T.make_train_sample(
        img,
        joints,
        vis,
        T.TrainParams(c, s, 0.0, False, None),
        coco.flip_index,
        (64, 48),
        (64, 48),
        2.0,
        return_uint8=True,
    )
    b = T.make_train_sample(
        img,
        joints,
        vis,
        T.TrainParams(c, s, 0.0, True, None),
        coco.flip_index,
        (64, 48),
        (64, 48),
        2.0,
        return_uint8=True,
    )
    # rotation 0: the flipped sample is the mirror image with left/right joints exchanged
    np.testing.assert_array_equal(b["crop"], a["crop"][:, ::-1])
    np.testing.assert_allclose(b["target"], a["target"][:, ::-1, expected], atol=1e-6)
    np.testing.assert_array_equal(b["target_weight"], a["target_weight"][expected])
    assert b["target_weight"][6] == 0 and b["target_weight"][5] == 1  # the invisible 5 moved to 6


# ----------------------------------------------------------------------------- targets


def test_targets_peak_values_and_weights(coco):
    img = np.zeros((300, 300, 3), np.uint8)
    c, s = np.array([150.0, 150.0], np.float32), np.array([0.75, 1.0], np.float32)
    joints = np.full((17, 2), 150.0, np.float32)
    joints[0] = [120.3, 95.6]  # inside
    joints[1] = [150.0, 150.0]  # the box centre
    joints[2] = [-400.0, 150.0]  # far left of the crop
    joints[3] = [150.0, 900.0]  # far below
    vis = np.ones(17, np.float32)
    vis[4] = 0  # inside but not labelled
    out = T.make_train_sample(
        img,
        joints,
        vis,
        T.TrainParams(c, s, 0.0, False, None),
        coco.flip_index,
        (256, 192),
        (64, 48),
        2.0,
        return_uint8=True,
    )
    zoom = 47 / (0.75 * 200 - 1)  # heatmap pixels per image pixel (AggPose convention)
    mu = (joints.astype(np.float64) - [150, 150]) * zoom + [23.5, 31.5]
    np.testing.assert_allclose(out["joints_hm"][:2], mu[:2], atol=1e-3)
    np.testing.assert_allclose(mu[1], [23.5, 31.5])
    target, weight = out["target"], out["target_weight"]
    assert target.shape == (64, 48, 17) and weight.shape == (17,)
    for x, y in [(18, 13), (19, 14), (17, 12), (22, 16), (15, 10)]:
        expect = np.exp(-((x - mu[0, 0]) ** 2 + (y - mu[0, 1]) ** 2) / (2 * 2.0**2))
        np.testing.assert_allclose(target[y, x, 0], expect, rtol=1e-4, atol=1e-7)
    # the sub-pixel centre (23.5, 31.5) is shared by four pixels, each at squared distance 0.5
    np.testing.assert_allclose(target[31:33, 23:25, 1], np.exp(-0.5 / (2 * 2.0**2)), rtol=1e-5)
    assert weight[0] == 1 and weight[1] == 1
    assert weight[2] == 0 and weight[3] == 0 and weight[4] == 0
    assert not target[..., 2].any() and not target[..., 3].any() and not target[..., 4].any()


# ----------------------------------------------------------------------------- half body


def test_half_body_choice_rule():
    joints = np.array([[i * 10.0, i * 5.0] for i in range(17)], np.float32)
    vis = np.ones(17, np.float32)
    upper = range(11)
    c, s = T.half_body_center_scale(joints, vis, upper, 0.75, upper_draw=0.49)
    np.testing.assert_allclose(c, joints[:11].mean(axis=0), rtol=1e-6)
    w, h = 100.0 + 1, 50.0 + 1  # extent of joints 0..10, plus one; too wide -> h = w / 0.75
    np.testing.assert_allclose(s, [w / 200 * 1.5, w / 0.75 / 200 * 1.5], rtol=1e-5)
    assert h < w / 0.75
    c, _ = T.half_body_center_scale(joints, vis, upper, 0.75, upper_draw=0.5)  # not < 0.5: lower
    np.testing.assert_allclose(c, joints[11:].mean(axis=0), rtol=1e-6)
    few_upper = vis.copy()
    few_upper[2:11] = 0  # two upper joints visible: lower is used even with a low draw
    c, _ = T.half_body_center_scale(joints, few_upper, upper, 0.75, upper_draw=-3.0)
    np.testing.assert_allclose(c, joints[11:].mean(axis=0), rtol=1e-6)
    only_one = np.zeros(17, np.float32)
    only_one[0] = 1
    assert T.half_body_center_scale(joints, only_one, upper, 0.75, upper_draw=0.0) is None


def test_half_body_threshold_and_upper_probability(coco):
    assert coco.half_body_min_joints == 8
    joints = np.array([[100 + i * 7.0, 50 + i * 11.0] for i in range(17)], np.float32)
    box_c, box_s = np.array([150.0, 150.0], np.float32), np.array([1.0, 1.3], np.float32)
    aug = T.AugmentConfig(**{**NO_AUG.__dict__, "half_body_prob": 1.0})
    vis8 = np.zeros(17, np.float32)
    vis8[:8] = 1  # 8 visible: not more than 8 -> never
    rng = np.random.default_rng(0)
    for _ in range(20):
        p = T.sample_train_params(rng, box_c, box_s, joints, vis8, coco, aug, 0.75)
        np.testing.assert_array_equal(p.center, box_c)
        np.testing.assert_array_equal(p.scale, box_s)
    vis = np.ones(17, np.float32)
    upper_c = joints[:11].mean(axis=0)
    n, n_upper = 3000, 0
    for _ in range(n):
        p = T.sample_train_params(rng, box_c, box_s, joints, vis, coco, aug, 0.75)
        assert not np.allclose(p.center, box_c)
        n_upper += bool(np.allclose(p.center, upper_c))
    # the release draws a standard normal and takes the upper body when it is < 0.5
    assert abs(n_upper / n - 0.6915) < 0.03


def test_random_choices_follow_the_recipe(coco):
    rng = np.random.default_rng(1)
    joints, vis = np.zeros((17, 2), np.float32), np.zeros(17, np.float32)
    c, s = np.array([50.0, 50.0], np.float32), np.array([1.0, 4 / 3], np.float32)
    draws = [T.sample_train_params(rng, c, s, joints, vis, coco, T.AugmentConfig(), 0.75) for _ in range(4000)]
    mult = np.array([p.scale[0] / s[0] for p in draws])
    rot = np.array([p.rotation for p in draws])
    assert mult.min() >= 0.65 - 1e-6 and mult.max() <= 1.35 + 1e-6
    at_bounds = np.mean(np.isclose(mult, 0.65) | np.isclose(mult, 1.35))
    assert abs(at_bounds - 0.3173) < 0.03  # P(|N(0,1)| > 1)
    assert abs(np.mean(rot != 0) - 0.6) < 0.03 and np.abs(rot).max() <= 90.0
    assert abs(np.mean(np.abs(rot[rot != 0]) == 90.0) - 0.0455) < 0.015  # P(|N| > 2)
    assert abs(np.mean([p.flip for p in draws]) - 0.5) < 0.03
    jit = [p.jitter for p in draws if p.jitter]
    assert abs(len(jit) / len(draws) - 0.5) < 0.03
    assert all(sorted(n for n, _ in j) == ["brightness", "contrast", "hue", "saturation"] for j in jit)
    assert len({tuple(n for n, _ in j) for j in jit}) == 24  # every order occurs
    f = {n: np.array([dict(j)[n] for j in jit]) for n in ("brightness", "contrast", "saturation", "hue")}
    for n in ("brightness", "contrast", "saturation"):
        assert f[n].min() >= 0.7 and f[n].max() <= 1.3 and abs(f[n].mean() - 1) < 0.02
    assert f["hue"].min() >= -0.1 and f["hue"].max() <= 0.1


# ----------------------------------------------------------------------------- colour jitter


def test_colour_adjustments():
    img = smooth_image(30, 40)
    for f in (0.7, 1.3):
        ref = np.clip(img.astype(np.float64) * f, 0, 255).astype(np.uint8)  # truncating, as the release
        np.testing.assert_array_equal(T.adjust_brightness(img, f), ref)
        pivot = 100
        ref = np.clip((img.astype(np.float64) - pivot) * f + pivot, 0, 255).astype(np.uint8)
        np.testing.assert_array_equal(T.adjust_contrast(img, f, pivot), ref)
    grey = img.astype(np.float64) @ [0.299, 0.587, 0.114]
    assert T.grey_mean(img) == round(grey.mean()) or abs(T.grey_mean(img) - grey.mean()) < 0.6
    desat = T.adjust_saturation(img, 0.0).astype(int)
    assert np.abs(desat[..., 0] - grey).max() <= 1 and (desat[..., 0] == desat[..., 2]).all()
    np.testing.assert_array_equal(T.adjust_saturation(img, 1.0), img)
    red = np.zeros((2, 2, 3), np.uint8)
    red[..., 0] = 255
    # the shift is int(h * 255) / 256 of a turn (8-bit hue): 0.5 -> 127/256, 1/3 -> 85/256
    assert np.abs(T.adjust_hue(red, 0.5)[0, 0].astype(int) - [0, 255, 255]).max() <= 4  # cyan
    assert np.abs(T.adjust_hue(red, 1 / 3)[0, 0].astype(int) - [0, 255, 0]).max() <= 4  # green
    np.testing.assert_array_equal(T.adjust_hue(red, 0.0), red)


def test_jitter_on_window_equals_full_image_jitter():
    rng = np.random.default_rng(2)
    img = cv2.resize(smooth_image(60, 80, seed=5), (320, 240))
    from aggpose_jax.pose import geometry as G

    differing, total = 0, 0
    for _ in range(20):
        c = rng.uniform([0, 0], [320, 240]).astype(np.float32)
        s = rng.uniform(0.3, 2.0, 2).astype(np.float32)
        m = G.get_affine_transform(c, s, rng.uniform(-90, 90), (48, 64))
        ops = T.sample_color_jitter(rng, T.AugmentConfig())
        full = T.color_jitter(img, ops)  # contrast pivot from the whole image
        got = T._jitter_and_crop(img, ops, m, (64, 48))
        d = np.abs(T.warp_crop(full, m, (64, 48)).astype(int) - got.astype(int))
        assert d.max() <= 1
        differing += int((d > 0).sum())
        total += d.size
    assert differing / total < 1e-3


# ----------------------------------------------------------------------------- Grain transforms


def record(img_rgb, bbox=(20, 10, 60, 80)):
    kps = np.zeros((17, 3), np.float32)
    kps[:, 0] = np.linspace(25, 75, 17)
    kps[:, 1] = np.linspace(15, 85, 17)
    kps[:, 2] = 2
    return {
        "image_id": np.int64(7),
        "image_file": "a.jpg",
        "image": img_rgb,
        "bbox": np.array(bbox, np.float32),
        "keypoints": kps,
        "score": np.float32(0.9),
        "area": np.float32(1234.0),
    }


def test_train_transform_is_reproducible_per_rng(coco):
    tr = T.TrainTransform(coco, (64, 48), (16, 12), 2.0)
    rec = record(smooth_image())
    run = lambda seed: tr.random_map(dict(rec), np.random.default_rng(seed))  # noqa: E731
    a, b, other = run(5), run(5), run(6)
    for k in ("image", "target", "target_weight"):
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["image"], other["image"])
    assert set(a) == {"image", "target", "target_weight"}


def test_eval_transform_crop_and_fields(coco):
    from aggpose_jax.pose import geometry as G

    img = smooth_image()
    ev = T.EvalTransform((64, 48))
    out = ev.map(record(img))
    c, s = G.box_to_center_scale([20, 10, 60, 80], 48 / 64)
    np.testing.assert_array_equal(out["center"], c)
    np.testing.assert_array_equal(out["scale"], s)
    lin, t = independent_affine(c, s[0], 0.0, 48, 64)
    yy, xx = np.mgrid[0:64, 0:48]
    back = (np.stack([xx, yy], -1) - t) @ np.linalg.inv(lin).T
    ref = (bilinear_zero_border(img, back[..., 0], back[..., 1]) / 255 - [0.485, 0.456, 0.406]) / np.array(
        [0.229, 0.224, 0.225]
    )
    assert np.abs(out["image"] - ref).max() < 1.0 / 255 / 0.224 + 1e-5
    assert out["image_id"] == 7 and out["score"] == np.float32(0.9) and out["area"] == 1234
    assert out["valid"]
