"""Render a PNG grid of pipeline outputs to check augmentation and targets by eye.

    python -m aggpose_jax.data.visualize --root ROOT --keypoints coco --out grid.png \
        [--num 16] [--split train] [--seed 0]

Training samples: the de-normalised augmented crop, the target heatmaps (maximum over joints,
colour-mapped) blended on top, and the skeleton drawn through the target peaks of joints with
weight 1. Validation samples: the crops with their box centre.

A missing root or annotation file, or an --out that cannot be written, is one line on stderr and
exit code 2.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence
from typing import Any

import cv2
import ml_collections
import numpy as np

from aggpose_jax.data import pipeline
from aggpose_jax.data.cli_errors import Parser, require_dir, require_file, require_writable_file, run_cli
from aggpose_jax.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from aggpose_jax.pose.keypoints import get_keypoint_set


def denormalize(image: np.ndarray) -> np.ndarray:
    """ImageNet-normalised float32 RGB -> uint8 RGB."""
    return np.clip((image * IMAGENET_STD + IMAGENET_MEAN) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def target_peaks(target: np.ndarray, image_hw: Sequence[int]) -> np.ndarray:
    """Arg-max of each target map (h, w, J), mapped to crop pixels (J, 2).

    Heatmap and crop share their centre and corners under the AggPose convention, so a heatmap
    coordinate scales by (W - 1) / (w - 1).
    """
    h, w, j = target.shape
    flat = target.reshape(h * w, j).argmax(axis=0)
    ys, xs = np.divmod(flat, w)
    sx = (image_hw[1] - 1) / max(w - 1, 1)
    sy = (image_hw[0] - 1) / max(h - 1, 1)
    return np.stack([xs * sx, ys * sy], axis=1)


def render_sample(sample: dict[str, np.ndarray], skeleton: Sequence[tuple[int, int]]) -> np.ndarray:
    """One tile (uint8 BGR) for a training or evaluation sample."""
    rgb = denormalize(sample["image"])
    hh, ww = rgb.shape[:2]
    tile = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    if "target" in sample:
        heat = sample["target"].max(axis=-1)
        heat = cv2.resize(heat, (ww, hh), interpolation=cv2.INTER_LINEAR)
        colour = cv2.applyColorMap(np.clip(heat * 255, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)
        alpha = np.clip(heat, 0, 1)[..., None] * 0.6
        tile = (tile * (1 - alpha) + colour * alpha).astype(np.uint8)
        pts = target_peaks(sample["target"], (hh, ww))
        ok = sample["target_weight"] > 0
        for a, b in skeleton:
            if ok[a] and ok[b]:
                cv2.line(
                    tile,
                    tuple(int(round(v)) for v in pts[a]),
                    tuple(int(round(v)) for v in pts[b]),
                    (255, 255, 255),
                    1,
                    cv2.LINE_AA,
                )
        for k in np.flatnonzero(ok):
            cv2.circle(tile, tuple(int(round(v)) for v in pts[k]), 2, (0, 255, 255), -1, cv2.LINE_AA)
    elif "valid" in sample and not sample["valid"]:
        tile[:] = 64
    return tile


def render_grid(
    batch: dict[str, np.ndarray], skeleton: Sequence[tuple[int, int]], num: int | None = None, gap: int = 4
) -> np.ndarray:
    """Tiles of the first ``num`` samples of a batch, in a near-square grid (uint8 BGR)."""
    n = len(batch["image"]) if num is None else min(num, len(batch["image"]))
    tiles = [render_sample({k: v[i] for k, v in batch.items()}, skeleton) for i in range(n)]
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    th, tw = tiles[0].shape[:2]
    grid = np.full((rows * (th + gap) + gap, cols * (tw + gap) + gap, 3), 255, np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        y, x = gap + r * (th + gap), gap + c * (tw + gap)
        grid[y : y + th, x : x + tw] = tile
    return grid


def default_data_config(root: str, keypoints: str) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        {
            "root": root,
            "source": "coco_json",
            "tfds_data_dir": "",
            "keypoints": keypoints,
            "image_size": (256, 192),
            "heatmap_size": (64, 48),
            "sigma": 2.0,
            "use_gt_bbox": True,
            "detections_file": "",
            "det_score_threshold": 0.0,
            "num_workers": 0,
            "aug": {},
        }
    )


def main(argv: Sequence[str] | None = None) -> int:
    prog = "python -m aggpose_jax.data.visualize"
    parser = Parser(prog=prog, description=__doc__.split("\n")[0])
    parser.add_argument("--root", required=True, help="COCO-layout dataset root")
    parser.add_argument("--keypoints", default="coco", help="keypoint set name")
    parser.add_argument("--out", required=True, help="output PNG")
    parser.add_argument("--num", type=int, default=16)
    parser.add_argument("--split", default="train", choices=("train", "val"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    return run_cli(prog, lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    require_dir(args.root, "--root")
    require_file(os.path.join(args.root, "annotations", f"person_keypoints_{args.split}2017.json"), "annotation file")
    require_writable_file(args.out, "--out")
    if not cv2.haveImageWriter(args.out):
        raise ValueError(f"--out {args.out}: not an image file name OpenCV can write (use .png)")
    if args.num < 1:
        raise ValueError(f"--num must be at least 1, got {args.num}")
    kp_set = get_keypoint_set(args.keypoints)
    cfg = default_data_config(args.root, args.keypoints)
    source = pipeline.make_source(cfg, args.split)
    loader = pipeline.make_loader(
        source,
        keypoint_set=kp_set,
        data_config=cfg,
        train=args.split == "train",
        batch_size=args.num,
        seed=args.seed,
        shard_index=0,
        shard_count=1,
        worker_count=0,
        prefetch=0,
    )
    it = iter(loader)
    try:
        batch: dict[str, Any] = next(it)
    except StopIteration:
        print(f"visualize: no samples in {args.root} ({args.split})", file=sys.stderr)
        return 1
    grid = render_grid(batch, kp_set.skeleton, args.num)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    if not cv2.imwrite(args.out, grid):
        raise OSError(f"could not write --out {args.out}")
    print(f"wrote {args.out}: {min(args.num, len(batch['image']))} samples, {grid.shape[1]}x{grid.shape[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
