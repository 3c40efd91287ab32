"""aggpose-predict building blocks without the model: boxes files and regions, seed windows, series
settings, output names, progress line, the prefetch thread and the synthetic animation."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from aggpose_jax.data.synthetic import animate_figure
from aggpose_jax.predict import series as ser
from aggpose_jax.predict.batching import Prefetch, Timings
from aggpose_jax.predict.boxes import BoxesError, BoxesFile, BoxPlan, box_from_keypoints, parse_region
from aggpose_jax.predict.outputs import check_out_dir, unique_stems
from aggpose_jax.predict.progress import Progress
from aggpose_jax.predict.subject import seed_windows


def test_coco_json_boxes(tmp_path: Path) -> None:
    path = tmp_path / "dets.json"
    dets = [
        {"image_id": 139, "category_id": 1, "bbox": [1, 2, 30, 40], "score": 0.9},
        {"image_id": "walk", "bbox": [5, 6, 7, 8]},
        {"image_id": 139, "category_id": 3, "bbox": [0, 0, 1, 1], "score": 1.0},
    ]
    path.write_text(json.dumps({"annotations": dets}))
    boxes = BoxesFile.read(path)
    got = boxes.for_image("000000000139")
    assert len(got) == 1 and got[0].xywh == (1.0, 2.0, 30.0, 40.0) and got[0].score == 0.9
    assert boxes.for_image("walk")[0].score == 1.0 and boxes.for_image("other") == []
    with pytest.raises(BoxesError, match="names 'walk', not a frame index"):
        boxes.check_frame_keys()


@pytest.mark.parametrize(
    "text",
    [
        "frame,x,y,w,h,score\n0,1,2,3,4,0.5\n2,1,2,3,4,0.7\n",
        "0,1,2,3,4,0.5\n2,1,2,3,4,0.7\n",
        "x,y,w,h,frame\n1,2,3,4,0\n1,2,3,4,2\n",
    ],
)
def test_csv_boxes_with_or_without_header(tmp_path: Path, text: str) -> None:
    path = tmp_path / "boxes.csv"
    path.write_text(text)
    boxes = BoxesFile.read(path)
    boxes.check_frame_keys()
    assert boxes.for_frame(0)[0].xywh == (1.0, 2.0, 3.0, 4.0) and boxes.for_frame(1) == [] and boxes.max_frame() == 2
    boxes.check_frames_within(3, "v.mp4")
    with pytest.raises(BoxesError, match=r"names frame 2 but v\.mp4 has 2 frames \(0\.\.1\)"):
        boxes.check_frames_within(2, "v.mp4")


def test_regions_and_plans(tmp_path: Path) -> None:
    assert parse_region("10,20,30,40") == (None, (10.0, 20.0, 30.0, 40.0))
    assert parse_region("clip.mp4=1,2,3,4") == ("clip.mp4", (1.0, 2.0, 3.0, 4.0))
    with pytest.raises(BoxesError, match="w=0"):
        parse_region("1,2,0,4")
    a, b = tmp_path / "a.mp4", tmp_path / "b.mp4"
    plan = BoxPlan(regions={"a.mp4": (1, 2, 3, 4)})
    with pytest.raises(BoxesError, match=r"b\.mp4: no region given"):
        plan.check_inputs([a, b], [a, b])
    with pytest.raises(BoxesError, match="--region c=...: no input of that name"):
        BoxPlan(regions={"c": (1, 2, 3, 4), None: (0, 0, 5, 5)}).check_inputs([a, b], [a, b])
    folder = tmp_path / "boxes"
    folder.mkdir()
    (folder / "a.csv").write_text("0,1,2,3,4\n")
    plan = BoxPlan(folder)
    assert plan.mode == "file" and plan.file_for(a).for_frame(0)[0].xywh == (1.0, 2.0, 3.0, 4.0)
    with pytest.raises(BoxesError, match=r"holds no b\.json or b\.csv"):
        plan.check_inputs([a, b], [a, b])
    single = tmp_path / "one.csv"
    single.write_text("0,1,2,3,4\n")
    with pytest.raises(BoxesError, match="one boxes file cannot serve 2 videos"):
        BoxPlan(single).check_inputs([a, b], [a, b])
    assert BoxPlan().mode == "single_subject"


def test_box_from_keypoints() -> None:
    kp = np.array([[10.0, 20.0], [30.0, 60.0], [20.0, 40.0], [500.0, 500.0]])
    box = box_from_keypoints(kp, np.array([0.9, 0.8, 0.7, 0.05]), 0.2)
    np.testing.assert_allclose(box, [10, 20, 20, 40])
    assert box_from_keypoints(kp, np.array([0.9, 0.8, 0.1, 0.1]), 0.2) is None  # fewer than 3 confident


def test_seed_windows() -> None:
    assert seed_windows(90, 120, 0.75).tolist() == [[0, 0, 90, 120]]  # the model's shape: the whole frame
    wide = seed_windows(640, 240, 0.75)
    assert wide[0].tolist() == [0, 0, 640, 240] and len(wide) > 3
    assert np.allclose(wide[1:, 2], 180) and wide[-1, 0] + 180 == pytest.approx(640)
    tall = seed_windows(100, 400, 0.75)
    assert np.allclose(tall[1:, 3], 100 / 0.75) and tall[-1, 1] + tall[-1, 3] == pytest.approx(400)


def test_series_settings_and_processing() -> None:
    assert ser.parse_smoothing("butterworth:cutoff_hz=6,order=2") == ("butterworth", {"cutoff_hz": 6.0, "order": 2})
    with pytest.raises(ValueError, match="unknown smoothing 'median'"):
        ser.parse_smoothing("median")
    s = ser.SeriesSettings(smooth="one_euro")
    assert s.processing and s.smooth_params == {"min_cutoff": 1.0, "beta": 0.0, "d_cutoff": 1.0}
    with pytest.raises(ValueError, match="keypoint format"):
        ser.SeriesSettings(keypoint_format="dlc")
    t = np.arange(10) / 10.0
    xy = np.stack([np.stack([t, t], -1)] * 17, axis=1) * 100  # (10, 17, 2)
    scores = np.full((10, 17), 0.9)
    scores[4, 3] = 0.05
    names = [f"j{i}" for i in range(17)]
    out = ser.process(t, xy, scores, names, [(0, 1)], ser.SeriesSettings(mask=True, max_gap_s=0.25))
    assert out.flagged[4, 3] and not out.flagged[4, 2]
    np.testing.assert_allclose(out.xy[4, 3], xy[4, 3])  # masked, then filled by interpolation
    assert np.isnan(ser.process(t, xy, scores, names, [], ser.SeriesSettings(mask=True)).xy[4, 3]).all()
    assert out.quality["frames_all_valid_share"] == pytest.approx(0.9)
    np.testing.assert_array_equal(out.xy_raw, xy)  # raw kept
    assert ser.trunk_indices(ser.sequences.COCO17_NAMES) == (5, 6, 11, 12)
    assert ser.trunk_indices([f"R{i}" for i in range(1, 10)] + [f"L{i}" for i in range(1, 10)]) == (10, 1, 14, 5)


def test_output_folder_and_stems(tmp_path: Path) -> None:
    assert check_out_dir(tmp_path / "new" / "deep") == str(tmp_path / "new" / "deep")
    stems = unique_stems([Path("a/clip.mp4"), Path("b/clip.mp4"), Path("clip.mov"), Path("images.png")])
    assert list(stems.values()) == ["clip", "clip_2", "clip_3", "images_2"]


def test_progress_line() -> None:
    stream = io.StringIO()
    bar = Progress("clip.mp4", 100, stream=stream, interval_s=0.0)
    bar.update(25)
    line = stream.getvalue().strip()
    assert line.startswith("clip.mp4 [#####...............] 25/100 frames,") and "frames/s, ETA" in line
    bar.close()
    assert "25 frames in" in stream.getvalue().splitlines()[-1]
    assert "frames/s" in Progress("x", None, stream=io.StringIO()).line()


def test_prefetch_runs_ahead_and_passes_errors() -> None:
    timings = Timings()

    def produce():
        yield from range(5)
        raise ValueError("bad frame")

    pre = Prefetch(produce(), lambda x: x * 10, 2, timings)
    got = []
    with pytest.raises(ValueError, match="bad frame"):
        for item in pre:
            got.append(item)
    pre.close()
    assert got == [0, 10, 20, 30, 40]
    early = Prefetch(iter(range(1000)), None, 2, timings)
    assert next(iter(early)) == 0
    early.close()  # stops the thread although items are left


def test_animate_figure_is_deterministic_and_in_frame() -> None:
    frames, joints = animate_figure(6, seed=1, image_size=(96, 128))
    again, joints2 = animate_figure(6, seed=1, image_size=(96, 128))
    assert frames.shape == (6, 96, 128, 3) and joints.shape == (6, 17, 2)
    np.testing.assert_array_equal(frames, again)
    np.testing.assert_array_equal(joints, joints2)
    assert joints.min() >= 0 and (joints[..., 0] < 128).all() and (joints[..., 1] < 96).all()
    assert np.abs(np.diff(joints, axis=0)).max() > 0.5  # it moves
    _, infant = animate_figure(2, keypoints="infant", seed=0)
    assert infant.shape == (2, 21, 2)
