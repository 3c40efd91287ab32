"""Heatmap codec: Gaussian training targets and heatmap -> coordinate decoding.

Semantics follow the released AggPose code (HRNet code base with DARK's unbiased
target and inference):

* Targets: the Gaussian is centred at the exact sub-pixel joint position (already in
  heatmap pixels) and, as released, evaluated over the whole map. ``window=True``
  gives HRNet's original 3-sigma cut-off instead (values outside the window are 0,
  the centre is still sub-pixel). The weight is ``visible > 0`` and is zeroed by
  HRNet's rule ``ul = int(mu - 3 sigma)``, ``br = int(mu + 3 sigma + 1)``: if
  ``ul_x >= w or ul_y >= h or br_x < 0 or br_y < 0`` the joint gets weight 0 and an
  all-zero map.
* Decoding: ``argmax`` is HRNet's ``get_max_preds`` (coordinates zeroed where the
  maximum is <= 0). ``dark`` adds the distribution-aware refinement: Gaussian blur
  (kernel 11, zero padding, sigma from the kernel size as OpenCV does), rescaled so
  each map keeps its original maximum, clamped to >= 1e-10, log, then one Newton step
  ``-H^-1 g`` with finite-difference derivatives at the argmax pixel. The step is
  taken only where ``1 < px < w - 2`` and ``1 < py < h - 2`` and ``det(H) != 0``.
  No quarter-pixel shift is applied (the released ``get_final_preds`` has none).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import cv2
import numpy as np

__all__ = ["encode_targets", "decode_heatmaps", "get_max_preds", "dark_refine", "blur_heatmaps"]

DEFAULT_BLUR_KERNEL = 11
_CV_CHANNELS = 4  # OpenCV filters take at most 4 channels per call


def encode_targets(
    joints_xy: np.ndarray,
    visible: np.ndarray,
    heatmap_size: Sequence[int],
    sigma: float = 2.0,
    *,
    window: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Render unbiased Gaussian targets.

    Args:
      joints_xy: (J, 2) joint positions in heatmap pixels (x, y).
      visible: (J,) visibility; > 0 means the joint is supervised.
      heatmap_size: (h, w).
      sigma: Gaussian standard deviation in heatmap pixels.
      window: zero the Gaussian outside the HRNet 3-sigma window (default: whole map,
        as the released AggPose code).
    Returns:
      target float32[h, w, J], weight float32[J].
    """
    joints_xy = np.asarray(joints_xy, dtype=np.float64)
    visible = np.asarray(visible).reshape(-1)
    if joints_xy.ndim != 2 or joints_xy.shape[1] != 2:
        raise ValueError(f"encode_targets: joints_xy must be (J, 2), got {joints_xy.shape}")
    if visible.shape[0] != joints_xy.shape[0]:
        raise ValueError(f"encode_targets: visible has {visible.shape[0]} entries for {joints_xy.shape[0]} joints")
    h, w = int(heatmap_size[0]), int(heatmap_size[1])
    tmp = 3.0 * sigma
    mu_x, mu_y = joints_xy[:, 0], joints_xy[:, 1]
    # HRNet truncates toward zero with int(); np.trunc reproduces that for negatives too.
    ul_x, ul_y = np.trunc(mu_x - tmp), np.trunc(mu_y - tmp)
    br_x, br_y = np.trunc(mu_x + tmp + 1), np.trunc(mu_y + tmp + 1)
    outside = (ul_x >= w) | (ul_y >= h) | (br_x < 0) | (br_y < 0)
    weight = ((visible > 0) & ~outside & np.isfinite(joints_xy).all(axis=1)).astype(np.float32)

    xs = np.arange(w, dtype=np.float64)
    ys = np.arange(h, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        gx = np.exp(-((xs[:, None] - mu_x[None, :]) ** 2) / (2.0 * sigma * sigma))  # (w, J)
        gy = np.exp(-((ys[:, None] - mu_y[None, :]) ** 2) / (2.0 * sigma * sigma))  # (h, J)
    if window:
        # Pixels in [ul, br) on both axes, as HRNet's patch paste.
        gx = gx * ((xs[:, None] >= ul_x[None, :]) & (xs[:, None] < br_x[None, :]))
        gy = gy * ((ys[:, None] >= ul_y[None, :]) & (ys[:, None] < br_y[None, :]))
    gx = np.where(np.isfinite(gx), gx, 0.0)
    gy = np.where(np.isfinite(gy), gy, 0.0)
    # exp(-(a+b)) == exp(-a) * exp(-b): separable product, masked by the weight.
    target = gy[:, None, :] * gx[None, :, :] * weight[None, None, :]
    return target.astype(np.float32), weight


def get_max_preds(heatmaps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integer argmax per map. heatmaps (N, h, w, J) -> coords (N, J, 2) x/y, maxvals (N, J).

    Coordinates are set to 0 where the maximum is <= 0 (HRNet convention).
    """
    n, h, w, j = heatmaps.shape
    flat = np.moveaxis(heatmaps, -1, 1).reshape(n, j, h * w)
    idx = np.argmax(flat, axis=2)
    maxvals = np.take_along_axis(flat, idx[..., None], axis=2)[..., 0].astype(np.float32)
    coords = np.stack([idx % w, idx // w], axis=-1).astype(np.float32)
    coords *= (maxvals > 0)[..., None]
    return coords, maxvals


def blur_heatmaps(heatmaps: np.ndarray, kernel: int = DEFAULT_BLUR_KERNEL) -> np.ndarray:
    """Zero-padded Gaussian blur of every map, rescaled to each map's original maximum.

    heatmaps (N, h, w, J) -> float64 (N, h, w, J). Same as OpenCV's ``GaussianBlur(k, k, 0)``
    of each map padded with ``(k - 1) / 2`` zeros, computed for all maps at once (the maps are
    stacked as channels, 4 at a time, for ``cv2.sepFilter2D`` with a constant-zero border).
    """
    n, h, w, j = heatmaps.shape
    k1 = cv2.getGaussianKernel(kernel, 0, cv2.CV_64F)
    flat = np.ascontiguousarray(np.moveaxis(heatmaps.astype(np.float64), 0, 2).reshape(h, w, n * j))
    out = np.empty_like(flat)
    for s in range(0, n * j, _CV_CHANNELS):
        chunk = np.ascontiguousarray(flat[:, :, s : s + _CV_CHANNELS])
        res = cv2.sepFilter2D(chunk, -1, k1, k1, borderType=cv2.BORDER_CONSTANT)
        out[:, :, s : s + _CV_CHANNELS] = res.reshape(h, w, -1)
    out = np.moveaxis(out.reshape(h, w, n, j), 2, 0)
    orig_max = heatmaps.max(axis=(1, 2), keepdims=True).astype(np.float64)
    new_max = out.max(axis=(1, 2), keepdims=True)
    ratio = np.where(new_max != 0, orig_max / np.where(new_max != 0, new_max, 1.0), 0.0)
    return out * ratio


def dark_refine(heatmaps: np.ndarray, coords: np.ndarray, kernel: int = DEFAULT_BLUR_KERNEL) -> np.ndarray:
    """Distribution-aware sub-pixel refinement of integer ``coords`` (N, J, 2); returns new coords."""
    n, h, w, j = heatmaps.shape
    logs = np.log(np.maximum(blur_heatmaps(heatmaps, kernel), 1e-10))
    logs = np.moveaxis(logs, -1, 1)  # (N, J, h, w)
    px = coords[..., 0].astype(np.int64)  # coords are integral and >= 0
    py = coords[..., 1].astype(np.int64)
    inside = (px > 1) & (px < w - 2) & (py > 1) & (py < h - 2)
    pxc = np.clip(px, 2, max(w - 3, 2))
    pyc = np.clip(py, 2, max(h - 3, 2))
    ni, ji = np.meshgrid(np.arange(n), np.arange(j), indexing="ij")

    def at(dy: int, dx: int) -> np.ndarray:
        return logs[ni, ji, np.clip(pyc + dy, 0, h - 1), np.clip(pxc + dx, 0, w - 1)]

    centre = at(0, 0)
    gx = 0.5 * (at(0, 1) - at(0, -1))
    gy = 0.5 * (at(1, 0) - at(-1, 0))
    hxx = 0.25 * (at(0, 2) - 2 * centre + at(0, -2))
    hyy = 0.25 * (at(2, 0) - 2 * centre + at(-2, 0))
    hxy = 0.25 * (at(1, 1) - at(-1, 1) - at(1, -1) + at(-1, -1))
    det = hxx * hyy - hxy * hxy
    ok = inside & (det != 0)
    safe_det = np.where(ok, det, 1.0)
    # offset = -H^-1 g with H^-1 = [[hyy, -hxy], [-hxy, hxx]] / det
    off_x = -(hyy * gx - hxy * gy) / safe_det
    off_y = -(-hxy * gx + hxx * gy) / safe_det
    out = coords.astype(np.float64).copy()
    out[..., 0] += np.where(ok, off_x, 0.0)
    out[..., 1] += np.where(ok, off_y, 0.0)
    return out.astype(np.float32)


def decode_heatmaps(
    heatmaps: np.ndarray,
    method: Literal["dark", "argmax"] = "dark",
    *,
    blur_kernel: int = DEFAULT_BLUR_KERNEL,
) -> tuple[np.ndarray, np.ndarray]:
    """Heatmaps (N, h, w, J) -> (coords float32[N, J, 2] in heatmap px (x, y), maxvals float32[N, J])."""
    heatmaps = np.asarray(heatmaps)
    if heatmaps.ndim != 4:
        raise ValueError(f"decode_heatmaps: heatmaps must be (N, h, w, J), got shape {heatmaps.shape}")
    coords, maxvals = get_max_preds(heatmaps)
    if method == "argmax":
        return coords, maxvals
    if method == "dark":
        return dark_refine(heatmaps, coords, blur_kernel), maxvals
    raise ValueError(f"decode_heatmaps: method must be 'dark' or 'argmax', got {method!r}")
