"""aggpose-predict end to end with the synthetic tiny model: accuracy on a generated video (boxes and
single-subject mode), container timestamps (constant and variable frame rate), the result files, images,
re-seeding and what a crash leaves behind.

Fixture model: ``tests/fixtures/synthetic_tiny17`` (aggpose_tiny, 128x96 input, the Quickstart run on the
synthetic COCO-17 stick figures, AP 0.63). The clip: one figure ~170 px tall in 240x320 frames.
"""

from __future__ import annotations

import csv
import fractions
import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

import aggpose_jax
from aggpose_jax.data.synthetic import animate_figure
from aggpose_jax.predict import cli
from aggpose_jax.predict.runner import Predictor
from aggpose_jax.predict.series import SeriesSettings

av = pytest.importorskip("av")

MODEL = Path(__file__).resolve().parent / "fixtures" / "synthetic_tiny17"
N_FRAMES = 32
# Accuracy thresholds (pixels; the figure is ~170 px tall). Measured with the fixture model on the clip:
# median joint error 3.44 px (boxes), 3.43 px (single subject), 3.37 px (region); the worst frame's mean
# joint error 9.2-9.7 px; the mean signed error (bias) at most 1.07 px on either axis. A systematic offset
# (half a pixel of the model's input is ~1 px here, of its heatmap ~4 px) moves the bias: BIAS_PX catches
# a shift of 3 px in any direction, which the median alone would not.
MEDIAN_PX = 4.5
FRAME_MEAN_PX = 12.0
BIAS_PX = 1.5


def write_video(path: Path, frames: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Write BGR frames with PyAV at the given times (ms time base, MPEG-4 part 2); returns the container's
    times, as PyAV reads them back."""
    tb = fractions.Fraction(1, 1000)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.time_base = tb
        stream.codec_context.time_base = tb
        stream.bit_rate = 4_000_000
        for frame, t in zip(frames, times):
            vf = av.VideoFrame.from_ndarray(frame, format="bgr24")
            vf.pts, vf.time_base = round(t * 1000), tb
            container.mux(stream.encode(vf))
        container.mux(stream.encode(None))
    with av.open(str(path)) as container:
        return np.array([f.time for f in container.decode(video=0)], np.float64)


def truth_boxes(joints: np.ndarray, margin: float = 15.0) -> np.ndarray:
    lo, hi = joints.min(axis=1), joints.max(axis=1)
    return np.concatenate([lo - margin, hi - lo + 2 * margin], axis=1)


def errors(keypoints: np.ndarray, joints: np.ndarray) -> np.ndarray:
    return np.linalg.norm(np.asarray(keypoints, np.float64) - joints, axis=-1)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor.load(MODEL)  # the default batch size (4 on CPU), as the CLI tests use: one compile


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> dict:
    frames, joints = animate_figure(N_FRAMES, seed=0)
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    times = write_video(path, frames, np.arange(N_FRAMES) / 25.0)
    boxes = path.with_suffix(".csv")
    rows = ["frame,x,y,w,h,score"] + [
        f"{i},{x:.2f},{y:.2f},{w:.2f},{h:.2f},0.9" for i, (x, y, w, h) in enumerate(truth_boxes(joints))
    ]
    boxes.write_text("\n".join(rows) + "\n")
    return {"path": path, "frames": frames, "joints": joints, "times": times, "boxes": boxes}


def test_boxes_mode_matches_the_truth(predictor: Predictor, clip: dict) -> None:
    res = predictor.video(clip["path"], boxes=clip["boxes"])
    assert res.keypoints.shape == (N_FRAMES, 17, 2) and list(res.box_sources) == ["file"] * N_FRAMES
    err = errors(res.keypoints, clip["joints"])
    bias = np.abs((res.keypoints - clip["joints"]).mean(axis=(0, 1)))
    print(f"boxes mode: median {np.median(err):.2f} px, worst frame mean {err.mean(axis=1).max():.2f} px, bias {bias}")
    assert np.median(err) < MEDIAN_PX and err.mean(axis=1).max() < FRAME_MEAN_PX and (bias < BIAS_PX).all()
    np.testing.assert_allclose(res.times, clip["times"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(res.boxes, truth_boxes(clip["joints"]), atol=0.01)


def test_single_subject_mode_matches_the_truth(predictor: Predictor, clip: dict) -> None:
    res = predictor.video(clip["path"])
    sources = list(res.box_sources)
    assert sources[0] == "seed" and set(sources) <= {"seed", "track"} and sources.count("track") >= N_FRAMES // 2
    err = errors(res.keypoints, clip["joints"])
    bias = np.abs((res.keypoints - clip["joints"]).mean(axis=(0, 1)))
    print(
        f"single-subject: median {np.median(err):.2f} px, worst frame mean {err.mean(axis=1).max():.2f} px, bias {bias}"
    )
    assert np.median(err) < MEDIAN_PX and err.mean(axis=1).max() < FRAME_MEAN_PX and (bias < BIAS_PX).all()
    assert not res.identity_uncertain.any()
    assert res.stats["reseeds"] == 0 and res.stats["several_people_frames"] == 0


def test_region_mode(predictor: Predictor, clip: dict) -> None:
    lo = clip["joints"].min(axis=(0, 1)) - 15
    hi = clip["joints"].max(axis=(0, 1)) + 15
    res = predictor.video(clip["path"], region=(*lo, *(hi - lo)))
    assert set(res.box_sources) == {"region"}
    assert np.median(errors(res.keypoints, clip["joints"])) < MEDIAN_PX


def test_cli_writes_every_output(clip: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    argv = [str(clip["path"]), "--model", str(MODEL), "--out", str(out), "--overlay", "--max-gap", "0.2"]
    argv += ["--smooth", "savgol:window_s=0.3", "--min-score", "0.2"]
    assert cli.main(argv) == 0
    report = capsys.readouterr()
    assert "all joints valid in" in report.out and "longest gap" in report.out  # the quality report, printed
    assert "frames/s" in report.err  # the progress bar
    names = {f.name for f in out.iterdir()} - {"aggpose-predict.log"}  # the log: only if FFmpeg printed
    expected = {f"clip{s}" for s in (".keypoints.csv", ".wide.csv", ".json", ".npz", ".overlay.mp4")}
    assert names == expected | {"aggpose-predict.json"}
    run = json.loads((out / "aggpose-predict.json").read_text())
    assert run["complete"] is True and run["exit_status"] == 0 and run["inputs"][0]["status"] == "done"
    assert set(run["files"]) >= expected and run["compile_s"] > 0

    long = read_csv(out / "clip.keypoints.csv")
    assert list(long[0])[:9] == [
        "video",
        "frame",
        "time_s",
        "joint",
        "x",
        "y",
        "score",
        "box_source",
        "identity_uncertain",
    ]
    assert {r["identity_uncertain"] for r in long} == {"0"}
    assert {"x_raw", "y_raw", "flagged"} <= set(long[0]) and len(long) == 17 * N_FRAMES
    assert [r["joint"] for r in long[:17]] == list(predictor_names())
    times = np.array([float(r["time_s"]) for r in long[::17]])
    np.testing.assert_allclose(times, clip["times"], rtol=0, atol=1e-6)  # the container's timestamps
    assert {r["box_source"] for r in long} <= {"seed", "track"}

    wide = read_csv(out / "clip.wide.csv")
    assert len(wide) == N_FRAMES and "left_wrist_x" in wide[0] and "left_wrist_x_raw" in wide[0]

    doc = json.loads((out / "clip.json").read_text())
    assert doc["complete"] is True and doc["decoding"]["complete"] and doc["decoding"]["frames_missing"] == 0
    assert (doc["video"]["width"], doc["video"]["height"], doc["video"]["n_frames"]) == (320, 240, N_FRAMES)
    assert doc["video"]["start_time_s"] == 0.0 and doc["stats"]["timings"]["compile_s"] > 0
    assert doc["provenance"]["compile_s"] == doc["stats"]["timings"]["compile_s"]
    assert abs(doc["video"]["fps"] - 25.0) < 0.2 and doc["keypoints"]["joint_names"] == list(predictor_names())
    assert [17, 2] not in doc["keypoints"]["skeleton"] and [15, 13] in doc["keypoints"]["skeleton"]
    assert len(doc["boxes"]["frames"]) == N_FRAMES and doc["boxes"]["sources"]["seed"] >= 1
    assert doc["quality"]["frames_all_valid_share"] > 0.5 and "usable_stretches" in doc["quality"]
    prov = doc["provenance"]
    assert prov["video"]["sha256"] == hashlib.sha256(clip["path"].read_bytes()).hexdigest()
    assert len(prov["model"]["checkpoint_sha256"]) == 64 and prov["model"]["config"]["image_size"] == [128, 96]
    assert prov["software"]["aggpose_jax"] and prov["series"]["smooth"] == "savgol"
    assert prov["series"]["smooth_params"] == {"window_s": 0.3, "polyorder": 2}

    npz = np.load(out / "clip.npz")
    assert npz["keypoints_raw"].shape == npz["keypoints"].shape == (N_FRAMES, 17, 2)
    assert not np.allclose(npz["keypoints_raw"], npz["keypoints"], equal_nan=True)  # smoothed beside raw
    np.testing.assert_allclose(npz["times"], clip["times"], atol=1e-9)
    assert list(npz["box_source"][:1]) == ["seed"] and npz["joint_names"][9] == "left_wrist"

    cap = cv2.VideoCapture(str(out / "clip.overlay.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == N_FRAMES
    cap.release()
    with av.open(str(out / "clip.overlay.mp4")) as container:  # PyAV is installed here: H.264
        assert container.streams.video[0].codec_context.name == "h264" and doc["overlay_codec"] == "h264"


def predictor_names() -> tuple[str, ...]:
    from aggpose_jax.pose.keypoints import get_keypoint_set

    return get_keypoint_set("coco").names


def test_variable_frame_rate_keeps_true_times(predictor: Predictor, clip: dict, tmp_path: Path) -> None:
    frames, _ = animate_figure(12, seed=3)
    times = np.cumsum(np.r_[0.0, np.random.default_rng(1).uniform(0.015, 0.12, 11)])
    path = tmp_path / "vfr.mp4"
    container_times = write_video(path, frames, times)
    np.testing.assert_allclose(container_times, times, atol=5e-4)  # ms time base
    assert np.ptp(np.diff(container_times)) > 0.05  # really irregular
    # Two videos in one call (the other one has a constant rate).
    summary = predictor.run([path, clip["path"]], tmp_path / "out", outputs=("long", "json"), report=None)
    assert [e["stem"] for e in summary.inputs] == ["vfr", "clip"]
    rows = read_csv(tmp_path / "out" / "vfr.keypoints.csv")
    got = np.array([float(r["time_s"]) for r in rows[::17]])
    np.testing.assert_allclose(got, container_times, rtol=0, atol=1e-6)
    doc = json.loads((tmp_path / "out" / "vfr.json").read_text())
    assert abs(doc["video"]["duration_s"] - container_times[-1]) < 1e-6
    assert summary.inputs[0]["stats"]["n_frames"] == 12 and summary.inputs[1]["stats"]["n_frames"] == N_FRAMES
    clip_rows = read_csv(tmp_path / "out" / "clip.keypoints.csv")
    np.testing.assert_allclose([float(r["time_s"]) for r in clip_rows[::17]], clip["times"], atol=1e-6)


def test_openpose18_and_normalised_series(predictor: Predictor, clip: dict, tmp_path: Path) -> None:
    series = SeriesSettings(mask=True, keypoint_format="openpose18", normalise=True)
    predictor.run([clip["path"]], tmp_path, outputs=("long", "npz"), series=series, report=None)
    npz = np.load(tmp_path / "clip.npz")
    names = list(npz["joint_names"])
    assert len(names) == 18 and names[1] == "Neck"
    raw = npz["keypoints_raw"]
    np.testing.assert_allclose(raw[:, 1], 0.5 * (raw[:, 2] + raw[:, 5]))  # Neck = mid-shoulders
    norm = npz["keypoints_normalised"]
    mid_hip = 0.5 * (norm[:, 8] + norm[:, 11])
    assert np.nanmax(np.abs(mid_hip)) < 1e-9  # centred on the mid-hip
    rows = read_csv(tmp_path / "clip.keypoints.csv")
    assert rows[1]["joint"] == "Neck" and {"x_norm", "flagged"} <= set(rows[0])


def test_images_with_boxes_single_subject_and_coco(predictor: Predictor, tmp_path: Path) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    a, ja = animate_figure(1, seed=5)
    b, jb = animate_figure(1, seed=6)
    two = np.concatenate([a[0], b[0]], axis=1)
    cv2.imwrite(str(folder / "000000000007.png"), two)
    cv2.imwrite(str(folder / "single.jpg"), a[0], [cv2.IMWRITE_JPEG_QUALITY, 95])
    jb_shifted = jb[0] + [320.0, 0.0]
    dets = [
        {"image_id": 7, "category_id": 1, "bbox": truth_boxes(ja)[0].tolist(), "score": 0.9},
        {"image_id": 7, "category_id": 1, "bbox": truth_boxes(jb_shifted[None])[0].tolist(), "score": 0.8},
        {"image_id": "single", "category_id": 1, "bbox": truth_boxes(ja)[0].tolist(), "score": 0.95},
        {"image_id": 7, "category_id": 2, "bbox": [0, 0, 10, 10], "score": 1.0},  # not a person: ignored
    ]
    boxes = tmp_path / "dets.json"
    boxes.write_text(json.dumps(dets))
    out = tmp_path / "out"
    predictor.run([folder], out, boxes=boxes, outputs=("long", "coco", "json", "png"), report=None)
    results = json.loads((out / "images.coco.json").read_text())
    assert [(r["image_id"], r["box_source"]) for r in results] == [(7, "file"), (7, "file"), ("single", "file")]
    for r in results:
        kp = np.array(r["keypoints"]).reshape(17, 3)
        truth = ja[0] if r["bbox"][0] < 300 else jb_shifted
        assert np.median(errors(kp[:, :2], truth)) < MEDIAN_PX
    assert (out / "000000000007.overlay.png").is_file() and (out / "single.overlay.png").is_file()
    summary = json.loads((out / "images.json").read_text())
    assert summary["counts"] == {"predicted": 2, "skipped": 0, "people": 3}
    # The same single-figure image without boxes: single-subject mode finds it from the whole frame.
    found = predictor.image(folder / "single.jpg")
    assert found.box_sources == ["seed"] and np.median(errors(found.keypoints[0], ja[0])) < MEDIAN_PX
    rgb = predictor.image(a[0][:, :, ::-1], boxes=[truth_boxes(ja)[0]])
    assert rgb.box_sources == ["file"] and np.median(errors(rgb.keypoints[0], ja[0])) < MEDIAN_PX
    # The same through the inference API's PoseModel.
    same = aggpose_jax.load(MODEL).predictor().image(a[0][:, :, ::-1], boxes=[truth_boxes(ja)[0]])
    np.testing.assert_allclose(same.keypoints, rgb.keypoints, atol=1e-4)


def test_subject_lost_then_seeded_again(predictor: Predictor, tmp_path: Path) -> None:
    frames, joints = animate_figure(24, seed=0)
    frames = frames.copy()
    frames[10:16] = cv2.blur(frames[10:16].reshape(-1, 320, 3), (41, 41)).reshape(6, 240, 320, 3)  # subject gone
    path = tmp_path / "lost.mp4"
    write_video(path, frames, np.arange(24) / 25.0)
    res = predictor.video(path)
    sources = list(res.box_sources)
    assert res.stats["reseeds"] >= 1 and "seed" in sources[10:]
    assert res.scores[11:15].mean() < 0.25  # nobody there
    after = [i for i in range(16, 24) if sources[i] in ("seed", "track")]
    assert np.median(errors(res.keypoints[after], joints[after])) < MEDIAN_PX  # found again


def test_a_crash_keeps_what_was_done(predictor: Predictor, clip: dict, tmp_path: Path, monkeypatch) -> None:
    calls = {"n": 0}
    real = predictor.engine.dispatch

    def failing(images: np.ndarray):
        calls["n"] += 1
        if calls["n"] > 4:  # the warm-up (compile) call, then three batches of 4 frames
            raise RuntimeError("simulated crash")
        return real(images)

    monkeypatch.setattr(predictor.engine, "dispatch", failing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        predictor.run([clip["path"]], tmp_path, boxes=clip["boxes"], report=None)
    rows = read_csv(tmp_path / "clip.keypoints.csv")
    assert len(rows) >= 17 * 8 and len(rows) % 17 == 0  # the frames finished before the crash
    assert json.loads((tmp_path / "clip.json").read_text())["complete"] is False
