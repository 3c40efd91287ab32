"""Top-down crop geometry: boxes -> centre/scale, the crop affine, point mapping, flips.

Conventions (HRNet top-down code base, as modified in the AggPose release):

* A person crop is described by a centre ``(cx, cy)`` in image pixels and a scale ``(sw, sh)``
  in units of ``pixel_std`` = 200 px; the crop window is ``(sw * 200, sh * 200)`` pixels.
* ``get_affine_transform`` builds the 2x3 matrix mapping image pixels to crop pixels from three
  point pairs (the centre, a point half a width "above" it rotated by ``rot_deg``, and a third
  point perpendicular to the first two), solved with ``cv2.getAffineTransform``. Only the crop
  *width* sets the zoom (isotropic), so the box must already have the output aspect ratio.
* ``convention='aggpose'`` (default) is what the released AggPose code does (the DARK/UDP
  variant): the crop centre maps to ``((w - 1) / 2, (h - 1) / 2)`` and the zoom is
  ``(out_w - 1) / (src_w - 1)``. ``convention='hrnet'`` is the original HRNet form: centre to
  ``(w / 2, h / 2)``, zoom ``out_w / src_w``. Training targets and the evaluation inverse must
  use the same convention; the released checkpoints were trained and evaluated with 'aggpose'.
* Positive ``rot_deg`` rotates the image content counter-clockwise in the crop (HRNet).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import cv2
import numpy as np

PIXEL_STD = 200.0
Convention = Literal["aggpose", "hrnet"]
CONVENTIONS: tuple[Convention, ...] = ("aggpose", "hrnet")


def box_to_center_scale(
    box_xywh: np.ndarray | Sequence[float],
    aspect_ratio: float,
    padding: float = 1.25,
    pixel_std: float = PIXEL_STD,
) -> tuple[np.ndarray, np.ndarray]:
    """(x, y, w, h) box(es) -> (centre float32[..., 2], scale float32[..., 2]).

    The box is widened or heightened (about its centre) to ``aspect_ratio`` = W / H of the crop,
    expressed in units of ``pixel_std`` and multiplied by ``padding`` (HRNet ``_xywh2cs``).
    Accepts one box (4,) or a stack (..., 4).
    """
    box = np.asarray(box_xywh, dtype=np.float64)
    if box.shape[-1] != 4:
        raise ValueError(f"box_to_center_scale: expected (..., 4) boxes, got shape {box.shape}")
    x, y, w, h = box[..., 0], box[..., 1], box[..., 2], box[..., 3]
    center = np.stack([x + w * 0.5, y + h * 0.5], axis=-1).astype(np.float32)
    wider = w > aspect_ratio * h
    taller = w < aspect_ratio * h
    h_fixed = np.where(wider, w / aspect_ratio, h)
    w_fixed = np.where(taller, h * aspect_ratio, w)
    scale = np.stack([w_fixed / pixel_std, h_fixed / pixel_std], axis=-1).astype(np.float32)
    return center, scale * np.float32(padding)


def joints_to_center_scale(
    points_xy: np.ndarray,
    aspect_ratio: float,
    padding: float = 1.5,
    pixel_std: float = PIXEL_STD,
) -> tuple[np.ndarray, np.ndarray]:
    """Centre/scale of a set of joints (HRNet half-body box).

    Centre = mean of the points; size = extent + 1 pixel, fixed to ``aspect_ratio`` and multiplied
    by ``padding`` (1.5 in the half-body augmentation). All in float32 as the original.
    """
    pts = np.asarray(points_xy, dtype=np.float32)[:, :2]
    center = pts.mean(axis=0)
    extent = pts.max(axis=0) - pts.min(axis=0) + np.float32(1.0)
    w, h = float(extent[0]), float(extent[1])
    if w > aspect_ratio * h:
        h = w / aspect_ratio
    elif w < aspect_ratio * h:
        w = h * aspect_ratio
    scale = np.array([w / pixel_std, h / pixel_std], dtype=np.float32)
    return center.astype(np.float32), scale * np.float32(padding)


def _rotate(vec: tuple[float, float], rot_rad: float) -> np.ndarray:
    sn, cs = np.sin(rot_rad), np.cos(rot_rad)
    return np.array([vec[0] * cs - vec[1] * sn, vec[0] * sn + vec[1] * cs], dtype=np.float64)


def _third_point(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The point completing a right angle at ``b`` (``a - b`` rotated by +90 degrees, added to b)."""
    d = a - b
    return b + np.stack([-d[..., 1], d[..., 0]], axis=-1).astype(b.dtype)


def _point_triplets(
    center: np.ndarray,
    scale: np.ndarray,
    rot_deg: np.ndarray,
    output_size_wh: Sequence[float],
    shift: Sequence[float],
    convention: Convention,
) -> tuple[np.ndarray, np.ndarray]:
    """Source and destination point triplets, float32 (..., 3, 2), as the original computes them."""
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be 'aggpose' or 'hrnet', got {convention!r}")
    off = 1.0 if convention == "aggpose" else 0.0
    center = np.asarray(center, dtype=np.float32)
    scale = np.asarray(scale, dtype=np.float32)
    if scale.shape[-1:] != (2,):  # a scalar scale means a square crop (original behaviour)
        scale = np.stack([scale, scale], axis=-1)
    scale_px = scale * np.float32(PIXEL_STD)
    src_w = scale_px[..., 0]
    dst_w, dst_h = float(output_size_wh[0]), float(output_size_wh[1])
    rot_rad = np.pi * np.asarray(rot_deg, dtype=np.float64) / 180.0
    half = (src_w.astype(np.float64) - off) * -0.5  # (0, half) is the "up" vector before rotation
    sn, cs = np.sin(rot_rad), np.cos(rot_rad)
    src_dir = np.stack([-half * sn, half * cs], axis=-1)
    shift_px = scale_px * np.asarray(shift, dtype=np.float32)
    src0 = (center + shift_px).astype(np.float32)
    src1 = (center.astype(np.float64) + src_dir + shift_px).astype(np.float32)
    dst0 = np.array([(dst_w - off) * 0.5, (dst_h - off) * 0.5], dtype=np.float32)
    dst1 = dst0 + np.array([0.0, (dst_w - off) * -0.5], dtype=np.float32)
    src = np.stack([src0, src1, _third_point(src0, src1)], axis=-2)
    dst_one = np.stack([dst0, dst1, _third_point(dst0, dst1)], axis=0)
    dst = np.broadcast_to(dst_one, src.shape).astype(np.float32)
    return src, dst


def get_affine_transform(
    center: np.ndarray | Sequence[float],
    scale: np.ndarray | Sequence[float] | float,
    rot_deg: float,
    output_size_wh: Sequence[float],
    shift: Sequence[float] = (0.0, 0.0),
    inv: bool = False,
    *,
    convention: Convention = "aggpose",
) -> np.ndarray:
    """2x3 float64 matrix mapping image pixels to crop pixels (or back, with ``inv=True``).

    ``output_size_wh`` is (width, height) of the crop (image size or heatmap size); ``shift`` is a
    fraction of the crop window added to the centre. See the module docstring for ``convention``.
    """
    src, dst = _point_triplets(
        np.asarray(center), np.asarray(scale), np.asarray(rot_deg), output_size_wh, shift, convention
    )
    if inv:
        return cv2.getAffineTransform(dst, src)
    return cv2.getAffineTransform(src, dst)


def get_affine_transforms(
    centers: np.ndarray,
    scales: np.ndarray,
    rot_degs: np.ndarray | float,
    output_size_wh: Sequence[float],
    shift: Sequence[float] = (0.0, 0.0),
    inv: bool = False,
    *,
    convention: Convention = "aggpose",
) -> np.ndarray:
    """Vectorised ``get_affine_transform``: (N, 2) centres/scales, (N,) or scalar rotations -> (N, 2, 3).

    Solves the same three-point systems with ``numpy.linalg.solve`` in float64 (agrees with
    ``cv2.getAffineTransform`` to ~1e-12 relative).
    """
    centers = np.asarray(centers, dtype=np.float32).reshape(-1, 2)
    scales = np.asarray(scales, dtype=np.float32).reshape(-1, 2)
    rots = np.broadcast_to(np.asarray(rot_degs, dtype=np.float64), centers.shape[:1])
    src, dst = _point_triplets(centers, scales, rots, output_size_wh, shift, convention)
    if inv:
        src, dst = dst, src
    src = src.astype(np.float64)
    dst = dst.astype(np.float64)
    # Rows of S: [x, y, 1] for each source point; S @ M.T = D.
    s_mat = np.concatenate([src, np.ones(src.shape[:-1] + (1,))], axis=-1)
    m_t = np.linalg.solve(s_mat, dst)  # (N, 3, 2)
    return np.swapaxes(m_t, -1, -2)


def affine_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply a 2x3 matrix (or a stack (N, 2, 3) matched with points (N, ..., 2)) to points (..., 2)."""
    pts = np.asarray(points, dtype=np.float64)
    m = np.asarray(matrix, dtype=np.float64)
    if m.ndim == 2:
        return pts @ m[:, :2].T + m[:, 2]
    lead = pts.shape[0]
    flat = pts.reshape(lead, -1, 2)
    out = np.einsum("nij,nkj->nki", m[:, :, :2], flat) + m[:, None, :, 2]
    return out.reshape(pts.shape)


def source_window(
    matrix: np.ndarray,
    output_size_wh: Sequence[int],
    image_hw: Sequence[int],
    margin: int = 2,
) -> tuple[int, int, int, int]:
    """Integer window (x0, y0, x1, y1) of the image that a crop with ``matrix`` reads.

    Covers the source of every output pixel plus ``margin`` pixels (bilinear needs one more),
    clipped to the image; x1 <= x0 or y1 <= y0 means the crop lies entirely outside the image.
    """
    w, h = float(output_size_wh[0]), float(output_size_wh[1])
    corners = np.array([[0.0, 0.0], [w - 1, 0.0], [0.0, h - 1], [w - 1, h - 1]])
    src = affine_points(corners, cv2.invertAffineTransform(np.asarray(matrix, np.float64)))
    lo = np.floor(src.min(axis=0)) - margin
    hi = np.ceil(src.max(axis=0)) + margin + 1
    x0, y0 = (int(max(0, v)) for v in lo)
    x1 = int(min(image_hw[1], hi[0]))
    y1 = int(min(image_hw[0], hi[1]))
    return x0, y0, x1, y1


def transform_preds(
    coords: np.ndarray,
    centers: np.ndarray,
    scales: np.ndarray,
    heatmap_size_wh: Sequence[float],
    *,
    convention: Convention = "aggpose",
) -> np.ndarray:
    """Heatmap coordinates (N, J, 2) of N people -> image coordinates float64 (N, J, 2).

    The inverse of the crop affine at heatmap resolution with rotation 0, one matrix per person
    (``centers``, ``scales``: (N, 2)), as in the original evaluation.
    """
    coords = np.asarray(coords, dtype=np.float64)
    if coords.ndim != 3 or coords.shape[-1] != 2:
        raise ValueError(f"transform_preds: coords must be (N, J, 2), got {coords.shape}")
    mats = get_affine_transforms(centers, scales, 0.0, heatmap_size_wh, inv=True, convention=convention)
    if mats.shape[0] != coords.shape[0]:
        raise ValueError(f"transform_preds: {coords.shape[0]} people but {mats.shape[0]} boxes")
    return affine_points(coords, mats)


def flip_joints(
    joints_xy: np.ndarray,
    visible: np.ndarray,
    image_width: int,
    flip_index: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Mirror joints for a horizontally flipped image (HRNet ``fliplr_joints``).

    x -> width - x - 1, left/right joints swapped by ``flip_index`` (a permutation), and the
    coordinates of invisible joints zeroed, as the original does.
    """
    joints = np.array(joints_xy, dtype=np.float32, copy=True)
    joints[:, 0] = np.float32(image_width) - joints[:, 0] - np.float32(1.0)
    idx = np.asarray(flip_index)
    joints = joints[idx]
    vis = np.asarray(visible)[idx]
    return joints * (vis[:, None] > 0).astype(np.float32), vis
