"""Draw predicted (and ground-truth) skeletons on a few images and save one PNG grid.

One high-contrast scheme, unlike the synthetic figures' per-limb rainbow palettes: predictions are
thick white limbs with a black outline and white joint discs; ground truth is dashed black limbs
with a white outline and square joints. A legend band under the grid names both and the score
threshold; a tile with no predicted joint above the threshold says so on the image.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np

__all__ = ["LEGEND_HEIGHT", "image_paths_for", "draw_skeleton", "draw_predictions", "no_keypoint_notice"]

log = logging.getLogger(__name__)

ImageLike = str | os.PathLike | np.ndarray

# BGR. Black and white only: far from every saturated or pastel colour of data/synthetic.py's palettes.
PRED_COLOR, PRED_OUTLINE = (255, 255, 255), (0, 0, 0)
GT_COLOR, GT_OUTLINE = (0, 0, 0), (255, 255, 255)
TEXT_COLOR, TEXT_BOX = (255, 255, 255), (0, 0, 0)
LEGEND_HEIGHT = 30
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_STYLES = {"prediction": (PRED_COLOR, PRED_OUTLINE), "ground_truth": (GT_COLOR, GT_OUTLINE)}


def no_keypoint_notice(kpt_thre: float) -> str:
    """The text drawn on a tile where no predicted joint scores above ``kpt_thre``."""
    return f"no keypoint above threshold {kpt_thre:g}"


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


def _pt(p: np.ndarray) -> tuple[int, int]:
    return int(round(float(p[0]))), int(round(float(p[1])))


def _segments(a: np.ndarray, b: np.ndarray, dash: float, gap: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """The dashes of a dashed line a-b (the whole segment when ``dash`` <= 0)."""
    length = float(np.linalg.norm(b - a))
    if dash <= 0 or length <= dash:
        return [(a, b)]
    u = (b - a) / length
    out, s = [], 0.0
    while s < length:
        out.append((a + s * u, a + min(s + dash, length) * u))
        s += dash + gap
    return out


def draw_skeleton(
    image_bgr: np.ndarray,
    keypoints: np.ndarray,
    skeleton: Sequence[Sequence[int]],
    *,
    kpt_thre: float = 0.2,
    radius: int = 5,
    thickness: int = 4,
    style: str = "prediction",
) -> np.ndarray:
    """Draw one person's joints (J, 3) = (x, y, score or visibility) in place, outlined for contrast.

    Joints at or below ``kpt_thre`` and limbs touching them are skipped. ``style``: 'prediction'
    (solid white limbs, round joints) or 'ground_truth' (dashed black limbs, square joints).
    """
    if style not in _STYLES:
        raise ValueError(f"draw_skeleton: style must be one of {sorted(_STYLES)}, got {style!r}")
    color, outline = _STYLES[style]
    dashed = style == "ground_truth"
    kp = np.asarray(keypoints, dtype=np.float64).reshape(-1, 3)
    ok = (kp[:, 2] > kpt_thre) & np.isfinite(kp[:, :2]).all(axis=1)
    edge = thickness // 2 + 1
    limbs = [
        seg
        for a, b in skeleton
        if a < len(kp) and b < len(kp) and ok[a] and ok[b]
        for seg in _segments(kp[a, :2], kp[b, :2], 3.0 * thickness if dashed else 0.0, 2.5 * thickness)
    ]
    for width, c in ((thickness + 2 * edge, outline), (thickness, color)):  # outline first, core on top
        for p, q in limbs:
            cv2.line(image_bgr, _pt(p), _pt(q), c, width, cv2.LINE_AA)
    for j in np.nonzero(ok)[0]:
        x, y = _pt(kp[j])
        if dashed:
            r = radius - 1
            cv2.rectangle(image_bgr, (x - r - edge, y - r - edge), (x + r + edge, y + r + edge), outline, -1)
            cv2.rectangle(image_bgr, (x - r, y - r), (x + r, y + r), color, -1)
        else:
            cv2.circle(image_bgr, (x, y), radius + edge, outline, -1, cv2.LINE_AA)
            cv2.circle(image_bgr, (x, y), radius, color, -1, cv2.LINE_AA)
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


def _text_box(canvas: np.ndarray, text: str, org: tuple[int, int], scale: float, pad: int = 4) -> None:
    """White text on a black box whose top-left corner is ``org``."""
    (tw, th), base = cv2.getTextSize(text, _FONT, scale, 1)
    x, y = org
    cv2.rectangle(canvas, (x, y), (x + tw + 2 * pad, y + th + base + 2 * pad), TEXT_BOX, -1)
    cv2.putText(canvas, text, (x + pad, y + pad + th), _FONT, scale, TEXT_COLOR, 1, cv2.LINE_AA)


def _fit_scale(text: str, width: int, scale: float = 0.6, min_scale: float = 0.3) -> float:
    """The largest font scale <= ``scale`` at which ``text`` fits in ``width`` px (at least ``min_scale``)."""
    tw = cv2.getTextSize(text, _FONT, scale, 1)[0][0]
    return max(min_scale, min(scale, scale * width / max(tw, 1)))


def _notice(canvas: np.ndarray, text: str) -> None:
    """``text`` centred on the tile in a black box with a white border."""
    h, w = canvas.shape[:2]
    scale = _fit_scale(text, w - 24)
    (tw, th), base = cv2.getTextSize(text, _FONT, scale, 1)
    x0, y0 = max(0, (w - tw) // 2 - 8), max(0, (h - th) // 2 - 8)
    x1, y1 = min(w - 1, x0 + tw + 16), min(h - 1, y0 + th + base + 16)
    cv2.rectangle(canvas, (x0, y0), (x1, y1), TEXT_BOX, -1)
    cv2.rectangle(canvas, (x0, y0), (x1, y1), TEXT_COLOR, 1)
    cv2.putText(canvas, text, (x0 + 8, y0 + 8 + th), _FONT, scale, TEXT_COLOR, 1, cv2.LINE_AA)


def _legend(width: int, kpt_thre: float, with_gt: bool, thickness: int) -> np.ndarray:
    """A dark band naming the prediction and ground-truth styles and the score threshold."""
    band = np.full((LEGEND_HEIGHT, width, 3), 40, np.uint8)
    items = [("prediction", f"prediction: joints with score > {kpt_thre:g}")]
    if with_gt:
        items.append(("ground_truth", "ground truth (dashed)"))
    sample = 3 * thickness + 16
    full = "   ".join(t for _, t in items)
    scale = _fit_scale(full, width - len(items) * (sample + 8) - 8, scale=0.5)
    x, mid = 6, LEGEND_HEIGHT // 2
    for style, text in items:
        kp = np.array([[x + 4, mid, 1.0], [x + sample - 4, mid, 1.0]])
        draw_skeleton(band, kp, [(0, 1)], kpt_thre=0.0, radius=max(2, thickness - 1), thickness=thickness, style=style)
        x += sample + 4
        (tw, th), _ = cv2.getTextSize(text, _FONT, scale, 1)
        cv2.putText(band, text, (x, mid + th // 2), _FONT, scale, TEXT_COLOR, 1, cv2.LINE_AA)
        x += tw + 16
    return band


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
    ground_truth: Sequence[Mapping[str, Any]] | None = None,
) -> str:
    """Draw every result of each of the first ``max_images`` images and save a PNG grid.

    ``images``: (image_id, path or RGB uint8 array) pairs or a mapping; ``results``: COCO
    keypoint results (``image_id``, flat ``keypoints``); ``ground_truth``: optional COCO keypoint
    annotations (``image_id``, flat ``keypoints`` with visibility), drawn dashed under the
    predictions. Tiles are ``tile_height`` px tall, with a legend band of ``LEGEND_HEIGHT`` px under
    the grid. A tile with no predicted joint above ``kpt_thre`` shows :func:`no_keypoint_notice`
    (and a warning is logged). Returns ``out_png``.
    """
    items = list(images.items()) if isinstance(images, Mapping) else list(images)
    items = items[:max_images]
    if not items:
        raise ValueError("draw_predictions: no images to draw")
    by_image: dict[int, list[np.ndarray]] = {}
    for r in results:
        by_image.setdefault(int(r["image_id"]), []).append(np.asarray(r["keypoints"], np.float64))
    gt_by_image: dict[int, list[np.ndarray]] = {}
    for a in ground_truth or ():
        if a.get("keypoints"):
            gt_by_image.setdefault(int(a["image_id"]), []).append(np.asarray(a["keypoints"], np.float64))
    thickness = max(3, int(round(tile_height / 80)))
    radius = thickness + 1
    tiles, empty = [], []
    for img_id, image in items:
        canvas = _load(image).copy()
        scale = tile_height / canvas.shape[0]
        canvas = cv2.resize(
            canvas,
            (max(1, int(round(canvas.shape[1] * scale))), tile_height),
            interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR,
        )
        for kp in gt_by_image.get(int(img_id), []):
            kp = kp.reshape(-1, 3).copy()
            kp[:, :2] *= scale
            draw_skeleton(
                canvas,
                kp,
                keypoint_set.skeleton,
                kpt_thre=0.0,
                radius=radius,
                thickness=thickness,
                style="ground_truth",
            )
        shown = 0
        for kp in by_image.get(int(img_id), []):
            kp = kp.reshape(-1, 3).copy()
            kp[:, :2] *= scale
            shown += int(((kp[:, 2] > kpt_thre) & np.isfinite(kp[:, :2]).all(axis=1)).sum())
            draw_skeleton(canvas, kp, keypoint_set.skeleton, kpt_thre=kpt_thre, radius=radius, thickness=thickness)
        if not shown:
            _notice(canvas, no_keypoint_notice(kpt_thre))
            empty.append(int(img_id))
        _text_box(canvas, str(img_id), (0, 0), 0.5)
        tiles.append(canvas)
    if empty:
        log.warning(
            "draw_predictions: %s on image(s) %s", no_keypoint_notice(kpt_thre), ", ".join(str(i) for i in empty)
        )
    columns = max(1, min(columns, len(tiles)))
    tile_w = max(t.shape[1] for t in tiles)
    rows = -(-len(tiles) // columns)
    grid = np.zeros((rows * tile_height + LEGEND_HEIGHT, columns * tile_w, 3), np.uint8)
    for i, t in enumerate(tiles):
        r, c = divmod(i, columns)
        grid[r * tile_height : (r + 1) * tile_height, c * tile_w : c * tile_w + t.shape[1]] = t
    grid[rows * tile_height :] = _legend(grid.shape[1], kpt_thre, ground_truth is not None, thickness)
    os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
    if not cv2.imwrite(out_png, grid):
        raise OSError(f"draw_predictions: cannot write {out_png}")
    return out_png
