"""Video and image inputs, and overlay-video output, with OpenCV (FFmpeg backend).

Frame times are the presentation timestamps stored in the container, not ``index / fps``: variable-
frame-rate videos (phones, action cameras) keep their true times, and a stream that starts at an offset
(a cut recording, a second camera) keeps it, so times can be matched with other sensors. OpenCV's
``CAP_PROP_POS_MSEC`` (read after each frame is decoded) counts from the stream's start; the start itself
comes from PyAV (``av``, when installed: exact) or else from OpenCV's ``CAP_PROP_PTS`` (whole frames at
the nominal rate: within half a frame). OpenCV's times were checked against PyAV's (``frame.time``) on
variable-frame-rate MP4 / MOV / MKV / AVI files (H.264 with B-frames and MPEG-4 part 2): identical to
within 0.01 ms (MKV stores milliseconds), the start added.

A reader also tells whether the whole video was decoded (:meth:`VideoReader.completeness`): the frames
decoded against the container's frame count and duration, and FFmpeg's own error messages while it
decoded, when :class:`NativeLog` keeps them (off the console, in a file).

Every input or output problem raises :class:`VideoError` (a ValueError) with a one-line message that
names the file.
"""

from __future__ import annotations

import dataclasses
import fractions
import io
import math
import os
import re
import sys
import tempfile
import threading
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Self

import cv2
import numpy as np

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
VIDEO_EXTENSIONS: frozenset[str] = frozenset(
    {".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".3gp", ".mts", ".m2ts", ".flv"}
)

Frame = tuple[int, float, np.ndarray]


class VideoError(ValueError):
    """A video / image input or output path cannot be used (missing, unreadable, empty, unwritable)."""


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    """What the container says about a video.

    Attributes:
      path: the file.
      fps: nominal frame rate stored in the container (for a variable-frame-rate video, an average or
        the container's base rate); None if the container gives none. Use the per-frame times instead.
      width, height: size of the decoded frames in pixels (taken from the first frame, so any rotation
        OpenCV applies from the container's metadata is included).
      frame_count: frame count stored in the container, None if it gives none; for some containers
        (MKV, AVI) it is an estimate. Iterating yields the frames actually decoded.
      start_time_s: presentation time of the stream's first frame in the container (0 for most files;
        frame times include it).
      start_time_source: where ``start_time_s`` comes from: 'pyav' (exact), 'opencv' (whole frames at the
        nominal rate, within half a frame) or 'none' (no timestamps: 0 assumed).
      duration_s: the container's duration (None if it gives none; PyAV's when installed, else
        ``frame_count / fps``).
    """

    path: str
    fps: float | None
    width: int
    height: int
    frame_count: int | None
    start_time_s: float = 0.0
    start_time_source: str = "none"
    duration_s: float | None = None


def is_image(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` has an image extension (case-insensitive); the file is not opened."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def is_video(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` has a video extension (case-insensitive); the file is not opened."""
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def list_inputs(paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Expand files and folders into a list of image and video files.

    Files are kept in the given order and must have an image or video extension. A folder contributes
    its images and videos (not its sub-folders, not hidden files), sorted by name; a folder with none
    is an error, as is a missing path.
    """
    items = [paths] if isinstance(paths, str | os.PathLike) else list(paths)
    result: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = sorted(
                p for p in path.iterdir() if p.is_file() and not p.name.startswith(".") and (is_image(p) or is_video(p))
            )
            if not found:
                raise VideoError(f"{path}: folder holds no image or video files")
            result.extend(found)
        elif path.is_file():
            if not (is_image(path) or is_video(path)):
                raise VideoError(f"{path}: not an image or video file (unknown extension '{path.suffix}')")
            result.append(path)
        else:
            raise VideoError(f"{path}: no such file or folder")
    return result


_FFMPEG_LINE = re.compile(r"^\[[^\]\n]+ @ (0x)?[0-9a-fA-F]+\] ", re.M)


class NativeLog:
    """Keeps what native libraries (FFmpeg, OpenCV, XLA) print to the process's stderr off the console.

    While active (``with NativeLog() as log:``), file descriptor 2 goes to a temporary file and Python's
    ``sys.stderr`` keeps the console (when it was the process's stderr), so a command's own lines (errors,
    warnings, the progress bar) are not preceded by FFmpeg's. :meth:`save` writes what was kept;
    :meth:`ffmpeg_messages` counts FFmpeg's lines (``[decoder @ 0x...] ...``) written since a position.
    Nested uses share the outer one. Not for several threads entering at once.
    """

    _active: ClassVar[NativeLog | None] = None
    _lock = threading.Lock()

    def __init__(self) -> None:
        self._file: Any = None
        self._saved_fd: int | None = None
        self._saved_stderr: Any = None
        self._outer: NativeLog | None = None

    @classmethod
    def active(cls) -> NativeLog | None:
        """The capture in effect, if any."""
        return cls._active

    def __enter__(self) -> NativeLog:
        with NativeLog._lock:
            if NativeLog._active is not None:
                self._outer = NativeLog._active
                return self._outer
            try:
                sys.stderr.flush()
            except (AttributeError, OSError, ValueError):
                pass
            self._file = tempfile.TemporaryFile()
            self._saved_fd = os.dup(2)
            swap = sys.stderr is sys.__stderr__ and _fileno(sys.stderr) == 2
            os.dup2(self._file.fileno(), 2)
            if swap:
                self._saved_stderr = sys.stderr
                console = io.FileIO(os.dup(self._saved_fd), "w")
                encoding = getattr(sys.stderr, "encoding", None) or "utf-8"
                sys.stderr = io.TextIOWrapper(
                    console, encoding=encoding, errors="backslashreplace", line_buffering=True
                )
            NativeLog._active = self
            return self

    def __exit__(self, *exc: object) -> None:
        if self._outer is not None:
            return
        with NativeLog._lock:
            if self._saved_stderr is not None:
                try:
                    sys.stderr.flush()
                    sys.stderr.close()
                finally:
                    sys.stderr, self._saved_stderr = self._saved_stderr, None
            if self._saved_fd is not None:
                os.dup2(self._saved_fd, 2)
                os.close(self._saved_fd)
                self._saved_fd = None
            NativeLog._active = None

    def position(self) -> int:
        """Bytes kept so far."""
        return os.fstat(self._file.fileno()).st_size if self._file is not None else 0

    def text(self, start: int = 0) -> str:
        """What was kept from byte ``start`` on."""
        if self._file is None:
            return ""
        size = self.position()
        return os.pread(self._file.fileno(), max(0, size - start), start).decode("utf-8", "replace")

    def ffmpeg_messages(self, start: int = 0) -> int:
        """FFmpeg's own lines (``[name @ 0x...] message``) kept from byte ``start`` on."""
        return len(_FFMPEG_LINE.findall(self.text(start)))

    def save(self, path: str | os.PathLike[str]) -> bool:
        """Write what was kept to ``path`` (nothing when nothing was kept); returns whether it wrote."""
        text = self.text()
        if not text.strip():
            return False
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return True

    def close(self) -> None:
        if self._file is not None and NativeLog._active is not self:
            self._file.close()
            self._file = None


def _fileno(stream: Any) -> int | None:
    try:
        return int(stream.fileno())
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None


def pyav_available() -> bool:
    """Whether PyAV (``av``) can be imported: exact container start times and H.264 overlay videos."""
    try:
        import av  # noqa: F401  (optional: pip install av)
    except ImportError:
        return False
    return True


def _probe_pyav(path: str) -> dict[str, Any] | None:
    """The video stream's start time, duration and indexed frame count from PyAV, or None without PyAV
    (or when it cannot open the file)."""
    try:
        import av  # optional dependency (pip install av): exact container times
    except ImportError:
        return None
    try:
        with av.open(path) as container:
            if not container.streams.video:
                return None
            stream = container.streams.video[0]
            tb = stream.time_base
            start = float(stream.start_time * tb) if stream.start_time is not None and tb else None
            if stream.duration and tb:
                duration = float(stream.duration * tb)
            elif container.duration:
                duration = container.duration / 1e6
            else:
                duration = None
            return {"start": start, "duration": duration, "frames": int(stream.frames or 0) or None}
    except Exception:  # noqa: BLE001 - PyAV raises many kinds; OpenCV's view is used then
        return None


class VideoReader:
    """Decode a video's frames with their container timestamps.

    Opening reads the first frame, so a missing, unreadable or frame-less file fails here with a
    :class:`VideoError`. Iterate once for ``(index, time_s, frame)``: ``frame`` is a BGR uint8 array
    (H, W, 3) and ``time_s`` its presentation time in the container, in seconds (the stream's start
    time included, see :class:`VideoInfo`). The capture is released when the iteration ends, on
    :meth:`close`, or when used as a context manager. After the iteration, :meth:`completeness` tells
    whether every frame the container announces was decoded.

    Times are expected to increase strictly. Should the container give a time that does not (a broken
    or timestamp-less stream), that frame gets the previous time plus one nominal frame interval
    (``1 / fps``, or 1/30 s without fps), a warning is issued once and ``repaired_times`` counts it.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = str(path)
        if not os.path.exists(self.path):
            raise VideoError(f"{self.path}: no such file")
        if os.path.isdir(self.path):
            raise VideoError(f"{self.path}: is a folder, not a video file")
        if os.path.getsize(self.path) == 0:
            raise VideoError(f"{self.path}: empty file (0 bytes), not a video")
        log = NativeLog.active()
        self._log_start = log.position() if log is not None else None
        self._cap: Any = cv2.VideoCapture(self.path, cv2.CAP_FFMPEG)
        if not self._cap.isOpened():
            self._cap.release()
            raise VideoError(f"{self.path}: not a readable video (OpenCV/FFmpeg cannot open it)")
        fps = float(self._cap.get(cv2.CAP_PROP_FPS))
        count = int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT))
        ok, frame = self._cap.read()
        if not ok or frame is None:
            self._cap.release()
            raise VideoError(f"{self.path}: video has no frames")
        self._fps = fps if math.isfinite(fps) and fps > 0 else None
        count = count if count > 0 else None
        relative = float(self._cap.get(cv2.CAP_PROP_POS_MSEC)) / 1000.0
        probe = _probe_pyav(self.path)
        if probe is not None and probe["start"] is not None and math.isfinite(probe["start"]):
            start, source = probe["start"], "pyav"
        else:
            start, source = self._opencv_start(relative)
        duration = probe["duration"] if probe is not None and probe["duration"] else None
        if duration is None and count and self._fps:
            duration = count / self._fps
        self._start = start
        self.info = VideoInfo(
            path=self.path,
            fps=self._fps,
            width=int(frame.shape[1]),
            height=int(frame.shape[0]),
            frame_count=count,
            start_time_s=start,
            start_time_source=source,
            duration_s=duration,
        )
        self._count_indexed = probe is not None and probe["frames"] is not None and probe["frames"] == count
        self.repaired_times = 0
        self.frames_decoded = 0
        self.finished = False  # the decoder reported the end (not a stop part-way by the consumer)
        self.decoder_messages: int | None = None
        self._last_time: float | None = None
        self._first: np.ndarray | None = frame
        self._first_time = self._container_time(relative)
        self._started = False

    def _opencv_start(self, relative_s: float) -> tuple[float, str]:
        """The stream's start from OpenCV: ``CAP_PROP_PTS`` counts whole frames at the nominal rate."""
        pts = float(self._cap.get(cv2.CAP_PROP_PTS))
        if not (self._fps and math.isfinite(pts) and pts >= 0):
            return 0.0, "none"
        start = pts / self._fps - relative_s
        return (round(start, 6) if start > 0.5 / self._fps else 0.0), "opencv"

    def _container_time(self, relative_s: float | None = None) -> float:
        if relative_s is None:
            relative_s = float(self._cap.get(cv2.CAP_PROP_POS_MSEC)) / 1000.0
        t = relative_s + self._start if math.isfinite(relative_s) else relative_s
        last = self._last_time
        if not math.isfinite(t) or (last is not None and t <= last) or (last is None and relative_s < 0):
            repaired = self._start if last is None else last + 1.0 / (self._fps or 30.0)
            if self.repaired_times == 0:
                warnings.warn(
                    f"{self.path}: container time {t:.6f} s is not after the previous frame's; "
                    f"using {repaired:.6f} s (further repairs counted in repaired_times)",
                    stacklevel=3,
                )
            self.repaired_times += 1
            t = repaired
        self._last_time = t
        return t

    def __iter__(self) -> Iterator[Frame]:
        if self._started:
            raise RuntimeError(f"{self.path}: a VideoReader can be iterated only once")
        self._started = True
        return self._frames()

    def _frames(self) -> Iterator[Frame]:
        try:
            if self._first is None:  # closed before iterating
                return
            first, self._first = self._first, None
            self.frames_decoded = 1
            yield 0, self._first_time, first
            index = 1
            while True:
                ok, frame = self._cap.read()
                if not ok or frame is None:
                    self.finished = True
                    return
                self.frames_decoded += 1
                yield index, self._container_time(), frame
                index += 1
        finally:
            self.close()

    def close(self) -> None:
        """Release the capture (idempotent)."""
        self._first = None
        self._cap.release()
        log = NativeLog.active()
        if self.decoder_messages is None and log is not None and self._log_start is not None:
            self.decoder_messages = log.ffmpeg_messages(self._log_start)

    def completeness(self) -> dict[str, Any]:
        """Whether the whole video was decoded (call after the iteration), as a JSON-ready dict.

        ``complete`` is False when the decoder stopped short of the container's frame count (beyond what
        an estimated count may be off by: 2 frames or 2 %, none for an indexed count read by PyAV) and
        the decoded frames also end short of the container's duration; ``frames_missing`` says by how
        many. ``decoder_messages``: FFmpeg's error lines while this video was decoded (None when they were
        not kept, see :class:`NativeLog`).
        """
        info, decoded = self.info, self.frames_decoded
        count = info.frame_count
        missing = max(0, count - decoded) if count else 0
        short = False
        if self.finished and count:
            tolerance = 0 if self._count_indexed else max(2, count // 50)
            short = missing > tolerance
            if short and info.duration_s and self._last_time is not None:
                step = 1.0 / (info.fps or 30.0)
                end = self._last_time + step  # the end of the last decoded frame, container time
                # Containers give the duration from the start (MP4) or as the end time (MKV): either fits.
                short = end < min(info.duration_s, info.start_time_s + info.duration_s) - 1.5 * step
        return {
            "complete": not short and (self.finished or not self._started),
            "frames_decoded": decoded,
            "frame_count_container": count,
            "frames_missing": missing if short else 0,
            "duration_container_s": info.duration_s,
            "decoded_until_s": None if self._last_time is None else self._last_time,
            "decoder_messages": self.decoder_messages,
            "stopped_early": self._started and not self.finished,
        }

    def count_frames(self) -> int:
        """Count the frames by reading the whole file once more (PyAV: packets only; OpenCV: grab)."""
        try:
            import av  # optional: counting packets needs no decoding
        except ImportError:
            av = None
        if av is not None:
            try:
                with av.open(self.path) as container:
                    return sum(1 for p in container.demux(video=0) if p.size)
            except Exception:  # noqa: BLE001 - fall back to OpenCV
                pass
        cap = cv2.VideoCapture(self.path, cv2.CAP_FFMPEG)
        n = 0
        try:
            while cap.grab():
                n += 1
        finally:
            cap.release()
        return n

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def open_video(path: str | os.PathLike[str]) -> tuple[VideoInfo, Iterator[Frame]]:
    """Open a video: (:class:`VideoInfo`, iterator of ``(index, time_s, frame_bgr)``).

    Errors (missing file, not a video, no frames) are raised here, not during iteration. The file is
    closed when the iterator is exhausted or closed (``iterator.close()``).
    """
    reader = VideoReader(path)
    return reader.info, iter(reader)


_H264: dict[str, str | None] = {}


def h264_encoder() -> str | None:
    """Which installed library can write H.264 (the codec browsers and slide programs play): 'pyav'
    (PyAV's libx264), 'opencv' (an OpenCV build whose FFmpeg has an H.264 encoder; the PyPI wheels have
    none) or None. Probed once per process; OpenCV's probe messages go to fd 2 (see :class:`NativeLog`)."""
    if "found" in _H264:
        return _H264["found"]
    found = None
    try:
        import av  # optional (pip install av): H.264 through libx264

        av.codec.Codec("libx264", "w")
        found = "pyav"
    except Exception:  # noqa: BLE001 - no PyAV, or a build without libx264
        found = None
    if found is None:
        with tempfile.TemporaryDirectory() as tmp:
            probe = cv2.VideoWriter(
                os.path.join(tmp, "probe.mp4"), cv2.CAP_FFMPEG, cv2.VideoWriter_fourcc(*"avc1"), 25.0, (64, 48)
            )
            if probe.isOpened():
                found = "opencv"
            probe.release()
    _H264["found"] = found
    return found


class VideoWriter:
    """Write BGR uint8 frames to a video file, constant rate ``fps``: frame ``i`` is shown at ``i / fps``.

    ``codec='h264'`` writes H.264 (plays in browsers and slide programs) with PyAV's libx264 or an OpenCV
    build that has it (:func:`h264_encoder`), and raises :class:`VideoError` when neither is installed.
    Otherwise OpenCV writes ``fourcc`` ('mp4v': MPEG-4 part 2 in .mp4, which desktop players play but
    many browsers do not; 'MJPG' in .avi). ``codec_name`` says what was written. Use as a context
    manager, or call :meth:`close`.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        fps: float,
        frame_size: tuple[int, int],
        fourcc: str = "mp4v",
        codec: str | None = None,
    ) -> None:
        """``frame_size`` is (width, height) in pixels, as in OpenCV."""
        self.path = str(path)
        try:
            rate = float(fps)
        except (TypeError, ValueError):
            rate = math.nan
        if not (math.isfinite(rate) and rate > 0):
            raise VideoError(f"{self.path}: fps must be a positive number, got {fps!r}")
        width, height = (int(v) for v in frame_size)
        if width <= 0 or height <= 0:
            raise VideoError(f"{self.path}: frame_size must be positive (width, height), got {frame_size!r}")
        if codec not in (None, "h264"):
            raise VideoError(f"{self.path}: codec must be None or 'h264', got {codec!r}")
        if codec is None and len(fourcc) != 4:
            raise VideoError(f"{self.path}: fourcc must have 4 characters, got {fourcc!r}")
        self.fps = rate
        self.frame_size = (width, height)
        self.frames_written = 0
        parent = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(parent):
            raise VideoError(f"{self.path}: cannot write video, folder {parent} does not exist")
        self._av: Any = None
        self._writer: Any = None
        encoder = None
        if codec == "h264":
            encoder = h264_encoder()
            if encoder is None:
                raise VideoError(f"{self.path}: no H.264 encoder installed (pip install av gives one)")
            if os.path.isdir(self.path):
                raise VideoError(f"{self.path}: cannot open for writing (a folder of that name exists)")
        if encoder == "pyav":
            self._open_pyav()
            self.codec_name = "h264"
            return
        tag = "avc1" if encoder == "opencv" else fourcc
        self.codec_name = {"avc1": "h264", "mp4v": "mpeg4", "MJPG": "mjpeg"}.get(tag, tag)
        self._writer = cv2.VideoWriter(
            self.path, cv2.CAP_FFMPEG, cv2.VideoWriter_fourcc(*tag), self.fps, self.frame_size
        )
        if not self._writer.isOpened():
            self._writer.release()
            raise VideoError(
                f"{self.path}: cannot open for writing with fourcc '{tag}' "
                "(check that the path is writable and its extension is a video container such as .mp4 or .avi)"
            )

    def _open_pyav(self) -> None:
        import av  # optional dependency (pip install av): present, h264_encoder() said so

        width, height = self.frame_size
        self._rate = fractions.Fraction(round(self.fps * 1000), 1000)
        try:
            self._av = av.open(self.path, "w", options={"movflags": "+faststart"})
            stream = self._av.add_stream("libx264", rate=self._rate, options={"crf": "20", "preset": "veryfast"})
        except Exception as err:  # noqa: BLE001 - PyAV's errors name no path
            raise VideoError(f"{self.path}: cannot open for writing ({err})") from None
        stream.width, stream.height = width + width % 2, height + height % 2  # yuv420p needs even sizes
        stream.pix_fmt = "yuv420p"
        self._stream = stream

    def write(self, frame: np.ndarray) -> None:
        """Append one BGR uint8 frame of shape (height, width, 3)."""
        width, height = self.frame_size
        if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.shape != (height, width, 3):
            got = f"{frame.dtype} {frame.shape}" if isinstance(frame, np.ndarray) else type(frame).__name__
            raise ValueError(f"{self.path}: frames must be uint8 ({height}, {width}, 3) BGR arrays, got {got}")
        if self._av is not None:
            import av  # optional: present when this writer was opened with it

            padded = cv2.copyMakeBorder(frame, 0, height % 2, 0, width % 2, cv2.BORDER_CONSTANT)
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(padded), format="bgr24")
            vf.pts, vf.time_base = self.frames_written, 1 / self._rate
            try:
                for packet in self._stream.encode(vf):
                    self._av.mux(packet)
            except OSError as err:
                raise OSError(err.errno, err.strerror or str(err), self.path) from None
            self.frames_written += 1
            return
        if self._writer is None or not self._writer.isOpened():
            raise VideoError(f"{self.path}: writer is closed")
        self._writer.write(np.ascontiguousarray(frame))
        self.frames_written += 1

    def close(self) -> None:
        """Finish the file (idempotent)."""
        if self._av is not None:
            container, self._av = self._av, None
            try:
                for packet in self._stream.encode(None):
                    container.mux(packet)
            finally:
                container.close()
        if self._writer is not None:
            self._writer.release()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
