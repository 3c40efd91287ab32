"""CocoKeypointSource: record format, HRNet cleaning rules, detections, errors naming file and field."""

import copy
import json
import os
import pickle

import numpy as np
import pytest

from aggpose_jax.data.sources import CocoKeypointSource, clean_box

J = 17


def kps(labelled: dict[int, tuple[float, float, int]]) -> list[float]:
    out = np.zeros((J, 3))
    for j, v in labelled.items():
        out[j] = v
    return out.reshape(-1).tolist()


def tiny_coco() -> dict:
    """3 images (b.jpg's file is missing) and annotations exercising every cleaning rule."""
    ann = lambda i, img, bbox, k, **kw: {  # noqa: E731
        "id": i,
        "image_id": img,
        "category_id": 1,
        "bbox": bbox,  # noqa: E731
        "keypoints": k,
        "area": kw.pop("area", 500.0),
        "iscrowd": 0,
        **kw,
    }
    person = kps({0: (20, 15, 2), 5: (25, 30, 1)})
    return {
        "images": [
            {"id": 7, "file_name": "a.jpg", "width": 100, "height": 80},
            {"id": 9, "file_name": "b.jpg", "width": 50, "height": 50},
            {"id": 11, "file_name": "c.jpg", "width": 60, "height": 60},
        ],
        "annotations": [
            ann(1, 7, [10, 10, 30, 40], person, area=321.5),  # kept
            ann(2, 7, [-5, 60, 200, 100], person),  # kept, clipped
            ann(3, 7, [10, 10, 30, 40], person, iscrowd=1),  # crowd
            ann(4, 7, [10, 10, 30, 40], kps({3: (12, 12, 0)})),  # no labelled joint
            ann(5, 7, [10, 10, 30, 40], person, area=0.0),  # zero area
            ann(6, 7, [150, 10, 30, 40], person),  # outside the image
            ann(8, 7, [10, 10, 30, 40], person, category_id=2),  # not a person
            ann(10, 9, [1, 2, 3, 4], kps({16: (3, 4, 2)}), area=12.0),  # kept, image file missing
        ],
        "categories": [
            {"id": 1, "name": "person", "keypoints": [f"k{j}" for j in range(J)], "skeleton": []},
            {"id": 2, "name": "dog"},
        ],
    }


@pytest.fixture
def tiny(tmp_path):
    """(ann_file, image_dir, bytes of a.jpg)."""
    image_dir = tmp_path / "images"
    image_dir.mkdir()
    data = b"\xff\xd8not-really-a-jpeg\xff\xd9"
    (image_dir / "a.jpg").write_bytes(data)
    (image_dir / "c.jpg").write_bytes(b"c")
    ann_file = tmp_path / "ann.json"
    ann_file.write_text(json.dumps(tiny_coco()))
    return str(ann_file), str(image_dir), data


def test_gt_records_format_and_cleaning(tiny):
    ann_file, image_dir, data = tiny
    src = CocoKeypointSource(ann_file, image_dir, keypoint_set="coco", train=True)
    assert len(src) == 3 and src.ann_file == ann_file
    r0, r1, r2 = (src[i] for i in range(3))
    assert set(r0) == {"image_id", "image_file", "image_bytes", "bbox", "keypoints", "score", "area"}
    assert isinstance(r0["image_id"], np.int64) and r0["image_id"] == 7
    assert r0["image_file"] == "a.jpg" and r0["image_bytes"] == data
    assert r0["bbox"].dtype == np.float32 and r0["bbox"].tolist() == [10, 10, 29, 39]
    assert r0["keypoints"].dtype == np.float32 and r0["keypoints"].shape == (J, 3)
    assert r0["keypoints"][0].tolist() == [20, 15, 2] and r0["keypoints"][5].tolist() == [25, 30, 1]
    assert isinstance(r0["score"], np.float32) and r0["score"] == 1.0
    assert isinstance(r0["area"], np.float32) and r0["area"] == np.float32(321.5)
    assert r1["bbox"].tolist() == [0, 60, 99, 19]  # clipped to the 100x80 image
    assert r2["image_id"] == 9 and r2["image_file"] == "b.jpg" and r2["image_bytes"] == b""
    assert r2["keypoints"][16].tolist() == [3, 4, 2]
    with pytest.raises(IndexError):
        src[3]
    # Evaluation with GT boxes gives the same people.
    ev = CocoKeypointSource(ann_file, image_dir, keypoint_set="coco", train=False)
    assert [ev[i]["bbox"].tolist() for i in range(len(ev))] == [src[i]["bbox"].tolist() for i in range(3)]


def test_clean_box_rules():
    assert clean_box([10, 10, 30, 40], 100, 80) == (10, 10, 29, 39)
    assert clean_box([-5, -5, 0.5, 0.5], 100, 80) == (0, 0, 0, 0)  # degenerate but not empty
    assert clean_box([120, 10, 30, 40], 100, 80) is None


def test_source_pickles_and_reads_lazily(tiny, tmp_path):
    ann_file, image_dir, data = tiny
    src = CocoKeypointSource(ann_file, image_dir, keypoint_set="coco", train=True)
    (tmp_path / "images" / "a.jpg").write_bytes(b"changed")  # read at __getitem__ time
    back = pickle.loads(pickle.dumps(src))
    assert back[0]["image_bytes"] == b"changed" and len(back) == len(src)
    np.testing.assert_array_equal(back[1]["keypoints"], src[1]["keypoints"])
    import grain

    ds = grain.MapDataset.source(src)
    assert len(ds) == 3 and ds[2]["image_id"] == 9


def test_detections_mode_with_threshold(tiny, tmp_path):
    ann_file, image_dir, data = tiny
    dets = [
        {"image_id": 7, "category_id": 1, "bbox": [1.5, 2.0, 10.0, 20.0], "score": 0.9},
        {"image_id": 7, "category_id": 1, "bbox": [3, 3, 5, 5], "score": 0.05},
        {"image_id": 11, "category_id": 2, "bbox": [3, 3, 5, 5], "score": 0.99},
        {"image_id": 9, "category_id": 1, "bbox": [0, 0, 4, 4], "score": 0.1},
    ]
    det_file = tmp_path / "dets.json"
    det_file.write_text(json.dumps(dets))
    src = CocoKeypointSource(
        ann_file, image_dir, keypoint_set="coco", train=False, detections_file=str(det_file), det_score_threshold=0.1
    )
    assert len(src) == 2  # 0.05 dropped, category 2 dropped, 0.1 kept (score >= threshold)
    r = src[0]
    assert r["image_id"] == 7 and r["image_bytes"] == data and r["bbox"].tolist() == [1.5, 2, 10, 20]
    assert r["score"] == np.float32(0.9) and r["area"] == 200.0
    assert r["keypoints"].shape == (J, 3) and not r["keypoints"].any()
    assert src[1]["image_id"] == 9 and src[1]["image_bytes"] == b""
    all_dets = CocoKeypointSource(ann_file, image_dir, keypoint_set="coco", train=False, detections_file=str(det_file))
    assert len(all_dets) == 3
    with pytest.raises(ValueError, match="evaluation only"):
        CocoKeypointSource(ann_file, image_dir, keypoint_set="coco", train=True, detections_file=str(det_file))


def _drop(path: list, data: dict) -> dict:
    data = copy.deepcopy(data)
    obj = data
    for key in path[:-1]:
        obj = obj[key]
    del obj[path[-1]]
    return data


@pytest.mark.parametrize(
    "path,field",
    [
        (["images"], "images"),
        (["annotations"], "annotations"),
        (["categories"], "categories"),
        (["annotations", 5, "bbox"], "annotations[5].bbox"),
        (["annotations", 0, "keypoints"], "annotations[0].keypoints"),
        (["annotations", 2, "image_id"], "annotations[2].image_id"),
        (["images", 0, "id"], "images[0].id"),
        (["images", 1, "file_name"], "images[1].file_name"),
        (["images", 2, "width"], "images[2].width"),
        (["images", 0, "height"], "images[0].height"),
    ],
)
def test_missing_field_names_file_and_field(tmp_path, path, field):
    ann_file = tmp_path / "broken.json"
    ann_file.write_text(json.dumps(_drop(path, tiny_coco())))
    with pytest.raises(ValueError) as e:
        CocoKeypointSource(str(ann_file), str(tmp_path), keypoint_set="coco", train=True)
    msg = str(e.value)
    assert str(ann_file) in msg and f"{field}: missing required field" in msg and "\n" not in msg


def test_bad_values_and_not_json(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match=rf"{bad}: not a valid JSON file"):
        CocoKeypointSource(str(bad), str(tmp_path), keypoint_set="coco", train=True)
    data = tiny_coco()
    data["annotations"][1]["bbox"] = [1, 2, 3]
    bad.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"bad.json: annotations\[1\].bbox: expected 4 numbers"):
        CocoKeypointSource(str(bad), str(tmp_path), keypoint_set="coco", train=True)
    data = tiny_coco()
    data["annotations"][0]["image_id"] = 12345
    bad.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"annotations\[0\].image_id: 12345 is not an id"):
        CocoKeypointSource(str(bad), str(tmp_path), keypoint_set="coco", train=True)


def test_wrong_keypoint_count(tiny, tmp_path):
    ann_file, image_dir, _ = tiny
    with pytest.raises(ValueError, match=r"categories\[0\].keypoints: 17 joint names but keypoint set 'infant'"):
        CocoKeypointSource(ann_file, image_dir, keypoint_set="infant", train=True)
    data = tiny_coco()
    del data["categories"][0]["keypoints"]
    path = tmp_path / "nocat.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"annotations\[0\].keypoints: 51 values, expected 63 .*'infant'"):
        CocoKeypointSource(str(path), image_dir, keypoint_set="infant", train=True)


@pytest.mark.parametrize(
    "dets,field",
    [
        ({"image_id": 7}, "<top level>: expected a JSON list"),
        ([{"image_id": 7, "bbox": [0, 0, 1, 1]}], r"\[0\].score: missing required field"),
        (
            [{"image_id": 7, "bbox": [0, 0, 1, 1], "score": 1}, {"image_id": 7, "bbox": [0, 1], "score": 1}],
            r"\[1\].bbox: expected 4 numbers",
        ),
        ([{"image_id": 999, "bbox": [0, 0, 1, 1], "score": 1}], r"\[0\].image_id: 999 is not an image"),
    ],
)
def test_detection_file_errors(tiny, tmp_path, dets, field):
    ann_file, image_dir, _ = tiny
    det_file = tmp_path / "dets.json"
    det_file.write_text(json.dumps(dets))
    with pytest.raises(ValueError, match=rf"{det_file}: {field}"):
        CocoKeypointSource(ann_file, image_dir, keypoint_set="coco", train=False, detections_file=str(det_file))


def test_from_root_on_synthetic(synthetic_coco_root):
    root = synthetic_coco_root
    with open(os.path.join(root, "annotations", "person_keypoints_val2017.json")) as f:
        gt = json.load(f)
    src = CocoKeypointSource.from_root(root, "val", keypoints="coco")
    assert not src.train and src.ann_file.endswith("person_keypoints_val2017.json")
    assert len(src) == sum(1 for a in gt["annotations"] if max(a["keypoints"][2::3]) > 0)
    r = src[0]
    with open(os.path.join(root, "val2017", r["image_file"]), "rb") as f:
        assert r["image_bytes"] == f.read()
    dets = CocoKeypointSource.from_root(
        root, "validation", keypoints="coco", detections_file="person_detections_val2017.json", det_score_threshold=0.5
    )
    with open(os.path.join(root, "person_detections_val2017.json")) as f:
        assert len(dets) == sum(d["score"] >= 0.5 for d in json.load(f))
    assert CocoKeypointSource.from_root(root, "train").train
    with pytest.raises(ValueError, match="split must be 'train' or 'val'"):
        CocoKeypointSource.from_root(root, "test")
