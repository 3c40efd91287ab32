"""Flip test: mirror input crops, and bring the mirrored model output back.

The released AggPose ``validate`` averages the heatmaps of the crop and of its mirror image,
the latter flipped back horizontally with left/right joint channels swapped. Its configs set
``TEST.SHIFT_HEATMAP: true``, but the released validation loop (taken from DARK) no longer
applies HRNet's one-pixel shift, so ``shift=False`` is the default here.
"""

from __future__ import annotations

import numpy as np

__all__ = ["flip_images", "flip_heatmaps", "flip_average"]


def flip_images(images: np.ndarray) -> np.ndarray:
    """Mirror NHWC images horizontally (contiguous copy)."""
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"flip_images: images must be NHWC, got shape {images.shape}")
    return np.ascontiguousarray(images[:, :, ::-1, :])


def flip_heatmaps(heatmaps: np.ndarray, flip_index: np.ndarray, *, shift: bool = False) -> np.ndarray:
    """Heatmaps (N, h, w, J) of mirrored crops -> heatmaps in the original crop's frame.

    Mirrors the width axis and permutes joint channels with ``flip_index``
    (``out[..., j] = in[..., flip_index[j]]``). ``shift=True`` applies HRNet's
    ``SHIFT_HEATMAP`` (content moved one pixel right, column 0 kept).
    """
    heatmaps = np.asarray(heatmaps)
    flip_index = np.asarray(flip_index)
    if heatmaps.ndim != 4:
        raise ValueError(f"flip_heatmaps: heatmaps must be (N, h, w, J), got shape {heatmaps.shape}")
    if flip_index.shape != (heatmaps.shape[-1],):
        raise ValueError(f"flip_heatmaps: flip_index has shape {flip_index.shape} for {heatmaps.shape[-1]} joints")
    out = heatmaps[:, :, ::-1, :][..., flip_index]
    if shift:
        out = out.copy()
        out[:, :, 1:, :] = out[:, :, :-1, :].copy()
    return np.ascontiguousarray(out)


def flip_average(
    heatmaps: np.ndarray, heatmaps_flipped: np.ndarray, flip_index: np.ndarray, *, shift: bool = False
) -> np.ndarray:
    """Mean of the plain heatmaps and the flipped-back heatmaps of the mirrored crops (float32)."""
    back = flip_heatmaps(heatmaps_flipped, flip_index, shift=shift)
    return ((np.asarray(heatmaps, np.float32) + back.astype(np.float32)) * 0.5).astype(np.float32)
