"""Synthetic COCO-layout keypoint dataset: stick figures on textured backgrounds.

``aggpose-synthetic OUT_DIR --keypoints coco|infant --num-images N --seed S`` writes::

    OUT_DIR/annotations/person_keypoints_{train,val}2017.json   (COCO keypoint format)
    OUT_DIR/{train,val}2017/<image id, 12 digits>.jpg
    OUT_DIR/person_detections_val2017.json                       (COCO detection results)

Figures are articulated skeletons with random joint angles, drawn with the keypoint set's skeleton
(one colour per limb type, the same for the left and right limb so that horizontal-flip
augmentation stays consistent; every figure faces the camera, so its left side is on the image's
right along the body axis). Joints covered by an occluder or by a later figure get v=1; joints
outside the image get v=0 with x=y=0. The output is a pure function of the arguments.
"""

from __future__ import annotations

import colorsys
import json
import os
import shutil
import sys
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from aggpose_jax.data.cli_errors import Parser, require_writable_dir, run_cli
from aggpose_jax.pose.keypoints import KeypointSet, get_keypoint_set

_SHIFT = 4  # cv2 sub-pixel drawing: coordinates in 1/16 px
_ONE = 1 << _SHIFT


def _dir(angle: float, side: float = 1.0) -> np.ndarray:
    """Unit vector in the body frame (y up); angle 0 points down, positive turns towards ``side``."""
    return np.array([side * np.sin(angle), -np.cos(angle)])


def _pose_coco(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, float]:
    """COCO-17 joints in a body frame (y up, body height ~1, +x = the person's left);
    also the head centre and radius."""
    p = np.zeros((17, 2))
    length = lambda base: base * rng.uniform(0.9, 1.1)  # noqa: E731
    neck = np.array([0.0, 0.30])
    shoulder, hip = rng.uniform(0.09, 0.12), rng.uniform(0.06, 0.08)
    tilt = rng.normal(0.0, 0.2)
    up, left = np.array([np.sin(tilt), np.cos(tilt)]), np.array([np.cos(tilt), -np.sin(tilt)])
    p[0] = neck + length(0.12) * up
    p[1], p[2] = p[0] + 0.03 * left + 0.03 * up, p[0] - 0.03 * left + 0.03 * up
    p[3], p[4] = p[0] + 0.065 * left + 0.01 * up, p[0] - 0.065 * left + 0.01 * up
    for side, (s, e, w, h, k, a) in ((1.0, (5, 7, 9, 11, 13, 15)), (-1.0, (6, 8, 10, 12, 14, 16))):
        p[s] = neck + (side * shoulder, 0.0)
        arm = rng.uniform(-0.35, 2.7)
        p[e] = p[s] + length(0.16) * _dir(arm, side)
        p[w] = p[e] + length(0.14) * _dir(arm + rng.choice((-1.0, 1.0)) * rng.uniform(0.0, 2.2), side)
        p[h] = (side * hip, 0.0)
        leg = rng.uniform(-0.2, 0.8)
        p[k] = p[h] + length(0.24) * _dir(leg, side)
        p[a] = p[k] + length(0.23) * _dir(leg + rng.uniform(-0.8, 0.35), side)
    return p, p[0] + 0.02 * up, 0.075


def _pose_infant(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, float]:
    """Infant-21 joints (R1..R9, L1..L9, M1..M3) in the same body frame; infant proportions."""
    p = np.zeros((21, 2))
    length = lambda base: base * rng.uniform(0.9, 1.1)  # noqa: E731
    p[20] = (0.0, 0.0)  # M3 navel
    p[19] = (0.0, length(0.26))  # M2 neck
    tilt = rng.normal(0.0, 0.25)
    up, left = np.array([np.sin(tilt), np.cos(tilt)]), np.array([np.cos(tilt), -np.sin(tilt)])
    p[18] = p[19] + length(0.13) * up  # M1 head
    p[0], p[9] = p[18] - 0.045 * left + 0.03 * up, p[18] + 0.045 * left + 0.03 * up  # eyes
    shoulder, hip = rng.uniform(0.09, 0.11), rng.uniform(0.06, 0.08)
    for side, base in ((-1.0, 0), (1.0, 9)):
        sh, el, wr, fi, hp, kn, an, to = (base + i for i in range(1, 9))
        p[sh] = p[19] + (side * shoulder, -0.01)
        arm = rng.uniform(-0.3, 2.8)
        p[el] = p[sh] + length(0.12) * _dir(arm, side)
        fore = arm + rng.choice((-1.0, 1.0)) * rng.uniform(0.0, 2.0)
        p[wr] = p[el] + length(0.11) * _dir(fore, side)
        p[fi] = p[wr] + length(0.05) * _dir(fore + rng.uniform(-0.5, 0.5), side)
        p[hp] = p[20] + (side * hip, -0.06)
        leg = rng.uniform(-0.2, 1.2)
        p[kn] = p[hp] + length(0.15) * _dir(leg, side)
        shin = leg + rng.uniform(-1.5, 0.5)
        p[an] = p[kn] + length(0.14) * _dir(shin, side)
        p[to] = p[an] + length(0.05) * _dir(shin + rng.uniform(0.4, 1.4), side)
    return p, p[18], 0.09


_POSES = {"coco": _pose_coco, "infant": _pose_infant}


def _palettes(kset: KeypointSet) -> tuple[list[tuple[int, int, int]], list[tuple[int, int, int]]]:
    """BGR colour per skeleton edge and per joint; mirrored limbs/joints share a colour."""
    flip = kset.flip_index
    joint_type = [min(j, int(flip[j])) for j in range(kset.num_joints)]
    edge_types: list[tuple[int, int]] = []
    for a, b in kset.skeleton:
        t = tuple(sorted((joint_type[a], joint_type[b])))
        if t not in edge_types:
            edge_types.append(t)

    def bgr(h: float, s: float, v: float) -> tuple[int, int, int]:
        r, g, b = colorsys.hsv_to_rgb(h % 1.0, s, v)
        return int(b * 255), int(g * 255), int(r * 255)

    edges = [
        bgr(edge_types.index(tuple(sorted((joint_type[a], joint_type[b])))) * 0.618, 0.9, 0.95)
        for a, b in kset.skeleton
    ]
    types = sorted(set(joint_type))
    joints = [bgr(types.index(joint_type[j]) * 0.618 + 0.3, 0.6, 1.0) for j in range(kset.num_joints)]
    return edges, joints


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Muted gradient + low-frequency noise + translucent random shapes + pixel noise (BGR uint8)."""

    def muted() -> np.ndarray:
        return 0.55 * rng.uniform(40, 210) + 0.45 * rng.uniform(0, 255, 3)

    c1, c2 = muted(), muted()
    theta = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = np.cos(theta) * xx / w + np.sin(theta) * yy / h
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    img = c1[None, None, :] * (1 - t[..., None]) + c2[None, None, :] * t[..., None]
    grid = (max(2, h // 40), max(2, w // 40))
    coarse = (rng.normal(0, 22, grid + (1,)) + rng.normal(0, 7, grid + (3,))).astype(np.float32)
    img += cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    img = np.clip(img, 0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(4, 12))):
        overlay = img.copy()
        color = tuple(float(c) for c in muted())
        cx, cy = int(rng.uniform(0, w)), int(rng.uniform(0, h))
        size = int(rng.uniform(0.04, 0.25) * min(h, w)) + 1
        kind = int(rng.integers(0, 3))
        if kind == 0:
            cv2.circle(overlay, (cx, cy), size, color, -1, cv2.LINE_AA)
        elif kind == 1:
            cv2.rectangle(overlay, (cx - size, cy - size // 2), (cx + size, cy + size // 2), color, -1)
        else:
            cv2.ellipse(
                overlay, (cx, cy), (size, max(1, size // 3)), float(rng.uniform(0, 180)), 0, 360, color, -1, cv2.LINE_AA
            )
        alpha = float(rng.uniform(0.3, 0.7))
        img = cv2.addWeighted(overlay, alpha, img, 1 - alpha, 0)
    noise = rng.normal(0, 5, img.shape)
    return np.clip(img.astype(np.float32) + noise, 0, 255).astype(np.uint8)


def _seg_dist(points: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance of each point (N, 2) to the segment a-b."""
    ab = b - a
    t = np.clip(((points - a) @ ab) / max(float(ab @ ab), 1e-9), 0.0, 1.0)
    return np.linalg.norm(points - (a + t[:, None] * ab), axis=1)


class _Figure:
    """One placed stick figure: image-space joints, visibility and drawing sizes."""

    def __init__(self, joints: np.ndarray, head: np.ndarray, head_r: float, size: float):
        self.joints = joints  # (J, 2) image px
        self.head, self.head_r = head, head_r
        self.size = size
        self.thickness = max(2, int(round(0.03 * size)))
        self.radius = 0.55 * self.thickness + 1.5
        self.vis = np.full((joints.shape[0],), 2, np.int64)

    def covers(self, points: np.ndarray, skeleton: Sequence[tuple[int, int]]) -> np.ndarray:
        """Which points lie under this figure's drawn limbs, joints or head outline."""
        hit = np.zeros((points.shape[0],), bool)
        for a, b in skeleton:
            hit |= _seg_dist(points, self.joints[a], self.joints[b]) <= self.thickness / 2 + 1
        d_joint = np.linalg.norm(points[:, None, :] - self.joints[None], axis=2).min(axis=1)
        hit |= d_joint <= self.radius + 1
        return hit


def _place_figure(
    rng: np.random.Generator, kset: KeypointSet, h: int, w: int, size: float, boxes: list[np.ndarray], truncate: bool
) -> _Figure | None:
    body, head, head_r = _POSES[kset.name](rng)
    mean = body.mean(axis=0)
    body, head = body - mean, head - mean
    extent = float(np.ptp(body[:, 1]) + head_r)
    angle = rng.normal(0, 0.25) if rng.uniform() < 0.85 else rng.uniform(-1.6, 1.6)
    if kset.name == "infant":
        angle = rng.uniform(-0.9, 0.9)
    c, s = np.cos(angle), np.sin(angle)
    rot = np.array([[c, -s], [s, c]])
    scale = size / extent

    def to_image(pts: np.ndarray) -> np.ndarray:
        return (pts * [1.0, -1.0]) @ rot.T * scale

    joints, head_img = to_image(body), to_image(head[None])[0]
    lo, hi = joints.min(axis=0), joints.max(axis=0)
    for _ in range(30):
        if truncate:
            centre = rng.uniform([-0.1 * w, -0.1 * h], [1.1 * w, 1.1 * h])
        else:
            span_lo, span_hi = -lo + 2, np.array([w, h]) - hi - 2
            if np.any(span_hi < span_lo):
                return None
            centre = rng.uniform(span_lo, span_hi)
        pts = joints + centre
        inside = (pts[:, 0] >= 0) & (pts[:, 0] <= w - 1) & (pts[:, 1] >= 0) & (pts[:, 1] <= h - 1)
        if inside.mean() < 0.6:
            continue
        box = np.concatenate([pts.min(axis=0), pts.max(axis=0)])
        if all(_iou(box, other) < 0.2 for other in boxes):
            fig = _Figure(pts, head_img + centre, head_r * scale, size)
            fig.vis[~inside] = 0
            return fig
    return None


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def _sub(p: np.ndarray) -> tuple[int, int]:
    return int(round(float(p[0]) * _ONE)), int(round(float(p[1]) * _ONE))


def _draw_figure(img: np.ndarray, fig: _Figure, kset: KeypointSet, edge_colors: list, joint_colors: list) -> None:
    cv2.circle(
        img, _sub(fig.head), int(fig.head_r * _ONE), (235, 235, 235), max(1, fig.thickness // 2), cv2.LINE_AA, _SHIFT
    )
    for (a, b), color in zip(kset.skeleton, edge_colors):
        cv2.line(img, _sub(fig.joints[a]), _sub(fig.joints[b]), color, fig.thickness, cv2.LINE_AA, _SHIFT)
    for j in range(kset.num_joints):
        r = int(fig.radius * _ONE)
        cv2.circle(img, _sub(fig.joints[j]), r, joint_colors[j], -1, cv2.LINE_AA, _SHIFT)
        cv2.circle(img, _sub(fig.joints[j]), r, (20, 20, 20), 1, cv2.LINE_AA, _SHIFT)


def _render_image(
    rng: np.random.Generator, kset: KeypointSet, h: int, w: int, palettes: tuple[list, list]
) -> tuple[np.ndarray, list[_Figure]]:
    img = _background(rng, h, w)
    n = int(rng.integers(1, 5))
    unit = h / 480.0
    hi = 400.0 if n <= 2 else 300.0
    figures: list[_Figure] = []
    boxes: list[np.ndarray] = []
    for _ in range(n):
        size = rng.uniform(130.0, hi) * unit
        fig = _place_figure(rng, kset, h, w, size, boxes, truncate=rng.uniform() < 0.25)
        if fig is None:
            continue
        figures.append(fig)
        boxes.append(np.concatenate([fig.joints.min(axis=0), fig.joints.max(axis=0)]))
    # Later figures are drawn over earlier ones: joints under them are occluded (v=1).
    for i, fig in enumerate(figures):
        for later in figures[i + 1 :]:
            fig.vis[(fig.vis == 2) & later.covers(fig.joints, kset.skeleton)] = 1
        _draw_figure(img, fig, kset, *palettes)
    # Occluding rectangles over random labelled joints.
    for fig in figures:
        labelled = np.flatnonzero(fig.vis > 0)
        if rng.uniform() >= 0.35 or labelled.size == 0:
            continue
        centre = fig.joints[int(rng.choice(labelled))] + rng.normal(0, 0.03 * fig.size, 2)
        half = rng.uniform(0.05, 0.11, 2) * fig.size
        x0, y0 = np.maximum(centre - half, 0).astype(int)
        x1, y1 = np.minimum(centre + half, [w - 1, h - 1]).astype(int)
        if x1 <= x0 or y1 <= y0:
            continue
        color = 0.5 * rng.uniform(50, 200) + 0.5 * rng.uniform(0, 255, 3)
        patch = color[None, None, :] + rng.normal(0, 12, (y1 - y0 + 1, x1 - x0 + 1, 3))
        img[y0 : y1 + 1, x0 : x1 + 1] = np.clip(patch, 0, 255).astype(np.uint8)
        for other in figures:
            p = other.joints
            under = (p[:, 0] >= x0 - 0.5) & (p[:, 0] <= x1 + 0.5) & (p[:, 1] >= y0 - 0.5) & (p[:, 1] <= y1 + 0.5)
            other.vis[(other.vis == 2) & under] = 1
    return img, figures


def _annotation(fig: _Figure, ann_id: int, image_id: int, h: int, w: int) -> dict[str, Any] | None:
    labelled = fig.vis > 0
    if not labelled.any():
        return None
    kps = np.zeros((fig.joints.shape[0], 3))
    kps[labelled, :2] = np.round(fig.joints[labelled], 2)
    kps[:, 2] = fig.vis
    lo, hi = kps[labelled, :2].min(axis=0), kps[labelled, :2].max(axis=0)
    margin = 0.06 * fig.size + fig.thickness
    x0, y0 = np.maximum(lo - margin, 0.0)
    x1, y1 = np.minimum(hi + margin, [w - 1.0, h - 1.0])
    tight = np.maximum(hi - lo, 1.0)
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": 1,
        "iscrowd": 0,
        "keypoints": [float(v) if k % 3 < 2 else int(v) for k, v in enumerate(kps.reshape(-1))],
        "num_keypoints": int(labelled.sum()),
        "bbox": [round(float(x0), 2), round(float(y0), 2), round(float(x1 - x0), 2), round(float(y1 - y0), 2)],
        "area": round(float(tight[0] * tight[1]), 2),
    }


def _detections(rng: np.random.Generator, anns: list[dict[str, Any]], image_id: int, h: int, w: int) -> list[dict]:
    """Jittered GT boxes with high scores, sometimes one low-score false positive."""
    out = []
    for ann in anns:
        x, y, bw, bh = ann["bbox"]
        cx, cy = x + bw / 2 + rng.normal(0, 0.04) * bw, y + bh / 2 + rng.normal(0, 0.04) * bh
        bw, bh = bw * float(np.clip(rng.normal(1, 0.06), 0.8, 1.2)), bh * float(np.clip(rng.normal(1, 0.06), 0.8, 1.2))
        x0, y0 = max(0.0, cx - bw / 2), max(0.0, cy - bh / 2)
        x1, y1 = min(w - 1.0, cx + bw / 2), min(h - 1.0, cy + bh / 2)
        out.append(
            {
                "image_id": image_id,
                "category_id": 1,
                "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
                "score": round(float(rng.uniform(0.55, 0.99)), 4),
            }
        )
    if rng.uniform() < 0.3:
        bw, bh = rng.uniform(0.1, 0.3) * w, rng.uniform(0.2, 0.5) * h
        x0, y0 = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
        out.append(
            {
                "image_id": image_id,
                "category_id": 1,
                "bbox": [round(float(x0), 2), round(float(y0), 2), round(float(bw), 2), round(float(bh), 2)],
                "score": round(float(rng.uniform(0.02, 0.3)), 4),
            }
        )
    return out


def _write_json(path: str, obj: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, separators=(",", ":"))


def generate_synthetic(
    out_dir: str,
    *,
    keypoints: str = "coco",
    num_images: int,
    seed: int,
    image_size: Sequence[int] = (480, 640),
    val_fraction: float = 0.2,
    jpeg_quality: int = 92,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write a synthetic COCO-layout dataset under ``out_dir`` (see module docstring).

    The first ``num_images - n_val`` images (ids 1, 2, ...) form the train split, the rest val,
    with ``n_val = round(num_images * val_fraction)`` (at least 1 when ``val_fraction > 0``).
    ``out_dir`` must be absent or empty unless ``overwrite`` (else FileExistsError). The set is
    written to a temporary sibling ``<out_dir>.partial-<pid>`` and moved into place only when
    complete (an old set is moved aside, then removed), so a set is never half-replaced; any
    exception, KeyboardInterrupt or SystemExit on the way removes the temporary folder.
    Returns a summary: paths, image/person counts per split and visibility counts.
    """
    kset = get_keypoint_set(keypoints)
    if kset.name not in _POSES:
        raise ValueError(f"no synthetic figure template for keypoint set {kset.name!r}; known: {sorted(_POSES)}")
    h, w = (int(v) for v in image_size)
    if h < 64 or w < 64:
        raise ValueError(f"image_size {tuple(image_size)} too small (need at least 64x64)")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    if num_images < 1 or not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"need num_images >= 1 and 0 <= val_fraction < 1, got {num_images}, {val_fraction}")
    out_dir = os.fspath(out_dir)
    require_writable_dir(out_dir, "output folder")
    replace = os.path.isdir(out_dir) and bool(os.listdir(out_dir))
    if replace and not overwrite:
        raise FileExistsError(f"output folder {out_dir} is not empty (pass --overwrite to replace it)")
    final = os.path.abspath(out_dir)
    work = f"{final}.partial-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    n_val = min(num_images - 1, max(1 if val_fraction > 0 else 0, int(round(num_images * val_fraction))))
    n_train = num_images - n_val
    palettes = _palettes(kset)
    summary: dict[str, Any] = {
        "root": final,
        "keypoints": kset.name,
        "image_size": (h, w),
        "seed": int(seed),
        "splits": {},
        "visibility": {0: 0, 1: 0, 2: 0},
    }
    category = kset.to_coco_category()
    ann_id = 1
    detections: list[dict[str, Any]] = []
    try:
        os.makedirs(os.path.join(work, "annotations"))
        for split, ids in (("train", range(1, n_train + 1)), ("val", range(n_train + 1, num_images + 1))):
            os.makedirs(os.path.join(work, f"{split}2017"))
            images, annotations = [], []
            for image_id in ids:
                rng = np.random.default_rng([int(seed), image_id, len(kset.names)])
                img, figures = _render_image(rng, kset, h, w, palettes)
                file_name = f"{image_id:012d}.jpg"
                ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
                if not ok:
                    raise RuntimeError(f"cv2.imencode failed for {file_name}")
                with open(os.path.join(work, f"{split}2017", file_name), "wb") as f:
                    f.write(buf.tobytes())
                images.append({"id": image_id, "file_name": file_name, "width": w, "height": h})
                anns = []
                for fig in figures:
                    ann = _annotation(fig, ann_id, image_id, h, w)
                    if ann is not None:
                        anns.append(ann)
                        ann_id += 1
                        for v in ann["keypoints"][2::3]:
                            summary["visibility"][int(v)] += 1
                annotations.extend(anns)
                if split == "val":
                    detections.extend(
                        _detections(np.random.default_rng([int(seed), image_id, 7]), anns, image_id, h, w)
                    )
            ann_name = os.path.join("annotations", f"person_keypoints_{split}2017.json")
            _write_json(
                os.path.join(work, ann_name),
                {
                    "info": {"description": f"aggpose-jax synthetic {kset.name} (seed {seed})"},
                    "images": images,
                    "annotations": annotations,
                    "categories": [category],
                },
            )
            summary["splits"][split] = {
                "ann_file": os.path.join(out_dir, ann_name),
                "image_dir": os.path.join(out_dir, f"{split}2017"),
                "images": len(images),
                "people": len(annotations),
            }
        _write_json(os.path.join(work, "person_detections_val2017.json"), detections)
        if replace:
            aside = f"{final}.old-{os.getpid()}"
            os.rename(final, aside)
            try:
                os.rename(work, final)
            except BaseException:
                os.rename(aside, final)  # the old set stays whole
                raise
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.replace(work, final)  # also over an empty folder
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    summary["detections_file"] = os.path.join(out_dir, "person_detections_val2017.json")
    summary["num_detections"] = len(detections)
    return summary


def animate_figure(
    num_frames: int,
    *,
    keypoints: str = "coco",
    seed: int = 0,
    image_size: Sequence[int] = (240, 320),
    height_fraction: float = 0.7,
    period_frames: float = 24.0,
    drift_px: float = 12.0,
) -> tuple[np.ndarray, np.ndarray]:
    """One stick figure moving in front of a fixed background (a fixed camera), with its true joints.

    The figure swings between two random poses (cosine easing, one cycle per ``period_frames``), drifts
    by up to ``drift_px`` pixels and sways a little; its height is about ``height_fraction`` of the
    frame. Every joint stays inside the frame. The output is a pure function of the arguments.

    Returns:
      frames: uint8 BGR (T, H, W, 3); joints: float64 (T, J, 2), the image positions drawn (x, y).
    """
    kset = get_keypoint_set(keypoints)
    if kset.name not in _POSES:
        raise ValueError(f"no synthetic figure template for keypoint set {kset.name!r}; known: {sorted(_POSES)}")
    h, w = (int(v) for v in image_size)
    if num_frames < 1 or h < 64 or w < 64 or not 0.1 <= height_fraction <= 0.9:
        raise ValueError(
            f"animate_figure: need num_frames >= 1, image_size >= 64x64 and 0.1 <= height_fraction <= 0.9, "
            f"got {num_frames}, {(h, w)}, {height_fraction}"
        )
    rng = np.random.default_rng([int(seed), 11, len(kset.names)])
    background = _background(rng, h, w)
    palettes = _palettes(kset)
    pose_a, head_a, head_r = _POSES[kset.name](rng)
    pose_b, head_b, _ = _POSES[kset.name](rng)
    centre_body = 0.5 * (pose_a.mean(axis=0) + pose_b.mean(axis=0))
    extent = float(max(np.ptp(pose_a[:, 1]), np.ptp(pose_b[:, 1])) + head_r)
    scale = height_fraction * h / extent
    phase = rng.uniform(0.0, 2.0 * np.pi, 3)
    frames = np.empty((num_frames, h, w, 3), np.uint8)
    joints = np.empty((num_frames, kset.num_joints, 2), np.float64)
    for t in range(num_frames):
        mix = 0.5 - 0.5 * np.cos(2.0 * np.pi * t / period_frames)
        body = (1.0 - mix) * pose_a + mix * pose_b - centre_body
        head = (1.0 - mix) * head_a + mix * head_b - centre_body
        angle = 0.08 * np.sin(2.0 * np.pi * t / (1.7 * period_frames) + phase[0])
        c, s = np.cos(angle), np.sin(angle)
        rot = np.array([[c, -s], [s, c]])
        shift = drift_px * np.array(
            [
                np.sin(2.0 * np.pi * t / (2.3 * period_frames) + phase[1]),
                0.4 * np.sin(2.0 * np.pi * t / (3.1 * period_frames) + phase[2]),
            ]
        )
        centre = np.array([w / 2.0, h / 2.0]) + shift
        pts = (body * [1.0, -1.0]) @ rot.T * scale + centre
        head_img = ((head * [1.0, -1.0]) @ rot.T) * scale + centre
        lo, hi = pts.min(axis=0), pts.max(axis=0)
        inside = np.maximum(0.0, 3.0 - lo) - np.maximum(0.0, hi - [w - 4.0, h - 4.0])  # keep every joint in view
        pts, head_img = pts + inside, head_img + inside
        img = background.copy()
        _draw_figure(img, _Figure(pts, head_img, head_r * scale, height_fraction * h), kset, *palettes)
        frames[t], joints[t] = img, pts
    return frames, joints


def main(argv: Sequence[str] | None = None) -> int:
    parser = Parser(
        prog="aggpose-synthetic", description="Write a synthetic COCO-layout keypoint dataset of stick figures."
    )
    parser.add_argument("out_dir")
    parser.add_argument("--keypoints", default="coco", choices=sorted(_POSES))
    parser.add_argument("--num-images", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, nargs=2, default=(480, 640), metavar=("H", "W"))
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a non-empty OUT_DIR (the new set is swapped in only once complete)",
    )
    args = parser.parse_args(argv)

    def body() -> int:
        s = generate_synthetic(
            args.out_dir,
            keypoints=args.keypoints,
            num_images=args.num_images,
            seed=args.seed,
            image_size=args.image_size,
            val_fraction=args.val_fraction,
            overwrite=args.overwrite,
        )
        for split, info in s["splits"].items():
            print(f"{split}: {info['images']} images, {info['people']} people -> {info['ann_file']}")
        print(
            f"visibility counts (v=0/1/2): {s['visibility'][0]}/{s['visibility'][1]}/{s['visibility'][2]}; "
            f"{s['num_detections']} detections -> {s['detections_file']}"
        )
        return 0

    return run_cli("aggpose-synthetic", body)


if __name__ == "__main__":
    sys.exit(main())
