"""Video reading with container timestamps, input listing, overlay-video writing, and their errors."""

from __future__ import annotations

import fractions
from pathlib import Path

import cv2
import numpy as np
import pytest

from aggpose_jax.predict import video as vid
from aggpose_jax.predict.video import VideoError


def _gray(value: int, width: int = 64, height: int = 48) -> np.ndarray:
    frame = np.full((height, width, 3), value, np.uint8)
    frame[: height // 2, : width // 2] = 255 - value  # some structure, so the encoder has edges to code
    return frame


def _write_cfr(path: Path, n: int = 20, fps: float = 25.0) -> None:
    with vid.VideoWriter(path, fps, (64, 48)) as writer:
        for i in range(n):
            writer.write(_gray(10 * i))
        assert writer.frames_written == n


def test_opencv_roundtrip(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    _write_cfr(path)
    info, frames = vid.open_video(path)
    assert (info.path, info.fps, info.width, info.height, info.frame_count) == (str(path), 25.0, 64, 48, 20)
    assert info.start_time_s == 0.0 and info.duration_s == pytest.approx(0.8)
    frames = list(frames)
    assert [i for i, _, _ in frames] == list(range(20))
    times = np.array([t for _, t, _ in frames])
    assert np.all(np.diff(times) > 0)
    np.testing.assert_allclose(times, np.arange(20) / 25.0, rtol=0, atol=1e-3)
    for i, _, frame in frames:
        assert frame.shape == (48, 64, 3) and frame.dtype == np.uint8
        assert abs(float(frame[30:, 40:].mean()) - 10 * i) < 8  # the right frame at the right time (lossy codec)


def _write_vfr_pyav(path: Path, times: np.ndarray, codec: str, offset_s: float = 0.0) -> None:
    av = pytest.importorskip("av")
    time_base = fractions.Fraction(1, 1000)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=30)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.time_base = time_base
        stream.codec_context.time_base = time_base
        for i, t in enumerate(times):
            frame = av.VideoFrame.from_ndarray(_gray(4 * i), format="bgr24")
            frame.pts = round((t + offset_s) * 1000)
            frame.time_base = time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


@pytest.mark.parametrize(("codec", "offset_s"), [("mpeg4", 0.0), ("mpeg4", 0.5), ("libx264", 0.0)])
def test_variable_frame_rate_times_come_from_the_container(tmp_path: Path, codec: str, offset_s: float) -> None:
    av = pytest.importorskip("av")
    if codec not in av.codecs_available:
        pytest.skip(f"PyAV build without {codec}")
    rng = np.random.default_rng(7)
    steps = rng.choice([0.020, 0.033, 0.040, 0.067, 0.1, 0.25], size=39)  # 30-50 fps with pauses
    times = np.round(np.concatenate([[0.0], np.cumsum(steps)]), 3)
    path = tmp_path / f"vfr_{codec}.mp4"
    _write_vfr_pyav(path, times, codec, offset_s)  # libx264 adds B-frames (decode order != display order)
    info, frames = vid.open_video(path)
    frames = list(frames)
    assert len(frames) == len(times) and info.frame_count == len(times)
    got = np.array([t for _, t, _ in frames])
    # Times are the container's: a stream starting at 0.5 s begins at 0.5 s.
    np.testing.assert_allclose(got, times + offset_s, rtol=0, atol=1e-3)
    assert info.start_time_s == pytest.approx(offset_s, abs=1e-6) and info.start_time_source == "pyav"
    # index / fps would be wrong by far more than a frame for this clip.
    assert np.abs(np.arange(len(times)) / info.fps - times).max() > 0.1
    assert len(frames) == info.frame_count  # the whole video
    for i, _, frame in frames:
        assert abs(float(frame[30:, 40:].mean()) - 4 * i) < 8


def test_non_increasing_container_times_are_repaired(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    _write_cfr(path, n=3)
    reader = vid.VideoReader(path)

    class FakeCapture:  # stands in for a stream with broken timestamps
        def __init__(self) -> None:
            self.ms = iter([40.0, 40.0, 30.0, 200.0])
            self.now = 0.0

        def read(self) -> tuple[bool, np.ndarray | None]:
            self.now = next(self.ms, -1.0)
            return (self.now >= 0, _gray(0) if self.now >= 0 else None)

        def get(self, prop: int) -> float:
            assert prop == cv2.CAP_PROP_POS_MSEC
            return self.now

        def release(self) -> None:
            pass

    reader._cap.release()
    reader._cap = FakeCapture()
    with pytest.warns(UserWarning, match="not after the previous frame"):
        times = [t for _, t, _ in reader]
    np.testing.assert_allclose(times, [0.0, 0.04, 0.08, 0.12, 0.2])
    assert reader.repaired_times == 2
    with pytest.raises(RuntimeError, match="only once"):
        iter(reader)


# ---------------------------------------------------------------------------------------------------
# Errors


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(VideoError, match=r"missing\.mp4: no such file"):
        vid.open_video(tmp_path / "missing.mp4")


def test_random_bytes_are_not_a_video(tmp_path: Path) -> None:
    path = tmp_path / "noise.mp4"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(VideoError, match=r"noise\.mp4: not a readable video"):
        vid.open_video(path)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.mp4"
    path.touch()
    with pytest.raises(VideoError, match=r"empty\.mp4: empty file"):
        vid.open_video(path)


def test_video_without_frames(tmp_path: Path) -> None:
    # An AVI container with a video stream and no frame: it opens, but nothing decodes.
    path = tmp_path / "zero.avi"
    writer = cv2.VideoWriter(str(path), cv2.CAP_FFMPEG, cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (64, 48))
    assert writer.isOpened()
    writer.release()
    assert path.stat().st_size > 0
    assert cv2.VideoCapture(str(path), cv2.CAP_FFMPEG).isOpened()
    with pytest.raises(VideoError, match=r"zero\.avi: video has no frames"):
        vid.open_video(path)


def test_writer_errors(tmp_path: Path) -> None:
    with pytest.raises(VideoError, match="does not exist"):
        vid.VideoWriter(tmp_path / "no_such_folder" / "out.mp4", 25.0, (64, 48))
    (tmp_path / "taken.mp4").mkdir()  # the output path is a folder: OpenCV cannot open it
    with pytest.raises(VideoError, match=r"taken\.mp4: cannot open for writing"):
        vid.VideoWriter(tmp_path / "taken.mp4", 25.0, (64, 48))
    with pytest.raises(VideoError, match=r"out\.xyz: cannot open for writing"):
        vid.VideoWriter(tmp_path / "out.xyz", 25.0, (64, 48))
    with pytest.raises(VideoError, match="fps must be a positive number"):
        vid.VideoWriter(tmp_path / "out.mp4", 0, (64, 48))
    with vid.VideoWriter(tmp_path / "out.mp4", 25.0, (64, 48)) as writer:
        with pytest.raises(ValueError, match=r"uint8 \(48, 64, 3\)"):
            writer.write(np.zeros((64, 48, 3), np.uint8))
        with pytest.raises(ValueError, match="uint8"):
            writer.write(np.zeros((48, 64, 3), np.float32))
        assert writer.frames_written == 0


# ---------------------------------------------------------------------------------------------------
# Input listing


def test_is_video_and_is_image() -> None:
    assert vid.is_video("a/b/clip.MP4") and vid.is_video("x.mov") and not vid.is_video("x.png")
    assert vid.is_image("photo.JPG") and vid.is_image("p.png") and not vid.is_image("clip.avi")
    assert not vid.is_image("notes.txt") and not vid.is_video("notes.txt")


def test_list_inputs(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ["b.mp4", "a.png", "C.jpg", "notes.txt", ".hidden.jpg"]:
        (folder / name).touch()
    (folder / "sub").mkdir()
    (folder / "sub" / "deep.mp4").touch()
    single = tmp_path / "z.avi"
    single.touch()
    assert vid.list_inputs([single, folder]) == [single, folder / "C.jpg", folder / "a.png", folder / "b.mp4"]
    assert vid.list_inputs(str(folder)) == [folder / "C.jpg", folder / "a.png", folder / "b.mp4"]
    with pytest.raises(VideoError, match=r"nothere: no such file or folder"):
        vid.list_inputs([single, tmp_path / "nothere"])
    with pytest.raises(VideoError, match=r"notes\.txt: not an image or video"):
        vid.list_inputs([folder / "notes.txt"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(VideoError, match=r"empty: folder holds no image or video files"):
        vid.list_inputs(tmp_path / "empty")
