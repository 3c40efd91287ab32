"""aggpose-predict building blocks without the model: boxes files and regions, seed windows, the subject's
identity and follow box, series settings, output names and earlier results, progress line, the prefetch
thread, native messages kept off the console, a video's completeness and the synthetic animation."""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from aggpose_jax.data.synthetic import animate_figure
from aggpose_jax.predict import series as ser
from aggpose_jax.predict.batching import Prefetch, Timings
from aggpose_jax.predict.boxes import BoxesError, BoxesFile, BoxPlan, box_from_keypoints, parse_region
from aggpose_jax.predict.outputs import check_out_dir, frame_ranges, unique_stems
from aggpose_jax.predict.progress import Progress
from aggpose_jax.predict.subject import Follower, SubjectSettings, body_box, same_subject, seed_windows
from aggpose_jax.predict.video import NativeLog


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


# ---------------------------------------------------------------------------------------------------
# Issue 16: identity, follow box, native messages, earlier results, checks before the model runs


def test_same_subject_and_the_follow_box() -> None:
    settings = SubjectSettings()
    anchor = np.array([100.0, 50.0, 60.0, 160.0])
    assert same_subject(anchor + [20, 30, 0, 0], anchor, settings)  # moved a little
    assert same_subject(np.array([110.0, 120.0, 50.0, 80.0]), anchor, settings)  # half the body seen
    assert not same_subject(anchor + [320, 0, 0, 0], anchor, settings)  # someone beside
    assert not same_subject(np.array([0.0, 0.0, 300.0, 240.0]), anchor, settings)  # a box over everyone
    kp = np.array([[10.0, 10.0], [30.0, 10.0], [20.0, 80.0], [20.0, 110.0]])
    assert np.allclose(body_box(kp, np.full(4, 0.9), None, settings), [10, 10, 20, 100])  # all seen: their extent
    low = np.array([0.9, 0.9, 0.9, 0.1])  # the foot scores low, still placed near the body: kept, with a margin
    assert np.allclose(body_box(kp, low, None, settings), [10, 10, 20, 107])
    far = kp.copy()
    far[3] = [500.0, 500.0]  # a stray low maximum far away: not
    assert np.allclose(body_box(far, low, None, settings), [10, 10, 20, 70])
    remembered = np.full((4, 2), np.nan)
    remembered[3] = [20.0, 110.0]  # where the foot was last confident
    gone = np.array([0.9, 0.9, 0.9, 0.0])
    assert np.allclose(body_box(far, gone, None, settings, remembered), [10, 10, 20, 107])
    previous = np.array([0.0, 0.0, 40.0, 100.0])  # shrinks by at most 0.85 per update
    assert np.allclose(body_box(far, gone, previous, settings), [3, 7.5, 34, 85])


def test_follower_remembers_joints_for_memory_s() -> None:
    settings = SubjectSettings(memory_s=1.0)
    follower = Follower(settings)
    kp = np.array([[10.0, 10.0], [30.0, 10.0], [20.0, 80.0], [20.0, 110.0]])
    follower.update(kp, np.full(4, 0.9), 0.0)
    assert np.allclose(follower.box, [10, 10, 20, 100]) and np.allclose(follower.anchor, [10, 10, 20, 100])
    gone = np.array([0.9, 0.9, 0.9, 0.0])
    moved = kp.copy()
    moved[3] = [500.0, 500.0]  # the foot is not seen now
    follower.update(moved, gone, 0.5)
    assert follower.box[1] + follower.box[3] >= 110  # its last place still inside
    later = Follower(settings)
    later.update(kp, np.full(4, 0.9), 0.0)
    later.body = None  # forget the box: only the joint memory is left
    later.update(moved, gone, 1.5)  # the foot was seen 1.5 s ago: forgotten
    assert np.allclose(later.box, [10, 10, 20, 70])
    follower.update(kp, np.array([0.0, 0.0, 0.0, 0.0]), 0.6)  # nothing confident: seed next
    assert follower.box is None and follower.reseeds == 1 and follower.anchor is not None
    follower.seeded(kp + 300, np.full(4, 0.9), uncertain=True)  # someone else: do not follow them
    assert follower.box is None and np.allclose(follower.anchor, [10, 10, 20, 70])


def test_frame_ranges() -> None:
    mask = np.array([0, 1, 1, 0, 1], bool)
    got = frame_ranges([5, 6, 7, 8, 9], np.arange(5) / 10.0, mask)
    assert got == [
        {"start_frame": 6, "end_frame": 7, "start_s": 0.1, "end_s": 0.2},
        {"start_frame": 9, "end_frame": 9, "start_s": 0.4, "end_s": 0.4},
    ]


def test_native_log_keeps_fd2_off_the_console(tmp_path: Path, capfd) -> None:
    with NativeLog() as log:
        start = log.position()
        os.write(2, b"[mpeg4 @ 0x55b7b5442c00] ac-tex damaged at 13 11\n[ WARN:0@1.2] global cap.cpp:212 open\n")
        print("ours", file=sys.stderr)
        with NativeLog() as inner:  # nested: the same capture
            assert inner is log
        assert log.ffmpeg_messages(start) == 1
        assert log.save(tmp_path / "native.log")
    err = capfd.readouterr().err
    assert err == "ours\n"
    assert "ac-tex damaged" in (tmp_path / "native.log").read_text()
    assert NativeLog.active() is None
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "after\n"


def test_earlier_results_and_planned_files(tmp_path: Path) -> None:
    from aggpose_jax.predict.outputs import FORMAT, earlier_results, planned_files

    out = tmp_path / "out"
    out.mkdir()
    assert earlier_results(str(out)) == []
    (out / "notes.json").write_text('{"mine": 1}')
    (out / "clip.json").write_text(json.dumps({"format": FORMAT, "outputs": {"long": "clip.keypoints.csv"}}))
    (out / "clip.keypoints.csv").write_text("x")
    (out / "aggpose-predict.log").write_text("x")
    assert [Path(p).name for p in earlier_results(str(out))] == [
        "aggpose-predict.log",
        "clip.json",
        "clip.keypoints.csv",
    ]
    stems = {Path("a.mp4"): "a", Path("p.png"): "p"}
    files = planned_files(str(out), stems, [Path("a.mp4")], [Path("p.png")], ["long", "json", "png"])
    names = [Path(f).name for f in files]
    assert names == [
        "aggpose-predict.json",
        "a.keypoints.csv",
        "a.json",
        "images.keypoints.csv",
        "images.json",
        "p.overlay.png",
    ]
    assert unique_stems([Path("aggpose-predict.mp4")]) == {Path("aggpose-predict.mp4"): "aggpose-predict_2"}


def test_smoothing_checked_against_a_frame_rate() -> None:
    settings = ser.SeriesSettings(smooth="butterworth", smooth_params={"cutoff_hz": 15.0})
    settings.check_at(50.0, "fast.mp4")
    with pytest.raises(
        ValueError, match=r"slow\.mp4 \(25 fps\): smoothing 'butterworth': cutoff_hz=15.0 must be below"
    ):
        settings.check_at(25.0, "slow.mp4")
    ser.SeriesSettings(smooth="savgol").check_at(None, "unknown rate: nothing to check")


def test_quality_report_excludes_frames() -> None:
    from aggpose_jax.predict.sequences import format_quality_report, quality_report

    t = np.arange(10) / 10.0
    report = quality_report(np.ones((10, 2)), t, 0.5, 0.2, exclude=np.arange(10) >= 6)
    assert report["frames_all_valid_share"] == pytest.approx(0.6) and report["excluded_frames"] == 4
    report["identity_uncertain"] = {"frames": 4, "ranges": [{"start_s": 0.6, "end_s": 0.9}]}
    report["decoding"] = {"complete": False, "frames_decoded": 10, "frame_count_container": 20, "frames_missing": 10}
    text = format_quality_report(report)
    assert "identity uncertain" in text and "0.60-0.90 s" in text and "INCOMPLETE: 10 of the container's 20" in text


def test_a_whole_video_is_complete(tmp_path: Path) -> None:
    from aggpose_jax.predict.video import VideoReader, VideoWriter

    path = tmp_path / "clip.mp4"
    with VideoWriter(path, 25.0, (64, 48)) as writer:
        for i in range(10):
            writer.write(np.full((48, 64, 3), 20 * i, np.uint8))
    reader = VideoReader(path)
    assert reader.count_frames() == 10
    assert len(list(reader)) == 10
    got = reader.completeness()
    assert got["complete"] and got["frames_decoded"] == 10 and got["frames_missing"] == 0
    assert got["duration_container_s"] == pytest.approx(0.4)
