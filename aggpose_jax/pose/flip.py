"""Flip test, the one owner: mirror input crops, bring the mirrored model output back, average.

The released AggPose ``validate`` averages the heatmaps of the crop and of its mirror image,
the latter flipped back horizontally with left/right joint channels swapped. Its configs set
``TEST.SHIFT_HEATMAP: true``, but the released validation loop (taken from DARK) no longer
applies HRNet's one-pixel shift, so ``shift=False`` is the default here.

The functions take numpy or JAX arrays (traced ones included) and return the same kind:
``heatmaps.heatmap_function`` runs :func:`with_flip_test` inside the jitted forward that
evaluation, inference, prediction and export all use.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["flip_images", "flip_heatmaps", "flip_average", "with_flip_test"]


def _xp(x: Any) -> Any:
    return jnp if isinstance(x, jax.Array) else np


def _array(x: Any) -> Any:
    """A JAX array (traced or not) as it is; anything else as a numpy array."""
    return x if isinstance(x, jax.Array) else np.asarray(x)


def flip_images(images: Any) -> Any:
    """Mirror NHWC images horizontally."""
    images = _array(images)
    if images.ndim != 4:
        raise ValueError(f"flip_images: images must be NHWC, got shape {images.shape}")
    return images[:, :, ::-1, :]


def flip_heatmaps(heatmaps: Any, flip_index: Any, *, shift: bool = False) -> Any:
    """Heatmaps (N, h, w, J) of mirrored crops -> heatmaps in the original crop's frame.

    Mirrors the width axis and permutes joint channels with ``flip_index``
    (``out[..., j] = in[..., flip_index[j]]``). ``shift=True`` applies HRNet's
    ``SHIFT_HEATMAP`` (content moved one pixel right, column 0 kept).
    """
    index = np.asarray(flip_index, np.int32)
    heatmaps = _array(heatmaps)
    if heatmaps.ndim != 4:
        raise ValueError(f"flip_heatmaps: heatmaps must be (N, h, w, J), got shape {heatmaps.shape}")
    if index.shape != (heatmaps.shape[-1],):
        raise ValueError(f"flip_heatmaps: flip_index has shape {index.shape} for {heatmaps.shape[-1]} joints")
    xp = _xp(heatmaps)
    out = xp.take(heatmaps[:, :, ::-1, :], index, axis=-1)
    if shift:
        out = xp.concatenate([out[:, :, :1], out[:, :, :-1]], axis=2)
    return out


def flip_average(heatmaps: Any, heatmaps_mirrored: Any, flip_index: Any, *, shift: bool = False) -> Any:
    """Mean (float32) of the plain heatmaps and the flipped-back heatmaps of the mirrored crops."""
    heatmaps = _array(heatmaps)
    xp = _xp(heatmaps)
    back = flip_heatmaps(heatmaps_mirrored, flip_index, shift=shift)
    return (heatmaps.astype(xp.float32) + back.astype(xp.float32)) * xp.float32(0.5)


def with_flip_test(forward: Callable[[Any], Any], flip_index: Any, *, shift: bool = False) -> Callable[[Any], Any]:
    """``forward(images (n, H, W, 3)) -> heatmaps`` with the flip test: the crops and their mirror images
    run as one batch of 2n, and the flipped-back heatmaps are averaged with the plain ones.

    Each crop is followed by its mirror image (interleaved, not appended): a batch sharded over devices
    keeps every pair on the device that holds the crop, so the flip test moves no data between them."""

    def flipped(images: Any) -> Any:
        images = _array(images)
        n, rest = images.shape[0], tuple(images.shape[1:])
        pairs = _xp(images).stack([images, flip_images(images)], axis=1).reshape((2 * n, *rest))
        heatmaps = forward(pairs)
        heatmaps = heatmaps.reshape((n, 2, *heatmaps.shape[1:]))
        return flip_average(heatmaps[:, 0], heatmaps[:, 1], flip_index, shift=shift)

    return flipped
