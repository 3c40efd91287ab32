"""A per-video movement report as one PNG, drawn with OpenCV (no plotting library needed).

Three panels, for a clinician to look at before trusting a number:

* trunk-normalised trajectories of the wrists and ankles (shoulder centre at (0, 0), hip centre at
  (0, 1), in trunk lengths; the infant's right on the left of the picture, head up);
* the joint angles over time (elbows and knees 0-180 degrees; shoulders and hips 0-360 degrees);
* the quality timeline: per body part, the frames where the input had the point (green), where it
  was missing (red) and where the part is never present (grey); below, the frames that have
  body-centred positions (the trunk reference) and each joint's angle samples.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import cv2
import numpy as np

from aggpose_jax.gma.features import BODY_PARTS, JOINTS, VideoFeatures

WHITE, BLACK, GREY, LIGHT = (255, 255, 255), (0, 0, 0), (150, 150, 150), (225, 225, 225)
GREEN, RED = (60, 170, 60), (60, 60, 210)
# BGR colours: right side warm, left side cool.
PART_COLORS = {
    "RWrist": (40, 90, 230),
    "LWrist": (220, 120, 30),
    "RAnkle": (30, 170, 250),
    "LAnkle": (170, 60, 150),
}
JOINT_COLORS = {
    "RShoulder": (40, 90, 230),
    "LShoulder": (220, 120, 30),
    "RElbow": (40, 90, 230),
    "LElbow": (220, 120, 30),
    "RHip": (30, 170, 250),
    "LHip": (170, 60, 150),
    "RKnee": (30, 170, 250),
    "LKnee": (170, 60, 150),
}
FONT = cv2.FONT_HERSHEY_SIMPLEX


def _text(img: np.ndarray, text: str, org: tuple[int, int], scale: float = 0.4, color=BLACK, thick: int = 1) -> None:
    cv2.putText(img, text, (int(org[0]), int(org[1])), FONT, scale, color, thick, cv2.LINE_AA)


class _Axes:
    """A rectangle of the picture with data limits; maps data to pixels and draws frame and ticks."""

    def __init__(self, img: np.ndarray, box: tuple[int, int, int, int], xlim, ylim, flip_y: bool = True):
        self.img, (self.x0, self.y0, self.w, self.h) = img, box
        self.xlim, self.ylim, self.flip_y = xlim, ylim, flip_y

    def px(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        (a, b), (c, d) = self.xlim, self.ylim
        u = self.x0 + (np.asarray(x, float) - a) / (b - a) * self.w
        v = (np.asarray(y, float) - c) / (d - c) * self.h
        v = self.y0 + (self.h - v if self.flip_y else v)
        return u, v

    def frame(self, title: str, xlabel: str, ylabel: str, xticks: Sequence[float], yticks: Sequence[float]) -> None:
        img = self.img
        cv2.rectangle(img, (self.x0, self.y0), (self.x0 + self.w, self.y0 + self.h), GREY, 1)
        for t in xticks:
            u, _ = self.px(np.array([t]), np.array([self.ylim[0]]))
            cv2.line(img, (int(u[0]), self.y0), (int(u[0]), self.y0 + self.h), LIGHT, 1)
            _text(img, f"{t:g}", (u[0] - 8, self.y0 + self.h + 14), 0.35)
        for t in yticks:
            _, v = self.px(np.array([self.xlim[0]]), np.array([t]))
            cv2.line(img, (self.x0, int(v[0])), (self.x0 + self.w, int(v[0])), LIGHT, 1)
            _text(img, f"{t:g}", (self.x0 - 34, v[0] + 4), 0.35)
        cv2.rectangle(img, (self.x0, self.y0), (self.x0 + self.w, self.y0 + self.h), GREY, 1)
        _text(img, title, (self.x0, self.y0 - 8), 0.45, BLACK, 1)
        _text(img, xlabel, (self.x0 + self.w // 2 - 30, self.y0 + self.h + 30), 0.38)
        _text(img, ylabel, (self.x0 - 34, self.y0 - 8 + 0 * self.h), 0.35, GREY)

    def line(self, x: np.ndarray, y: np.ndarray, color, thickness: int = 1) -> None:
        """A polyline broken at NaN and clipped to the axes."""
        u, v = self.px(x, y)
        ok = np.isfinite(u) & np.isfinite(v)
        cv2.rectangle(self.img, (0, 0), (0, 0), color, 0)
        clip = (self.x0, self.y0, self.w + 1, self.h + 1)
        start = None
        for i in range(len(ok) + 1):
            if i < len(ok) and ok[i]:
                start = i if start is None else start
                continue
            if start is not None:
                pts = np.stack([u[start:i], v[start:i]], axis=1)
                if pts.shape[0] == 1:
                    pts = np.repeat(pts, 2, axis=0)
                pts = np.round(pts).astype(np.int32)
                for a, b in zip(pts[:-1], pts[1:]):
                    inside, p, q = cv2.clipLine(clip, tuple(int(t) for t in a), tuple(int(t) for t in b))
                    if inside:
                        cv2.line(self.img, p, q, color, thickness, cv2.LINE_AA)
                start = None


def _ticks(lo: float, hi: float, target: int = 6) -> list[float]:
    span = max(hi - lo, 1e-9)
    step = 10 ** math.floor(math.log10(span / target))
    for m in (1, 2, 2.5, 5, 10):
        if span / (m * step) <= target:
            step *= m
            break
    first = math.ceil(lo / step) * step
    return [round(first + i * step, 10) for i in range(int((hi - first) / step + 1e-9) + 1)]


def draw_report(v: VideoFeatures, title: str, size: tuple[int, int] = (1100, 900)) -> np.ndarray:
    """The report picture (BGR uint8, ``size`` = (width, height))."""
    width, height = size
    img = np.full((height, width, 3), 255, np.uint8)
    n = v.n_frames
    t = np.arange(n) / v.fps
    duration = max(t[-1] if n else 1.0, 1.0 / v.fps)
    _text(img, title, (20, 24), 0.55, BLACK, 1)
    sub = (
        f"{n} frames at {v.fps:g} fps ({duration:.1f} s); mode {v.mode}; smoothing window {v.smoothing_window} "
        f"frames, derivative window {v.derivative_window} frames"
    )
    _text(img, sub, (20, 44), 0.4, GREY)

    # Panel 1: trajectories in trunk lengths.
    parts = ("RWrist", "LWrist", "RAnkle", "LAnkle")
    idx = [BODY_PARTS.index(p) for p in parts]
    pts = v.normalised[:, idx].reshape(-1, 2)
    pts = pts[np.isfinite(pts).all(axis=1)]
    lo = np.minimum(np.array([-1.5, -1.0]), pts.min(axis=0) if pts.size else 0)
    hi = np.maximum(np.array([1.5, 2.5]), pts.max(axis=0) if pts.size else 0)
    half = max(float(np.max(np.abs([lo[0], hi[0]]))), (hi[1] - lo[1]) * 0.5 * 380 / 400) * 1.05
    mid_y = 0.5 * (lo[1] + hi[1])
    span_y = half * 2 * 400 / 380
    ax = _Axes(img, (70, 80, 380, 400), (-half, half), (mid_y - span_y / 2, mid_y + span_y / 2), flip_y=False)
    ax.frame("wrists and ankles, trunk lengths", "x (infant's right <-> left)", "y", _ticks(-half, half), [])
    for tick in _ticks(mid_y - span_y / 2, mid_y + span_y / 2):
        _, vv = ax.px(np.array([0.0]), np.array([tick]))
        _text(img, f"{tick:g}", (ax.x0 - 34, vv[0] + 4), 0.35)
        cv2.line(img, (ax.x0, int(vv[0])), (ax.x0 + 4, int(vv[0])), GREY, 1)
    ax.line(np.array([0.0, 0.0]), np.array([0.0, 1.0]), BLACK, 3)  # the trunk
    ax.line(np.array([-0.25, 0.25]), np.array([0.0, 0.0]), BLACK, 2)  # shoulder line
    ax.line(np.array([-0.18, 0.18]), np.array([1.0, 1.0]), BLACK, 2)  # hip line
    for k, p in enumerate(parts):
        j = BODY_PARTS.index(p)
        ax.line(v.normalised[:, j, 0], v.normalised[:, j, 1], PART_COLORS[p], 1)
        _text(img, p, (ax.x0 + 8 + 90 * k, ax.y0 + ax.h - 8), 0.4, PART_COLORS[p], 1)

    # Panel 2: joint angles over time (two axes).
    tick_t = _ticks(0, duration)
    for row, (group, ylim, yticks) in enumerate(
        (
            (("RElbow", "LElbow", "RKnee", "LKnee"), (0, 180), (0, 45, 90, 135, 180)),
            (("RShoulder", "LShoulder", "RHip", "LHip"), (0, 360), (0, 90, 180, 270, 360)),
        )
    ):
        ax = _Axes(img, (540, 80 + row * 215, 530, 170), (0, duration), ylim)
        name = "elbow and knee angles, degrees" if row == 0 else "shoulder and hip angles, degrees"
        ax.frame(name, "time (s)" if row == 1 else "", "", tick_t, yticks)
        for k, joint in enumerate(group):
            a = v.angles[joint]
            series = np.full(n, np.nan)
            series[a.frames] = a.angle
            if joint.endswith(("Shoulder", "Hip")):  # break the trace at the 0/360 wrap
                jump = np.abs(np.diff(series)) > 180
                series = series.copy()
                series[1:][jump] = np.nan
            dashed = joint.startswith("L")
            ax.line(t, series, JOINT_COLORS[joint], 2 if not dashed else 1)
            _text(img, joint, (ax.x0 + 8 + 95 * k, ax.y0 + 14), 0.38, JOINT_COLORS[joint], 1)

    # Panel 3: quality timeline.
    top = 540
    rows = list(BODY_PARTS) + ["positions"] + [f"angle {j}" for j in JOINTS]
    row_h = max(5, (height - top - 60) // len(rows))
    x0, w = 130, width - 160
    _text(img, "quality: frames with each point (green present, red missing, grey never present)", (x0, top - 10), 0.45)
    pos_ok = np.isfinite(v.normalised).all(axis=2)
    for r, label in enumerate(rows):
        y = top + r * row_h
        if r < len(BODY_PARTS):
            ok, never = v.present[:, r], not v.has_rows[r]
        elif label == "positions":
            ok, never = pos_ok[:, [BODY_PARTS.index(p) for p in parts]].any(axis=1), False
        else:
            ok = np.zeros(n, bool)
            ok[v.angles[label.split()[1]].frames] = True
            never = False
        base = np.full((row_h - 1, n, 3), GREY if never else RED, np.uint8)
        if not never:
            base[:, ok] = GREEN
        strip = cv2.resize(base, (w, row_h - 1), interpolation=cv2.INTER_NEAREST) if n else base
        img[y : y + row_h - 1, x0 : x0 + w] = strip
        _text(img, label, (10, y + row_h - 2), min(0.35, row_h / 28), BLACK)
    y_end = top + len(rows) * row_h
    for tick in tick_t:
        u = x0 + tick / duration * w
        cv2.line(img, (int(u), y_end), (int(u), y_end + 4), BLACK, 1)
        _text(img, f"{tick:g}", (u - 6, y_end + 16), 0.35)
    _text(img, "time (s)", (x0 + w // 2 - 20, y_end + 30), 0.38)
    note = "positions: frames with a body-centred wrist or ankle; angle rows: frames with that joint's angle"
    _text(img, note, (x0, y_end + 46), 0.35, GREY)
    return img


def write_report(v: VideoFeatures, path: str | os.PathLike[str], title: str) -> str:
    """Draw the report and write it as PNG; returns the path."""
    img = draw_report(v, title)
    path = os.fspath(path)
    if not cv2.imwrite(path, img, [cv2.IMWRITE_PNG_COMPRESSION, 9]):
        raise OSError(f"cannot write the report picture {path}")
    return path


__all__ = ["draw_report", "write_report"]
