"""Heatmaps of crops -> keypoints in image pixels: the one decoding of evaluation, inference and prediction.

``decode_heatmaps`` (argmax + DARK, or argmax alone) in heatmap pixels, then the inverse crop affine
(``geometry.transform_preds``) at heatmap resolution, as the release's ``get_final_preds``.
"""

from __future__ import annotations

import numpy as np

from aggpose_jax.pose import geometry
from aggpose_jax.pose.codec import decode_heatmaps


def decode_to_image(
    heatmaps: np.ndarray,
    centers: np.ndarray,
    scales: np.ndarray,
    *,
    decode: str = "dark",
    convention: geometry.Convention = "aggpose",
) -> tuple[np.ndarray, np.ndarray]:
    """Heatmaps (N, h, w, J) of crops -> (keypoints float32 (N, J, 2) in image px, maxvals (N, J))."""
    coords, maxvals = decode_heatmaps(heatmaps, method=decode)
    h, w = heatmaps.shape[1:3]
    pts = geometry.transform_preds(coords, centers, scales, (w, h), convention=convention)
    return pts.astype(np.float32), maxvals


__all__ = ["decode_to_image"]
