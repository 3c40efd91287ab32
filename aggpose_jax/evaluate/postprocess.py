"""Per-person predictions -> COCO keypoint results: rescoring, OKS-NMS, results records.

As the HRNet/AggPose COCO evaluation:

* instance score = box score x mean of the keypoint confidences (heatmap maxima) that are
  above ``in_vis_thre`` (0 if none is);
* OKS-NMS per image, greedy by score, a person is dropped when its OKS with a kept one is
  above the threshold. The area used is the padded crop area ``prod(scale * 200)`` and OKS is
  computed over all joints (HRNet calls ``oks_nms`` without ``in_vis_thre``). The released
  infant evaluation skips OKS-NMS: pass ``oks_nms_thre=None`` for that.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["rescore", "oks_matrix", "oks_nms", "build_results"]

PIXEL_STD = 200.0


def rescore(box_scores: np.ndarray, maxvals: np.ndarray, in_vis_thre: float = 0.2) -> np.ndarray:
    """Instance scores (N,) from box scores (N,) and keypoint confidences (N, J)."""
    maxvals = np.asarray(maxvals, dtype=np.float64)
    mask = maxvals > in_vis_thre
    count = mask.sum(axis=1)
    kpt_score = np.where(count > 0, (maxvals * mask).sum(axis=1) / np.maximum(count, 1), 0.0)
    return (np.asarray(box_scores, dtype=np.float64) * kpt_score).astype(np.float32)


def oks_matrix(
    kpts_a: np.ndarray, kpts_b: np.ndarray, areas_a: np.ndarray, areas_b: np.ndarray, sigmas: np.ndarray
) -> np.ndarray:
    """OKS between every pair of (A, J, >=2) and (B, J, >=2) poses -> (A, B).

    HRNet's ``oks_iou`` with all joints: ``mean_j exp(-d^2 / (2 s^2))`` with
    ``s^2 = (2 sigma_j)^2 * (area_a + area_b) / 2``.
    """
    a = np.asarray(kpts_a, dtype=np.float64)[:, None, :, :2]
    b = np.asarray(kpts_b, dtype=np.float64)[None, :, :, :2]
    d2 = ((a - b) ** 2).sum(axis=-1)  # (A, B, J)
    variances = (2.0 * np.asarray(sigmas, dtype=np.float64)) ** 2
    mean_area = (np.asarray(areas_a, np.float64)[:, None] + np.asarray(areas_b, np.float64)[None, :]) / 2
    e = d2 / variances / (mean_area[..., None] + np.spacing(1)) / 2.0
    return np.exp(-e).mean(axis=-1)


def oks_nms(
    kpts: np.ndarray, scores: np.ndarray, areas: np.ndarray, sigmas: np.ndarray, thre: float = 0.9
) -> np.ndarray:
    """Indices (into the inputs, best score first) of the poses that survive greedy OKS-NMS."""
    n = len(scores)
    if n == 0:
        return np.zeros((0,), dtype=np.int64)
    oks = oks_matrix(kpts, kpts, areas, areas, sigmas)
    order = np.argsort(-np.asarray(scores), kind="stable")
    suppressed = np.zeros(n, dtype=bool)
    keep = []
    for i in order:
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= oks[i] > thre
    return np.asarray(keep, dtype=np.int64)


def build_results(
    image_ids: np.ndarray,
    keypoints: np.ndarray,
    maxvals: np.ndarray,
    box_scores: np.ndarray,
    scales: np.ndarray,
    sigmas: np.ndarray,
    *,
    oks_nms_thre: float | None = 0.9,
    in_vis_thre: float = 0.2,
    category_id: int = 1,
) -> list[dict[str, Any]]:
    """COCO keypoint results from per-person predictions.

    Args:
      image_ids: (N,) int image ids.
      keypoints: (N, J, 2) image coordinates.
      maxvals: (N, J) keypoint confidences.
      box_scores: (N,) detector / GT box scores.
      scales: (N, 2) crop scales (200-px units), for the NMS areas.
      sigmas: (J,) OKS sigmas.
      oks_nms_thre: OKS-NMS threshold, or None to keep every person.
    Returns:
      ``[{'image_id', 'category_id', 'keypoints': [x, y, score] * J, 'score'}]``, grouped by image.
    """
    image_ids = np.asarray(image_ids).astype(np.int64).reshape(-1)
    n = image_ids.shape[0]
    if n == 0:
        return []
    keypoints = np.asarray(keypoints, dtype=np.float64).reshape(n, -1, 2)
    maxvals = np.asarray(maxvals, dtype=np.float64).reshape(n, -1)
    scores = rescore(box_scores, maxvals, in_vis_thre)
    areas = np.prod(np.asarray(scales, dtype=np.float64).reshape(n, 2) * PIXEL_STD, axis=1)
    flat = np.concatenate([keypoints, maxvals[..., None]], axis=-1).reshape(n, -1)
    results: list[dict[str, Any]] = []
    for img in np.unique(image_ids):
        idx = np.nonzero(image_ids == img)[0]
        if oks_nms_thre is not None:
            keep = oks_nms(keypoints[idx], scores[idx], areas[idx], sigmas, oks_nms_thre)
            idx = idx[np.sort(keep)]
        for i in idx:
            results.append(
                {
                    "image_id": int(img),
                    "category_id": int(category_id),
                    "keypoints": [float(v) for v in flat[i]],
                    "score": float(scores[i]),
                }
            )
    return results
