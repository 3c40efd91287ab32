"""Draw predicted skeletons on a few images and save one PNG grid."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np

__all__ = ["image_paths_for", "draw_skeleton", "draw_predictions"]

ImageLike = str | os.PathLike | np.ndarray


def image_paths_for(coco_gt: Any, image_dir: str, image_ids: Sequence[int], limit: int = 4) -> list[tuple[int, str]]:
    """(image_id, path) of the first ``limit`` distinct ``image_ids`` (order kept), via the
    ``file_name`` of a loaded pycocotools ``COCO`` object."""
    out: list[tuple[int, str]] = []
    seen: set[int] = set()
    for img_id in image_ids:
        img_id = int(img_id)
        if img_id in seen or img_id not in coco_gt.imgs:
            continue
        seen.add(img_id)
        out.append((img_id, os.path.join(image_dir, coco_gt.imgs[img_id]["file_name"])))
        if len(out) >= limit:
            break
    return out


def _color(i: int, n: int) -> tuple[int, int, int]:
    hsv = np.uint8([[[int(180 * i / max(n, 1)), 220, 255]]])
    b, g, r = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0]
    return int(b), int(g), int(r)


def draw_skeleton(
    image_bgr: np.ndarray,
    keypoints: np.ndarray,
    skeleton: Sequence[Sequence[int]],
    *,
    kpt_thre: float = 0.2,
    radius: int = 3,
    thickness: int = 2,
) -> np.ndarray:
    """Draw one person's joints (J, 3) = (x, y, score) in place; joints at or below ``kpt_thre``
    and limbs touching them are skipped."""
    kp = np.asarray(keypoints, dtype=np.float64).reshape(-1, 3)
    ok = (kp[:, 2] > kpt_thre) & np.isfinite(kp[:, :2]).all(axis=1)
    for li, (a, b) in enumerate(skeleton):
        if a < len(kp) and b < len(kp) and ok[a] and ok[b]:
            cv2.line(
                image_bgr,
                (int(round(kp[a, 0])), int(round(kp[a, 1]))),
                (int(round(kp[b, 0])), int(round(kp[b, 1]))),
                _color(li, len(skeleton)),
                thickness,
                cv2.LINE_AA,
            )
    for j in np.nonzero(ok)[0]:
        cv2.circle(image_bgr, (int(round(kp[j, 0])), int(round(kp[j, 1]))), radius, (255, 255, 255), -1, cv2.LINE_AA)
        cv2.circle(image_bgr, (int(round(kp[j, 0])), int(round(kp[j, 1]))), radius, (0, 0, 0), 1, cv2.LINE_AA)
    return image_bgr


def _load(image: ImageLike) -> np.ndarray:
    """BGR uint8 image from a path, or from an RGB uint8 array (H, W, 3)."""
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"draw_predictions: image array must be (H, W, 3), got {image.shape}")
        return cv2.cvtColor(image.astype(np.uint8), cv2.COLOR_RGB2BGR)
    img = cv2.imread(os.fspath(image), cv2.IMREAD_COLOR)
    if img is None:
        raise OSError(f"draw_predictions: cannot read image {os.fspath(image)}")
    return img


def draw_predictions(
    images: Sequence[tuple[int, ImageLike]] | Mapping[int, ImageLike],
    results: Sequence[dict[str, Any]],
    keypoint_set: Any,
    out_png: str,
    *,
    max_images: int = 4,
    kpt_thre: float = 0.2,
    tile_height: int = 320,
    columns: int = 4,
) -> str:
    """Draw every result of each of the first ``max_images`` images and save a PNG grid.

    ``images``: (image_id, path or RGB uint8 array) pairs or a mapping; ``results``: COCO
    keypoint results (``image_id``, flat ``keypoints``). Returns ``out_png``.
    """
    items = list(images.items()) if isinstance(images, Mapping) else list(images)
    items = items[:max_images]
    if not items:
        raise ValueError("draw_predictions: no images to draw")
    by_image: dict[int, list[np.ndarray]] = {}
    for r in results:
        by_image.setdefault(int(r["image_id"]), []).append(np.asarray(r["keypoints"], np.float64))
    tiles = []
    for img_id, image in items:
        canvas = _load(image).copy()
        scale = tile_height / canvas.shape[0]
        canvas = cv2.resize(
            canvas,
            (max(1, int(round(canvas.shape[1] * scale))), tile_height),
            interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR,
        )
        for kp in by_image.get(int(img_id), []):
            kp = kp.reshape(-1, 3).copy()
            kp[:, :2] *= scale
            draw_skeleton(canvas, kp, keypoint_set.skeleton, kpt_thre=kpt_thre)
        cv2.putText(canvas, str(img_id), (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 255, 255), 1)
        tiles.append(canvas)
    columns = max(1, min(columns, len(tiles)))
    tile_w = max(t.shape[1] for t in tiles)
    rows = -(-len(tiles) // columns)
    grid = np.zeros((rows * tile_height, columns * tile_w, 3), np.uint8)
    for i, t in enumerate(tiles):
        r, c = divmod(i, columns)
        grid[r * tile_height : (r + 1) * tile_height, c * tile_w : c * tile_w + t.shape[1]] = t
    os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
    if not cv2.imwrite(out_png, grid):
        raise OSError(f"draw_predictions: cannot write {out_png}")
    return out_png
