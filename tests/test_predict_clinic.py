"""aggpose-predict on the recordings a clinic makes (issue 16): never silently wrong.

Each case is a generated clip or photo, and each test asserts what a user of the results needs (which
person the keypoints belong to, which frames are missing, the times, the orientation, which inputs were
done), not only the exit status:

* identity: the subject hidden for 0.24 s while a second person is in view; both people in view from the
  start; a limb covered for 4 frames (the follow box must not lose it);
* incomplete video: a front-indexed MP4 cut in half; FFmpeg's lines stay off the console;
* container times: a stream starting at 0.5 s;
* photos: EXIF orientation 6, gray, 16-bit and alpha images;
* a mixed folder (good and bad photos, a good and an unreadable video);
* checks before the model runs (a filter the frame rate cannot carry, a 1-based boxes file);
* a rerun into the same folder (refused, or replaced as a whole with --overwrite);
* a full disk, the H.264 fallback, and command-line options the other tests do not cover.

Fixture model: ``tests/fixtures/synthetic_tiny17`` (see ``test_predict.py``).
"""

from __future__ import annotations

import csv
import fractions
import json
import os
import struct
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

from aggpose_jax.data.synthetic import animate_figure
from aggpose_jax.predict import cli
from aggpose_jax.predict import video as vid
from aggpose_jax.predict.images import apply_orientation, exif_orientation, read_image
from aggpose_jax.predict.runner import PredictionWarning, Predictor
from aggpose_jax.predict.subject import SeveralPeopleError

av = pytest.importorskip("av")

MODEL = Path(__file__).resolve().parent / "fixtures" / "synthetic_tiny17"
MEDIAN_PX = 4.5  # the fixture model's median joint error on these figures is ~3.4 px (see test_predict.py)
PHOTO_PX = 7.0  # a 320x240 portrait photo seeded from the whole picture: ~5.6 px stored upright
ON = 15.0  # px: a frame's keypoints are "on" a figure when their median distance to its joints is below this
ANKLES = [15, 16]


# ---------------------------------------------------------------------------------------------- helpers


def write_video(path: Path, frames: np.ndarray, times: np.ndarray, options: dict | None = None) -> np.ndarray:
    """BGR frames at the given times (ms time base, MPEG-4 part 2); returns PyAV's times read back."""
    tb = fractions.Fraction(1, 1000)
    with av.open(str(path), "w", options=options or {}) as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.time_base = tb
        stream.codec_context.time_base = tb
        stream.bit_rate = 4_000_000
        for frame, t in zip(frames, times, strict=True):
            vf = av.VideoFrame.from_ndarray(frame, format="bgr24")
            vf.pts, vf.time_base = round(t * 1000), tb
            container.mux(stream.encode(vf))
        container.mux(stream.encode(None))
    with av.open(str(path)) as container:
        return np.array([f.time for f in container.decode(video=0)], np.float64)


def two_people(n: int = 48, enter: int = 8, hide: tuple[int, int] = (16, 22)):
    """The subject (left half of a 240x640 frame); a second person in the right half from frame ``enter``
    on; a blanket over the subject in frames ``hide[0]`` to ``hide[1] - 1``. Returns frames, the subject's
    joints and the other person's joints."""
    a, ja = animate_figure(n, seed=0)
    b, jb = animate_figure(n, seed=7)
    right = b.copy()
    right[:enter] = cv2.blur(b[0], (61, 61))  # nobody there yet
    left = a.copy()
    for i in range(*hide):
        x0, y0 = np.maximum(ja[i].min(axis=0) - 25, 0).astype(int)
        x1, y1 = np.minimum(ja[i].max(axis=0) + 25, [320, 240]).astype(int)
        left[i, y0:y1, x0:x1] = (90, 110, 150)
    return np.concatenate([left, right], axis=2), ja, jb + [320.0, 0.0]


def on(keypoints: np.ndarray, joints: np.ndarray) -> np.ndarray:
    """(T,) whether each frame's keypoints are on the figure with ``joints``."""
    return np.median(np.linalg.norm(keypoints - joints, axis=-1), axis=-1) < ON


def jpeg_with_orientation(bgr: np.ndarray, orientation: int) -> bytes:
    """A JPEG of ``bgr`` whose EXIF says ``orientation`` (an APP1 segment after SOI)."""
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    entry = struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0)
    tiff = b"MM\x00*\x00\x00\x00\x08" + struct.pack(">H", 1) + entry + b"\x00\x00\x00\x00"
    app1 = b"Exif\x00\x00" + tiff
    data = buf.tobytes()
    return data[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + data[2:]


def run_cli(argv: list[str], capture: pytest.CaptureFixture) -> tuple[int, str, list[str]]:
    """(exit status, stdout, the non-empty stderr lines other than the progress bar)."""
    code = cli.main([*argv, "--model", str(MODEL)])
    out, err = capture.readouterr()
    lines = [line for line in err.splitlines() if line.strip() and "frames/s" not in line and "images/s" not in line]
    return code, out, lines


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor.load(MODEL)


@pytest.fixture(scope="module")
def small_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    frames, _ = animate_figure(12, seed=2, image_size=(120, 160))
    path = tmp_path_factory.mktemp("small") / "small.mp4"
    write_video(path, frames, np.arange(12) / 25.0)
    return path


# --------------------------------------------------------------------------------------------- identity


def test_the_subject_is_followed_through_an_occlusion_with_a_second_person(tmp_path: Path, capsys) -> None:
    """Before: the re-seed took the second person and followed them to the end (31 of 48 frames), exit 0,
    no word. Now the frames of the other person are flagged, the track returns to the subject."""
    frames, ja, jb = two_people()
    path = tmp_path / "twopeople.mp4"
    write_video(path, frames, np.arange(len(frames)) / 25.0)
    out = tmp_path / "out"
    code, stdout, err = run_cli([str(path), "--out", str(out), "--mask"], capsys)
    assert code == 0, err  # several people in view is normal: not refused
    assert len(err) == 1 and err[0].startswith("aggpose-predict: warning: twopeople.mp4: identity uncertain in frames")
    npz = np.load(out / "twopeople.npz")
    kp, flagged = npz["keypoints_raw"], npz["identity_uncertain"]
    on_subject, on_other = on(kp, ja), on(kp, jb)
    assert on_other.any()  # the second person was the only one seen during the occlusion...
    assert not (on_other & ~flagged).any()  # ...and no frame of theirs passes as the subject's
    assert set(np.flatnonzero(flagged)) <= set(range(16, 23))  # flagged only while the subject is hidden
    assert on_subject[:16].all() and on_subject[24:].all()  # the track returns to the subject
    assert np.isnan(npz["keypoints"][flagged]).all()  # masked in the processed series
    doc = json.loads((out / "twopeople.json").read_text())
    quality = doc["quality"]
    assert quality["identity_uncertain"]["frames"] == flagged.sum() == quality["excluded_frames"]
    assert quality["identity_uncertain"]["ranges"][0]["start_frame"] == int(np.flatnonzero(flagged)[0])
    assert quality["frames_all_valid_share"] <= 1 - flagged.mean() + 1e-9  # not counted as usable
    assert "identity uncertain" in stdout  # in the printed quality report too
    rows = read_csv(out / "twopeople.keypoints.csv")
    assert {int(r["frame"]) for r in rows if r["identity_uncertain"] == "1"} == set(np.flatnonzero(flagged))
    assert doc["boxes"]["frames"][int(np.flatnonzero(flagged)[0])][-1] is True


def test_several_people_from_the_start_are_followed_not_refused(predictor: Predictor, tmp_path: Path) -> None:
    frames, ja, jb = two_people(n=16, enter=0, hide=(0, 0))
    path = tmp_path / "both.mp4"
    write_video(path, frames, np.arange(16) / 25.0)
    with pytest.warns(PredictionWarning, match=r"both\.mp4: frame 0 shows several people; following the most"):
        res = predictor.video(path)
    one = on(res.keypoints, ja) if on(res.keypoints[:1], ja)[0] else on(res.keypoints, jb)
    assert one.all() and not res.identity_uncertain.any()  # one person, the same, throughout
    assert res.stats["several_people_frames"] >= 1


def test_a_limb_covered_for_a_moment_is_not_cropped_away(predictor: Predictor, tmp_path: Path) -> None:
    """Before: once the feet scored low, the follow box shrank to the upper body (64 px tall for a 185 px
    figure) and never took them in again: ankle error ~72 px after the feet were uncovered, 6.7 px in
    boxes mode. Now the ankles are found as well as with boxes from the true joints."""
    frames, joints = animate_figure(60, seed=1)
    frames = frames.copy()
    for i in range(10, 14):  # a blanket over the feet
        frames[i, int(joints[i, 13:17, 1].min()) - 4 :] = (90, 110, 150)
    path = tmp_path / "feet.mp4"
    write_video(path, frames, np.arange(60) / 25.0)
    lo, hi = joints.min(axis=1) - 15, joints.max(axis=1) + 15
    given = predictor.video(path, boxes={i: [(*lo[i], *(hi[i] - lo[i]))] for i in range(60)})
    res = predictor.video(path)

    def ankle_error(keypoints: np.ndarray) -> float:  # after the feet are uncovered; left/right swaps aside
        kp, truth = keypoints[16:][:, ANKLES], joints[16:][:, ANKLES]
        same = np.linalg.norm(kp - truth, axis=-1).mean(axis=1)
        swapped = np.linalg.norm(kp - truth[:, ::-1], axis=-1).mean(axis=1)
        return float(np.median(np.minimum(same, swapped)))

    assert ankle_error(res.keypoints) < ankle_error(given.keypoints) + 2.0 < 15.0
    height = joints[16:, :, 1].max(axis=1) - joints[16:, :, 1].min(axis=1)
    assert (res.boxes[16:, 3] >= 0.85 * height).all()  # the follow box covers the whole body again


# ------------------------------------------------------------------------------------- incomplete videos


def test_a_video_cut_in_half_is_reported_incomplete(tmp_path: Path, capfd) -> None:
    """Before: 49 of 100 frames processed, exit 0, ``complete: true``; only FFmpeg's lines hinted at it."""
    frames, _ = animate_figure(100, seed=1)
    full = tmp_path / "full.mp4"
    write_video(full, frames, np.arange(100) / 25.0, options={"movflags": "faststart"})  # index at the front
    data = full.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    code, stdout, err = run_cli([str(cut), "--out", str(out)], capfd)
    assert code == 3
    assert all(line.startswith("aggpose-predict:") for line in err), err  # no FFmpeg lines on the console
    warning = [line for line in err if "warning: cut.mp4: incomplete" in line]
    assert len(warning) == 1 and "of the container's 100 frames decoded" in warning[0]
    doc = json.loads((out / "cut.json").read_text())
    decoded = doc["video"]["n_frames"]
    assert 10 < decoded < 100 and doc["complete"] is False
    assert doc["decoding"]["frames_missing"] == 100 - decoded and doc["decoding"]["frame_count_container"] == 100
    assert doc["decoding"]["decoder_messages"] >= 1 and doc["quality"]["decoding"]["complete"] is False
    assert "INCOMPLETE" in stdout
    assert "[mov,mp4" in (out / "aggpose-predict.log").read_text()  # FFmpeg's own lines, kept beside
    run = json.loads((out / "aggpose-predict.json").read_text())
    assert run["inputs"][0]["status"] == "incomplete" and run["exit_status"] == 3
    assert "aggpose-predict.log" in run["files"]


def test_error_lines_are_not_preceded_by_opencv_lines(tmp_path: Path, capfd) -> None:
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(os.urandom(4096))
    code, _, err = run_cli([str(bad), "--out", str(tmp_path / "o")], capfd)
    assert code == 2 and err == [f"aggpose-predict: error: {bad}: not a readable video (OpenCV/FFmpeg cannot open it)"]


# ------------------------------------------------------------------------------------------------ times


def test_times_are_the_containers_with_a_start_of_half_a_second(tmp_path: Path, capsys, monkeypatch) -> None:
    """Before: ``time_s`` began at 0 and ``first_time_s`` was 0.0 for a stream starting at 0.5 s."""
    frames, _ = animate_figure(10, seed=2, image_size=(120, 160))
    path = tmp_path / "late.mp4"
    container_times = write_video(path, frames, 0.5 + np.arange(10) / 25.0)
    assert container_times[0] == pytest.approx(0.5)
    out = tmp_path / "out"
    code, _, err = run_cli([str(path), "--out", str(out), "--quiet"], capsys)
    assert code == 0, err
    rows = read_csv(out / "late.keypoints.csv")
    np.testing.assert_allclose([float(r["time_s"]) for r in rows[::17]], container_times, atol=1e-6)
    doc = json.loads((out / "late.json").read_text())
    assert doc["video"]["start_time_s"] == pytest.approx(0.5) and doc["video"]["start_time_source"] == "pyav"
    assert doc["video"]["first_time_s"] == pytest.approx(0.5)
    np.testing.assert_allclose(np.load(out / "late.npz")["times"], container_times, atol=1e-6)
    # Without PyAV, OpenCV gives the start in whole frames: within half a frame, and said so.
    monkeypatch.setattr(vid, "_probe_pyav", lambda path: None)
    with vid.VideoReader(path) as reader:
        assert reader.info.start_time_source == "opencv"
        assert abs(reader.info.start_time_s - 0.5) <= 0.5 / 25 + 1e-9
        first = next(iter(reader))[1]
    assert first == pytest.approx(reader.info.start_time_s)


# ----------------------------------------------------------------------------------------------- photos


def test_exif_orientation_matches_opencvs_reading_of_all_eight() -> None:
    img = np.zeros((40, 60, 3), np.uint8)
    img[:10, :20] = 255
    img[30:, 50:, 2] = 255
    for orientation in range(1, 9):
        data = jpeg_with_orientation(img, orientation)
        assert exif_orientation(data) == orientation
        theirs = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)  # OpenCV applies it for JPEG
        stored = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
        np.testing.assert_array_equal(apply_orientation(stored, orientation), theirs)
    ok, png = cv2.imencode(".png", img)
    assert exif_orientation(png.tobytes()) is None and exif_orientation(b"not an image") is None


def test_a_phone_photo_is_processed_upright(predictor: Predictor, tmp_path: Path, capsys) -> None:
    """Before: EXIF was ignored; the photo was processed sideways (median error 40 px against the picture
    as displayed, coordinates in stored-pixel order)."""
    shown, joints = animate_figure(1, seed=3, image_size=(320, 240))
    stored = cv2.rotate(shown[0], cv2.ROTATE_90_COUNTERCLOCKWISE)  # orientation 6: turn 90 cw to show
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "phone.jpg").write_bytes(jpeg_with_orientation(stored, 6))
    res = predictor.image(folder / "phone.jpg")  # one ImagePrediction (the people along its first axis)
    assert res.exif_orientation == 6 and res.orientation_applied and res.keypoints.shape == (1, 17, 2)
    cv2.imwrite(str(tmp_path / "upright.jpg"), shown[0], [cv2.IMWRITE_JPEG_QUALITY, 95])
    upright = predictor.image(tmp_path / "upright.jpg")  # the same picture stored upright (no EXIF)
    assert upright.exif_orientation is None and not upright.orientation_applied
    assert np.median(np.linalg.norm(res.keypoints[0] - upright.keypoints[0], axis=-1)) < 1.5
    assert np.median(np.linalg.norm(res.keypoints[0] - joints[0], axis=-1)) < PHOTO_PX  # displayed coordinates
    out = tmp_path / "out"
    code, _, err = run_cli([str(folder), "--out", str(out), "--quiet"], capsys)
    assert code == 0, err
    doc = json.loads((out / "images.json").read_text())
    assert doc["images"][0]["exif_orientation"] == 6 and doc["images"][0]["orientation_applied"] is True
    assert (doc["images"][0]["width"], doc["images"][0]["height"]) == (240, 320)
    result = json.loads((out / "images.coco.json").read_text())[0]
    kp = np.array(result["keypoints"]).reshape(17, 3)[:, :2]
    assert np.median(np.linalg.norm(kp - joints[0], axis=-1)) < PHOTO_PX
    # --ignore-exif: the stored pixels as they are, and said so.
    code, _, err = run_cli([str(folder), "--out", str(tmp_path / "raw"), "--quiet", "--ignore-exif"], capsys)
    raw = json.loads((tmp_path / "raw" / "images.json").read_text())["images"][0]
    assert code == 0 and raw["exif_orientation"] == 6 and raw["orientation_applied"] is False
    assert (raw["width"], raw["height"]) == (320, 240)


def test_gray_16_bit_and_alpha_images_still_work(predictor: Predictor, tmp_path: Path) -> None:
    img, joints = animate_figure(1, seed=5)
    gray = cv2.cvtColor(img[0], cv2.COLOR_BGR2GRAY)
    cases = {  # name: (pixels, the 8-bit BGR picture it must give the same keypoints as)
        "color.png": (img[0], None),
        "deep_color.tif": (img[0].astype(np.uint16) * 257, "color.png"),
        "alpha.png": (cv2.cvtColor(img[0], cv2.COLOR_BGR2BGRA), "color.png"),
        "gray.png": (gray, None),
        "deep_gray.png": (gray.astype(np.uint16) * 257, "gray.png"),
    }
    found = {}
    for name, (pixels, same_as) in cases.items():
        path = tmp_path / name
        assert cv2.imwrite(str(path), pixels)
        bgr, orientation = read_image(str(path))
        assert bgr.dtype == np.uint8 and bgr.shape == (240, 320, 3) and orientation is None
        found[name] = predictor.image(path).keypoints
        assert found[name].shape == (1, 17, 2) and np.isfinite(found[name]).all()
        if same_as is not None:
            np.testing.assert_allclose(found[name], found[same_as], atol=1e-3, err_msg=name)
    # The model was trained on coloured figures: gray pictures run, with what accuracy they allow.
    assert np.median(np.linalg.norm(found["color.png"][0] - joints[0], axis=-1)) < MEDIAN_PX


def test_an_image_with_several_people_raises_in_the_api(predictor: Predictor, tmp_path: Path) -> None:
    a, _ = animate_figure(1, seed=0, height_fraction=0.6)
    b, _ = animate_figure(1, seed=10, height_fraction=0.6)
    path = tmp_path / "two.png"
    cv2.imwrite(str(path), np.concatenate([a[0], b[0]], axis=1))
    with pytest.raises(SeveralPeopleError, match=r"two\.png: the image shows several people"):
        predictor.image(path)


# ------------------------------------------------------------------------------------------ mixed folder


def test_a_folder_is_not_all_or_nothing(small_clip: Path, tmp_path: Path, capsys) -> None:
    """Before: one photo with two people ended the run with exit 2 and no result for the other photos."""
    folder = tmp_path / "session"
    folder.mkdir()
    g1, j1 = animate_figure(1, seed=4)
    g2, _ = animate_figure(1, seed=5)
    a, _ = animate_figure(1, seed=0, height_fraction=0.6)
    b, _ = animate_figure(1, seed=10, height_fraction=0.6)
    cv2.imwrite(str(folder / "a_good.png"), g1[0])
    cv2.imwrite(str(folder / "b_two.png"), np.concatenate([a[0], b[0]], axis=1))
    cv2.imwrite(str(folder / "c_good.jpg"), g2[0])
    (folder / "d_corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (folder / "e_broken.mp4").write_bytes(os.urandom(4096))
    (folder / "f_clip.mp4").write_bytes(small_clip.read_bytes())
    out = tmp_path / "out"
    code, stdout, err = run_cli([str(folder), "--out", str(out)], capsys)
    assert code == 3  # documented: the others are done, some were not
    warned = {line.split(": ")[2] for line in err if ": warning: " in line}
    assert warned == {"b_two.png", "d_corrupt.jpg", "e_broken.mp4"}, err
    assert err[-1].startswith("aggpose-predict: 3 input(s) failed or skipped, 0 incomplete")
    coco = json.loads((out / "images.coco.json").read_text())
    assert sorted(r["image_id"] for r in coco) == ["a_good", "c_good"]
    kp = np.array(coco[0]["keypoints"]).reshape(17, 3)[:, :2]
    assert np.median(np.linalg.norm(kp - j1[0], axis=-1)) < MEDIAN_PX
    images = json.loads((out / "images.json").read_text())
    assert images["complete"] is True and images["counts"]["skipped"] == 2
    assert json.loads((out / "f_clip.json").read_text())["complete"] is True
    run = json.loads((out / "aggpose-predict.json").read_text())
    status = {Path(i["path"]).name: i["status"] for i in run["inputs"]}
    assert status == {
        "a_good.png": "done",
        "b_two.png": "skipped",
        "c_good.jpg": "done",
        "d_corrupt.jpg": "skipped",
        "e_broken.mp4": "failed",
        "f_clip.mp4": "done",
    }
    assert run["complete"] is True and run["exit_status"] == 3 and "f_clip.json" in run["files"]
    reasons = {Path(i["path"]).name: i.get("reason", "") for i in run["inputs"]}
    assert "several people" in reasons["b_two.png"] and "not a readable video" in reasons["e_broken.mp4"]


# --------------------------------------------------------------------------------- checks before the work


def test_problems_are_found_before_the_model_loads(small_clip: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    """Before: a Butterworth cutoff above half the frame rate, and a 1-based boxes file, failed only after
    every frame was computed; the 1-based case left files marked complete."""

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded although the plan has problems")

    monkeypatch.setattr(Predictor, "load", classmethod(no_model))
    boxes = tmp_path / "onebased.csv"
    boxes.write_text("".join(f"{i + 1},20,10,60,100,0.9\n" for i in range(12)))
    out = tmp_path / "out"
    argv = [str(small_clip), "--out", str(out), "--smooth", "butterworth:cutoff_hz=15", "--boxes", str(boxes)]
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and len(err) == 2, err  # one line each
    assert "onebased.csv: names frame 12 but" in err[0] and "1-based" in err[0]
    assert "small.mp4 (25 fps): smoothing 'butterworth': cutoff_hz=15.0 must be below half the frame rate" in err[1]
    assert not out.exists()  # nothing computed, nothing written
    code, _, err = run_cli([str(small_clip), "--out", str(out), "--smooth", "savgol:window_s=0.04"], capsys)
    assert code == 2 and "savgol" in err[0] and "(25 fps)" in err[0]


# ------------------------------------------------------------------------------------------------ reruns


def test_a_rerun_is_refused_or_replaces_the_earlier_run_as_a_whole(small_clip: Path, tmp_path: Path, capsys) -> None:
    """Before: a second run overwrote some files and left the first run's others beside them."""
    out = tmp_path / "out"
    code, _, err = run_cli([str(small_clip), "--out", str(out), "--overlay", "--quiet"], capsys)
    assert code == 0, err
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    assert {"small.overlay.mp4", "small.wide.csv", "small.npz"} <= set(first)
    argv = [str(small_clip), "--out", str(out), "--outputs", "long,json", "--smooth", "savgol", "--quiet"]
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and len(err) == 1 and "holds the results of an earlier run" in err[0]
    assert "another --out to keep both, or --overwrite" in err[0]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first  # untouched
    other = tmp_path / "renamed.mp4"
    other.write_bytes(small_clip.read_bytes())
    code, _, err = run_cli([str(other), *argv[1:], "--overwrite"], capsys)
    assert code == 0, err
    names = {p.name for p in out.iterdir()} - {"aggpose-predict.log"}
    assert names == {"renamed.keypoints.csv", "renamed.json", "aggpose-predict.json"}  # nothing of run 1 left
    assert json.loads((out / "renamed.json").read_text())["provenance"]["series"]["smooth"] == "savgol"


# --------------------------------------------------------------------------------------- smaller items


def test_a_full_disk_names_the_file(small_clip: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    """Before: 'aggpose-predict: error: [Errno 28] No space left on device', no path."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    from aggpose_jax.predict import outputs

    real = outputs._rows_file

    def full(path: str, header):
        f, _ = real(path, header)
        f.close()
        stream = open("/dev/full", "w", newline="", encoding="utf-8")  # noqa: SIM115 - every write: ENOSPC
        return stream, csv.writer(stream)

    monkeypatch.setattr(outputs, "_rows_file", full)
    out = tmp_path / "out"
    code, _, err = run_cli([str(small_clip), "--out", str(out), "--quiet"], capsys)
    assert code == 2 and len(err) == 1
    assert err[0] == f"aggpose-predict: error: {out / 'small.keypoints.csv'}: cannot write (No space left on device)"


def test_without_an_h264_encoder_the_overlay_says_so(tmp_path: Path, monkeypatch) -> None:
    from aggpose_jax.predict.outputs import overlay_codec

    assert overlay_codec() == ("h264", None)  # PyAV is installed with the test extra
    monkeypatch.setattr(vid, "_H264", {"found": None})
    codec, note = overlay_codec()
    assert codec == "mpeg4" and "MPEG-4 part 2" in note and "pip install av" in note
    with pytest.raises(vid.VideoError, match="no H.264 encoder installed"):
        vid.VideoWriter(tmp_path / "o.mp4", 25.0, (64, 48), codec="h264")
    with vid.VideoWriter(tmp_path / "o.mp4", 25.0, (64, 48)) as writer:
        assert writer.codec_name == "mpeg4"


def test_h264_overlay_of_an_odd_frame_size(tmp_path: Path) -> None:
    with vid.VideoWriter(tmp_path / "odd.mp4", 25.0, (65, 47), codec="h264") as writer:
        for i in range(5):
            writer.write(np.full((47, 65, 3), 40 * i, np.uint8))
    with av.open(str(tmp_path / "odd.mp4")) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and (stream.width, stream.height) == (66, 48)
        assert sum(1 for _ in container.decode(video=0)) == 5


# ------------------------------------------------------------------------------ more options, end to end


@pytest.fixture(scope="module")
def clip_with_boxes(tmp_path_factory: pytest.TempPathFactory) -> dict:
    frames, joints = animate_figure(16, seed=0)
    folder = tmp_path_factory.mktemp("clip16")
    path = folder / "clip.mp4"
    write_video(path, frames, np.arange(16) / 25.0)
    lo, hi = joints.min(axis=1) - 15, joints.max(axis=1) + 15
    boxes = folder / "clip.csv"
    boxes.write_text(
        "".join(
            f"{i},{a[0]:.2f},{a[1]:.2f},{b[0] - a[0]:.2f},{b[1] - a[1]:.2f},0.9\n"
            for i, (a, b) in enumerate(zip(lo, hi))
        )
    )
    return {"path": path, "boxes": boxes, "joints": joints}


def _npz_error(out: Path, joints: np.ndarray) -> float:
    return float(np.median(np.linalg.norm(np.load(out / "clip.npz")["keypoints_raw"] - joints, axis=-1)))


@pytest.mark.parametrize(
    ("extra", "check"),
    [
        (
            ["--no-flip", "--decode", "argmax", "--batch-size", "2"],
            lambda doc, err: (
                doc["provenance"]["inference"]["flip_test"] is False
                and doc["provenance"]["inference"]["decode"] == "argmax"
                and doc["provenance"]["inference"]["batch_size"] == 2
                and err < 6.5
            ),  # argmax: whole heatmap pixels (measured 5.3 px)
        ),
        (
            ["--bf16", "--keypoints", "coco", "--input-size", "128", "96"],
            lambda doc, err: (
                doc["provenance"]["inference"]["dtype"] == "bfloat16"
                and doc["provenance"]["inference"]["input_size"] == [128, 96]
                and err < MEDIAN_PX + 1.0
            ),
        ),
        (
            ["--min-box-score", "0.95"],  # every box of the file scores 0.9: none kept
            lambda doc, err: doc["boxes"]["sources"] == {"none": 16} and np.isnan(err),
        ),
    ],
)
def test_model_and_boxes_options(clip_with_boxes: dict, tmp_path: Path, capsys, extra: list[str], check) -> None:
    out = tmp_path / "out"
    argv = [str(clip_with_boxes["path"]), "--boxes", str(clip_with_boxes["boxes"]), "--out", str(out), "--quiet"]
    code, _, err = run_cli([*argv, *extra], capsys)
    assert code == 0, err
    doc = json.loads((out / "clip.json").read_text())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN keypoints in the 'none' case
        assert check(doc, _npz_error(out, clip_with_boxes["joints"])), doc["provenance"]["inference"]


def test_single_subject_and_series_options(clip_with_boxes: dict, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    argv = [str(clip_with_boxes["path"]), "--out", str(out), "--quiet", "--reseed-below", "0.99", "--seed-passes", "1"]
    argv += ["--mask", "--min-score", "0.5", "--min-stretch", "0.2", "--outputs", "long,npz,json"]
    argv += ["--keypoint-format", "openpose18", "--normalise"]
    code, _, err = run_cli(argv, capsys)
    assert code == 0, err
    assert {p.name for p in out.iterdir()} - {"aggpose-predict.log"} == {
        "clip.keypoints.csv",
        "clip.npz",
        "clip.json",
        "aggpose-predict.json",
    }
    doc = json.loads((out / "clip.json").read_text())
    subject = doc["provenance"]["inference"]["single_subject"]
    assert subject["reseed_below"] == 0.99 and subject["passes"] == 1
    assert doc["boxes"]["sources"] == {"seed": 16}  # nothing reaches 0.99: every batch is seeded again
    assert doc["quality"]["threshold"] == 0.5 and doc["quality"]["min_stretch_s"] == 0.2
    npz = np.load(out / "clip.npz")
    flagged = npz["flagged"]
    assert npz["joint_names"][1] == "Neck" and flagged.shape == (16, 18)
    assert np.isnan(npz["keypoints"][flagged]).all() and (npz["scores"][flagged] < 0.5).all()
    assert "keypoints_normalised" in npz.files
    rows = read_csv(out / "clip.keypoints.csv")
    assert {"x_raw", "flagged", "x_norm"} <= set(rows[0]) and rows[1]["joint"] == "Neck"
