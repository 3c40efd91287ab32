"""Video and image inputs, and overlay-video output, with OpenCV (FFmpeg backend).

Frame times are the presentation timestamps stored in the container, read with OpenCV's
``CAP_PROP_POS_MSEC`` after each frame is decoded, not ``index / fps``: variable-frame-rate videos
(phones, action cameras) keep their true times. Times are in seconds from the start of the video
stream, so the first frame is normally at 0 even when the container starts at an offset. OpenCV's
timestamps were checked against PyAV's (``frame.time``) on variable-frame-rate MP4 / MOV / MKV / AVI
files (H.264 with B-frames and MPEG-4 part 2): identical to within 0.01 ms (MKV stores milliseconds).

Every input or output problem raises :class:`VideoError` (a ValueError) with a one-line message that
names the file.
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Self

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
    """

    path: str
    fps: float | None
    width: int
    height: int
    frame_count: int | None


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


class VideoReader:
    """Decode a video's frames with their container timestamps.

    Opening reads the first frame, so a missing, unreadable or frame-less file fails here with a
    :class:`VideoError`. Iterate once for ``(index, time_s, frame)``: ``frame`` is a BGR uint8 array
    (H, W, 3) and ``time_s`` its presentation time in seconds. The capture is released when the
    iteration ends, on :meth:`close`, or when used as a context manager.

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
        self.info = VideoInfo(
            path=self.path,
            fps=self._fps,
            width=int(frame.shape[1]),
            height=int(frame.shape[0]),
            frame_count=count if count > 0 else None,
        )
        self.repaired_times = 0
        self._last_time: float | None = None
        self._first: np.ndarray | None = frame
        self._first_time = self._container_time()
        self._started = False

    def _container_time(self) -> float:
        t = float(self._cap.get(cv2.CAP_PROP_POS_MSEC)) / 1000.0
        last = self._last_time
        if not math.isfinite(t) or (last is not None and t <= last) or (last is None and t < 0):
            repaired = 0.0 if last is None else last + 1.0 / (self._fps or 30.0)
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
            yield 0, self._first_time, first
            index = 1
            while True:
                ok, frame = self._cap.read()
                if not ok or frame is None:
                    return
                yield index, self._container_time(), frame
                index += 1
        finally:
            self.close()

    def close(self) -> None:
        """Release the capture (idempotent)."""
        self._first = None
        self._cap.release()

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


class VideoWriter:
    """Write BGR uint8 frames to a video file with OpenCV (FFmpeg backend), fourcc 'mp4v' by default.

    OpenCV's wheels cannot encode H.264; 'mp4v' (MPEG-4 part 2 in .mp4) plays in common players, and
    'MJPG' (in .avi) is the fallback. The output has a constant rate ``fps``: frame ``i`` is shown at
    ``i / fps``. Use as a context manager, or call :meth:`close`.
    """

    def __init__(
        self, path: str | os.PathLike[str], fps: float, frame_size: tuple[int, int], fourcc: str = "mp4v"
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
        if len(fourcc) != 4:
            raise VideoError(f"{self.path}: fourcc must have 4 characters, got {fourcc!r}")
        self.fps = rate
        self.frame_size = (width, height)
        self.frames_written = 0
        parent = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(parent):
            raise VideoError(f"{self.path}: cannot write video, folder {parent} does not exist")
        self._writer: Any = cv2.VideoWriter(
            self.path, cv2.CAP_FFMPEG, cv2.VideoWriter_fourcc(*fourcc), self.fps, self.frame_size
        )
        if not self._writer.isOpened():
            self._writer.release()
            raise VideoError(
                f"{self.path}: cannot open for writing with fourcc '{fourcc}' "
                "(check that the path is writable and its extension is a video container such as .mp4 or .avi)"
            )

    def write(self, frame: np.ndarray) -> None:
        """Append one BGR uint8 frame of shape (height, width, 3)."""
        width, height = self.frame_size
        if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.shape != (height, width, 3):
            got = f"{frame.dtype} {frame.shape}" if isinstance(frame, np.ndarray) else type(frame).__name__
            raise ValueError(f"{self.path}: frames must be uint8 ({height}, {width}, 3) BGR arrays, got {got}")
        if not self._writer.isOpened():
            raise VideoError(f"{self.path}: writer is closed")
        self._writer.write(np.ascontiguousarray(frame))
        self.frames_written += 1

    def close(self) -> None:
        """Finish the file (idempotent)."""
        self._writer.release()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
