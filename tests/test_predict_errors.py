"""aggpose-predict on bad input: every error is one line on stderr with exit status 2, no traceback;
an undecodable image is skipped, counted and reported instead."""

from __future__ import annotations

import fractions
import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from aggpose_jax.data.synthetic import animate_figure
from aggpose_jax.predict import cli

av = pytest.importorskip("av")

MODEL = str(Path(__file__).resolve().parent / "fixtures" / "synthetic_tiny17")


def run_cli(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, err: str, *needles: str) -> str:
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("aggpose-predict: error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def small_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 frames, 25 fps, one figure."""
    frames, _ = animate_figure(12, seed=2, image_size=(120, 160))
    path = tmp_path_factory.mktemp("video") / "small.mp4"
    tb = fractions.Fraction(1, 1000)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
        stream.time_base = tb
        stream.codec_context.time_base = tb
        for i, frame in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(frame, format="bgr24")
            vf.pts, vf.time_base = i * 40, tb
            container.mux(stream.encode(vf))
        container.mux(stream.encode(None))
    return path


def test_unreadable_video(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(os.urandom(4096))
    code, _, err = run_cli([str(bad), "--model", MODEL, "--out", str(tmp_path / "o")], capsys)
    assert_one_line_error(code, err, "broken.mp4", "not a readable video")
    assert not (tmp_path / "o").exists()  # checked before anything is written


def test_video_without_frames(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "zero.avi"
    writer = cv2.VideoWriter(str(path), cv2.CAP_FFMPEG, cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (64, 48))
    writer.release()
    code, _, err = run_cli([str(path), "--model", MODEL, "--out", str(tmp_path / "o")], capsys)
    assert_one_line_error(code, err, "zero.avi", "has no frames")


def test_boxes_file_naming_frames_the_video_lacks(small_video: Path, tmp_path: Path, capsys) -> None:
    boxes = tmp_path / "other.csv"
    boxes.write_text("frame,x,y,w,h,score\n0,10,10,50,80,0.9\n100,10,10,50,80,0.9\n140,10,10,50,80,0.9\n")
    code, _, err = run_cli([str(small_video), "--model", MODEL, "--boxes", str(boxes), "--out", str(tmp_path)], capsys)
    assert_one_line_error(code, err, "other.csv", "names frame 100..140 (2 frames)", "small.mp4 has 12 frames")


def test_boxes_file_one_frame_too_far_is_found_before_the_model_runs(small_video: Path, tmp_path: Path, capsys) -> None:
    # Frame 12 is within what a container's frame count may be off by: the frames are counted exactly
    # before the model runs, and nothing is written.
    boxes = tmp_path / "off_by_one.csv"
    boxes.write_text("".join(f"{i + 1},20,10,60,100,0.9\n" for i in range(12)))  # 1-based by mistake
    out = tmp_path / "out"
    code, _, err = run_cli(
        [str(small_video), "--model", MODEL, "--boxes", str(boxes), "--out", str(out), "--quiet"], capsys
    )
    assert_one_line_error(code, err, "names frame 12", "has 12 frames (0..11)", "1-based")
    assert not out.exists()


def test_undecodable_image_is_skipped_counted_and_reported(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    frames, _ = animate_figure(1, seed=4, image_size=(120, 160))
    cv2.imwrite(str(folder / "good.png"), frames[0])
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    out = tmp_path / "out"
    code, stdout, err = run_cli([str(folder), "--model", MODEL, "--region", "0,0,160,120", "--out", str(out)], capsys)
    assert code == 3, err  # the others are done; 3 says some input was not
    assert "aggpose-predict: warning: corrupt.jpg: skipped: cannot read or decode the image" in err
    assert "1 predicted, 1 skipped" in stdout
    run = json.loads((out / "aggpose-predict.json").read_text())
    assert [(i["path"].endswith("corrupt.jpg"), i["status"]) for i in run["inputs"]] == [
        (True, "skipped"),
        (False, "done"),
    ]
    summary = json.loads((out / "images.json").read_text())
    assert summary["counts"]["skipped"] == 1 and summary["skipped"][0]["image"] == "corrupt.jpg"
    results = json.loads((out / "images.coco.json").read_text())
    assert [r["image_id"] for r in results] == ["good"] and results[0]["box_source"] == "region"


def test_image_with_several_people_needs_boxes(tmp_path: Path, capsys) -> None:
    a, _ = animate_figure(1, seed=0, height_fraction=0.6)
    b, _ = animate_figure(1, seed=10, height_fraction=0.6)
    path = tmp_path / "two.png"
    cv2.imwrite(str(path), np.concatenate([a[0], b[0]], axis=1))
    code, _, err = run_cli([str(path), "--model", MODEL, "--out", str(tmp_path / "o"), "--quiet"], capsys)
    assert code == 3 and "Traceback" not in err
    assert "two.png: skipped: the image shows several people; give their boxes (--boxes FILE)" in err
    summary = json.loads((tmp_path / "o" / "images.json").read_text())
    assert summary["complete"] is True and summary["skipped"][0]["reason"].startswith("the image shows several")


def test_output_folder_that_cannot_be_written(small_video: Path, tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    code, _, err = run_cli([str(small_video), "--model", MODEL, "--out", str(blocker / "results")], capsys)
    assert_one_line_error(code, err, "cannot write results there")


@pytest.mark.parametrize(
    ("extra", "needles"),
    [
        (["--model", "/nonexistent/model"], ("/nonexistent/model", "no such file")),
        (["--smooth", "median:window=3"], ("unknown smoothing 'median'",)),
        (["--smooth", "butterworth:cutoff=3"], ("unknown ['cutoff']",)),
        (["--region", "1,2,3"], ("expected X,Y,W,H",)),
        (["--outputs", "long,csv2"], ("unknown output 'csv2'",)),
        (["--no-such-option"], ("unrecognized arguments",)),
    ],
)
def test_bad_arguments(small_video: Path, tmp_path: Path, capsys, extra: list[str], needles: tuple[str, ...]) -> None:
    argv = [str(small_video), "--out", str(tmp_path / "o")]
    argv += extra if "--model" in extra else ["--model", MODEL, *extra]
    code, _, err = run_cli(argv, capsys)
    assert_one_line_error(code, err, *needles)


def test_bad_boxes_files(small_video: Path, tmp_path: Path, capsys) -> None:
    cases = {
        "bad.json": ('{"image_id": 0}', "expected a list of COCO detections"),
        "bad2.json": ('[{"image_id": 0, "bbox": [1, 2, 0, 4]}]', "entry 0: box width and height must be > 0"),
        "bad.csv": ("frame,x,y,w,h\n0,1,2,three,4\n", "line 2: w must be a number"),
        "names.csv": ("frame,x,y,w,h\nabc,1,2,3,4\n", "names 'abc', not a frame index"),
    }
    for name, (text, needle) in cases.items():
        path = tmp_path / name
        path.write_text(text)
        argv = [str(small_video), "--model", MODEL, "--boxes", str(path), "--out", str(tmp_path / "o")]
        code, _, err = run_cli(argv, capsys)
        assert_one_line_error(code, err, name, needle)


def test_missing_input_and_module_entry_point(tmp_path: Path, capsys) -> None:
    code, _, err = run_cli([str(tmp_path / "nope.mp4"), "--model", MODEL, "--out", str(tmp_path)], capsys)
    assert_one_line_error(code, err, "nope.mp4: no such file or folder")
