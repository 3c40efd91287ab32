"""Synthetic stick-figure dataset: determinism, COCO validity, visibility labels, drawn joints."""

import contextlib
import hashlib
import io
import json
import os

import cv2
import numpy as np
import pytest

from aggpose_jax.data import synthetic
from aggpose_jax.pose.keypoints import get_keypoint_set


def tree_hash(root: str) -> dict[str, str]:
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return out


def test_same_seed_same_files_other_seed_differs(tmp_path):
    kw = dict(keypoints="coco", num_images=4, image_size=(120, 160))
    s1 = synthetic.generate_synthetic(str(tmp_path / "a"), seed=3, **kw)
    synthetic.generate_synthetic(str(tmp_path / "b"), seed=3, **kw)
    synthetic.generate_synthetic(str(tmp_path / "c"), seed=4, **kw)
    ha, hb, hc = (tree_hash(str(tmp_path / d)) for d in "abc")
    assert len(ha) == 4 + 3 and ha == hb  # 4 images, 2 annotation files, 1 detection file
    assert ha != hc and set(ha) == set(hc)
    assert s1["splits"]["train"]["images"] == 3 and s1["splits"]["val"]["images"] == 1


@pytest.mark.parametrize("fixture,name", [("synthetic_coco_root", "coco"), ("synthetic_infant_root", "infant")])
def test_annotations_are_valid_coco(request, fixture, name):
    from pycocotools.coco import COCO

    root = request.getfixturevalue(fixture)
    ks = get_keypoint_set(name)
    vis_counts = np.zeros(3, int)
    image_ids = set()
    for split, n_images in (("train", 24), ("val", 8)):
        ann_file = os.path.join(root, "annotations", f"person_keypoints_{split}2017.json")
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(ann_file)
        assert len(coco.getImgIds()) == n_images and not image_ids & set(coco.getImgIds())
        image_ids |= set(coco.getImgIds())
        cat = coco.loadCats(1)[0]
        assert cat["keypoints"] == list(ks.names)
        assert [tuple(e) for e in cat["skeleton"]] == [(a + 1, b + 1) for a, b in ks.skeleton]
        assert len(coco.getAnnIds()) >= n_images  # at least one person per image
        for img in coco.loadImgs(coco.getImgIds()):
            w, h = img["width"], img["height"]
            pixels = cv2.imread(os.path.join(root, f"{split}2017", img["file_name"]))
            assert pixels.shape == (h, w, 3) == (240, 320, 3)
            for ann in coco.loadAnns(coco.getAnnIds(imgIds=img["id"])):
                k = np.asarray(ann["keypoints"], float).reshape(ks.num_joints, 3)
                v = k[:, 2]
                assert set(v.tolist()) <= {0.0, 1.0, 2.0} and ann["num_keypoints"] == int((v > 0).sum()) > 0
                vis_counts += np.bincount(v.astype(int), minlength=3)
                lab = k[v > 0, :2]
                assert (lab >= 0).all() and (lab[:, 0] <= w - 1).all() and (lab[:, 1] <= h - 1).all()
                assert not k[v == 0, :2].any()  # unlabelled joints are x=y=0
                x, y, bw, bh = ann["bbox"]
                assert x >= 0 and y >= 0 and x + bw <= w - 1 + 1e-6 and y + bh <= h - 1 + 1e-6
                assert (lab[:, 0] >= x).all() and (lab[:, 0] <= x + bw).all()
                assert (lab[:, 1] >= y).all() and (lab[:, 1] <= y + bh).all()
                assert 40 <= bh or 40 <= bw  # people are not tiny (box 60-200 px tall at 240x320)
                assert ann["area"] > 0 and ann["iscrowd"] == 0 and ann["category_id"] == 1
    assert vis_counts[0] > 0 and vis_counts[1] > 0 and vis_counts[2] > 0.8 * vis_counts.sum()


def test_detections_file(synthetic_coco_root):
    from pycocotools.coco import COCO

    root = synthetic_coco_root
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(os.path.join(root, "annotations", "person_keypoints_val2017.json"))
        with open(os.path.join(root, "person_detections_val2017.json")) as f:
            dets = json.load(f)
        res = coco.loadRes(dets)  # valid COCO results
    assert len(res.getAnnIds()) == len(dets) >= len(coco.getAnnIds())
    for d in dets:
        assert d["category_id"] == 1 and 0 < d["score"] < 1 and d["image_id"] in coco.imgs
        assert d["bbox"][2] > 0 and d["bbox"][3] > 0
    # Every GT person has a high-scoring detection overlapping it.
    for ann in coco.loadAnns(coco.getAnnIds()):
        gx, gy, gw, gh = ann["bbox"]
        best = 0.0
        for d in dets:
            if d["image_id"] != ann["image_id"]:
                continue
            x, y, w, h = d["bbox"]
            iw = max(0.0, min(gx + gw, x + w) - max(gx, x))
            ih = max(0.0, min(gy + gh, y + h) - max(gy, y))
            best = max(best, iw * ih / (gw * gh + w * h - iw * ih))
        assert best > 0.5


@pytest.mark.parametrize("fixture,name", [("synthetic_coco_root", "coco"), ("synthetic_infant_root", "infant")])
def test_visible_joints_are_drawn_where_labelled(request, fixture, name):
    """At a v=2 joint the image shows that joint's fill colour (JPEG tolerance)."""
    root = request.getfixturevalue(fixture)
    ks = get_keypoint_set(name)
    _, joint_colors = synthetic._palettes(ks)
    with open(os.path.join(root, "annotations", "person_keypoints_train2017.json")) as f:
        data = json.load(f)
    files = {im["id"]: im["file_name"] for im in data["images"]}
    hits = total = 0
    for ann in data["annotations"]:
        img = cv2.imread(os.path.join(root, "train2017", files[ann["image_id"]])).astype(float)
        k = np.asarray(ann["keypoints"]).reshape(-1, 3)
        for j in np.flatnonzero(k[:, 2] == 2):
            x, y = int(round(k[j, 0])), int(round(k[j, 1]))
            total += 1
            hits += np.abs(img[y, x] - joint_colors[j]).max() < 60
    assert total > 100 and hits / total > 0.8


def test_cli(tmp_path, capsys):
    out = tmp_path / "syn"
    assert (
        synthetic.main(
            [str(out), "--keypoints", "infant", "--num-images", "3", "--seed", "5", "--image-size", "96", "128"]
        )
        == 0
    )
    assert "train: 2 images" in capsys.readouterr().out
    with open(out / "annotations" / "person_keypoints_val2017.json") as f:
        val = json.load(f)
    assert val["images"][0] == {"id": 3, "file_name": "000000000003.jpg", "width": 128, "height": 96}
    assert len(val["annotations"][0]["keypoints"]) == 63
    assert synthetic.main([str(out), "--num-images", "0"]) == 2
    with pytest.raises(ValueError, match="unknown keypoint set"):
        synthetic.generate_synthetic(str(out), keypoints="mpii", num_images=2, seed=0)
