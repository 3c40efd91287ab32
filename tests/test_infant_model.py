"""The infant (21-joint) model through ``aggpose_jax.load``, the Predictor / ``aggpose-predict`` and
``aggpose-export``.

Model: ``aggpose_tiny`` at 128x96 with 21 joints and freshly initialised weights (seed 0), saved as a
converted model directory. Its keypoints are not accurate (it is untrained), so these tests check what the
21-joint path carries: shapes, the infant set's joint names and skeleton in every output, the flip index,
the saved weights read back by ``load``, its heatmaps reproduced by the exported artifact, and keypoints that
equal the decoded heatmaps of the model on the same crop.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import jax
import numpy as np
import pytest

import aggpose_jax
from aggpose_jax.data.synthetic import animate_figure
from aggpose_jax.data.transforms import normalize_image, warp_crop
from aggpose_jax.evaluate.topdown import decode_to_image
from aggpose_jax.model_dir import save_model
from aggpose_jax.models.aggpose import get_model_config
from aggpose_jax.params import init_params, named_leaves, to_pure
from aggpose_jax.pose import geometry
from aggpose_jax.pose.keypoints import get_keypoint_set
from aggpose_jax.predict import cli, export
from aggpose_jax.predict.runner import Predictor

INFANT = get_keypoint_set("infant")
CONFIG = get_model_config("aggpose_tiny", num_joints=21, image_size=(128, 96))
N_FRAMES = 6
pytestmark = pytest.mark.slow  # several compiles of the tiny model (about 2-4 minutes on 2 busy cores)


@pytest.fixture(scope="module")
def params() -> dict:
    return jax.device_get(init_params(CONFIG, seed=0))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, params: dict) -> Path:
    path = tmp_path_factory.mktemp("infant") / "tiny21"
    save_model(path, params, CONFIG)
    return path


@pytest.fixture(scope="module")
def predictor(model_dir: Path) -> Predictor:
    return aggpose_jax.load(model_dir).predictor(flip=False)  # one compile for the image and clip tests


@pytest.fixture(scope="module")
def crops() -> np.ndarray:
    return np.random.default_rng(0).normal(0.0, 1.0, (3, 128, 96, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> dict:
    """A generated infant clip (MPEG-4 via PyAV, 25 frames/s) and a boxes CSV (the true joints' extent + 15 px)."""
    av = pytest.importorskip("av")
    frames, joints = animate_figure(N_FRAMES, keypoints="infant", seed=0)
    path = tmp_path_factory.mktemp("clip") / "infant.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="bgr24")))
        container.mux(stream.encode(None))
    lo, hi = joints.min(axis=1) - 15, joints.max(axis=1) + 15
    boxes = np.concatenate([lo, hi - lo], axis=1)
    csv_path = path.with_suffix(".csv")
    lines = ["frame,x,y,w,h,score"] + [
        f"{i},{x:.2f},{y:.2f},{w:.2f},{h:.2f},0.9" for i, (x, y, w, h) in enumerate(boxes)
    ]
    csv_path.write_text("\n".join(lines) + "\n")
    return {
        "model_dir": model_dir,
        "path": path,
        "frames": frames,
        "joints": joints,
        "boxes": boxes,
        "boxes_csv": csv_path,
    }


def test_load_reproduces_the_saved_model(model_dir: Path, params: dict, crops: np.ndarray) -> None:
    model = aggpose_jax.load(model_dir)
    assert model.config.num_joints == 21
    got = np.asarray(model.heatmaps(crops))
    assert got.shape == (3, 32, 24, 21) and np.all(np.isfinite(got))
    loaded = dict(named_leaves(to_pure(model.params)))
    saved = dict(named_leaves(params))
    assert sorted(loaded) == sorted(saved)
    for name, value in saved.items():
        np.testing.assert_array_equal(np.asarray(loaded[name]), np.asarray(value), err_msg=name)


def test_predictor_on_images_uses_the_infant_set(predictor: Predictor, clip: dict) -> None:
    """The Predictor's keypoints are the model's heatmaps of the box's crop, decoded (DARK) to image pixels."""
    assert predictor.keypoint_set.name == "infant" and predictor.num_joints == 21
    model = aggpose_jax.load(clip["model_dir"])
    for i in (0, N_FRAMES - 1):
        rgb = np.ascontiguousarray(clip["frames"][i][:, :, ::-1])
        box = clip["boxes"][i]
        res = predictor.image(rgb, boxes=[tuple(box)])
        kp = np.asarray(res.keypoints)
        assert kp.shape == (1, 21, 2) and np.all(np.isfinite(kp))
        center, scale = geometry.box_to_center_scale(box[None], 96 / 128)
        crop = warp_crop(rgb, geometry.get_affine_transform(center[0], scale[0], 0.0, (96, 128)), (128, 96))
        heatmaps = np.asarray(model.heatmaps(normalize_image(crop)[None]))
        want, _ = decode_to_image(heatmaps, center, scale)
        np.testing.assert_allclose(kp, want, atol=0.05)


def test_predictor_on_the_clip(predictor: Predictor, clip: dict) -> None:
    res = predictor.video(clip["path"], boxes=clip["boxes_csv"])
    assert res.keypoints.shape == (N_FRAMES, 21, 2) and np.all(np.isfinite(res.keypoints))
    assert list(res.box_sources) == ["file"] * N_FRAMES


def test_aggpose_predict_writes_infant_joint_names(model_dir: Path, clip: dict, tmp_path: Path) -> None:
    out = tmp_path / "out"
    argv = [str(clip["path"]), "--model", str(model_dir), "--out", str(out), "--boxes", str(clip["boxes_csv"])]
    assert cli.main([*argv, "--quiet", "--keypoint-format", "native"]) == 0
    written = {p.name for p in out.iterdir()}
    assert {"infant.json", "infant.keypoints.csv", "infant.npz", "infant.wide.csv"} <= written, written
    with open(out / "infant.keypoints.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 21 * N_FRAMES and tuple(r["joint"] for r in rows[:21]) == INFANT.names
    with open(out / "infant.wide.csv", newline="") as f:
        wide = list(csv.DictReader(f))
    assert len(wide) == N_FRAMES and all(f"{n}_x" in wide[0] for n in INFANT.names)
    doc = json.loads((out / "infant.json").read_text())
    assert doc["keypoints"]["joint_names"] == list(INFANT.names)
    assert sorted(map(tuple, doc["keypoints"]["skeleton"])) == sorted(map(tuple, INFANT.skeleton))
    npz = np.load(out / "infant.npz")
    assert npz["keypoints_raw"].shape == (N_FRAMES, 21, 2) and list(npz["joint_names"]) == list(INFANT.names)


def test_export_of_the_infant_model(model_dir: Path, crops: np.ndarray, tmp_path: Path) -> None:
    out = tmp_path / "exported"
    assert export.main([str(model_dir), str(out), "--platforms", "cpu"]) == 0
    meta = json.loads((out / export.META).read_text())
    assert meta["joint_names"] == list(INFANT.names) and meta["flip_index"] == [int(v) for v in INFANT.flip_index]
    loaded = jax.export.deserialize(bytearray((out / export.ARTIFACT).read_bytes()))
    got = np.asarray(loaded.call(crops))
    want = np.asarray(aggpose_jax.load(model_dir).heatmaps(crops))
    assert got.shape == want.shape == (3, 32, 24, 21)
    rel = float(np.linalg.norm(got - want) / np.linalg.norm(want))
    assert rel <= 1e-5, rel
