"""Per-record transforms of the top-down pipeline (Grain ``Map`` / ``RandomMap`` / ``Filter``).

Training recipe (AggPose release = HRNet ``JointsDataset`` plus colour jitter), per person record:

1. decode the image (``cv2.imdecode``, colour, EXIF orientation ignored, RGB); a missing (``b''``)
   or undecodable image drops the record (``DecodeImage``, then ``DropUndecodable`` in eval; training
   drops it after batching, ``pipeline.LoaderIterator``), is counted and is logged once per file and process;
2. box -> centre/scale (aspect W/H, x1.25, 200-px units);
3. half-body: with probability ``half_body_prob`` when more than ``half_body_min_joints`` joints are
   visible. Upper-body joints are chosen when a *standard normal* draw is < 0.5 (the original
   code uses ``np.random.randn() < 0.5``, so P(upper) = 0.691, not 0.5) and more than two upper
   joints are visible; else lower-body joints if more than two, else upper. Fewer than two chosen
   joints: no change. New box = the chosen joints' extent (+1 px), aspect-fixed, x1.5;
4. scale x clip(1 + 0.35 N(0, 1), 0.65, 1.35); rotation clip(45 N(0, 1), -90, 90) when a uniform
   draw is <= 0.6, else 0;
5. horizontal flip when a uniform draw is <= 0.5: the full image is mirrored, joints mirrored
   (x -> W - x - 1) with the keypoint set's pairs swapped, centre x -> W - cx - 1;
6. colour jitter with probability 0.5, applied to the full (flipped) uint8 image before the crop,
   as the release does: brightness, contrast, saturation factors ~ U(1 - 0.3, 1 + 0.3), hue shift
   ~ U(-0.1, 0.1), the four applied in a random order (torchvision ``ColorJitter`` semantics).
   Brightness and contrast are the release's exact lookup tables (contrast pivots on the rounded
   mean grey level of the whole image, here estimated on every 4th pixel in each direction);
   saturation blends with the BT.601 grey image (Pillow's ``ImageEnhance.Color`` up to rounding);
   hue rotates OpenCV's 8-bit full-range HSV hue (the release goes through Pillow's 8-bit HSV,
   which rounds differently). Only the window of the image that the crop reads is jittered
   (much less work; the crop is the same up to +-1 grey level on ~1e-5 of its pixels, from
   OpenCV's fixed-point warp rounding a shifted matrix differently);
7. bilinear affine crop (``cv2.warpAffine``, ``INTER_LINEAR``, zero border) to ``image_size``;
   joints mapped by the same affine built for ``heatmap_size`` (as the release does), targets by
   ``aggpose_jax.pose.codec.encode_targets``; ImageNet normalisation in float32.

Randomness comes only from the ``np.random.Generator`` Grain hands to ``RandomMap`` (seeded by the
pipeline seed and the record's index), so a sample is reproducible from (seed, index).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
from collections.abc import Sequence
from typing import Any, NamedTuple

import cv2
import grain
import numpy as np

from aggpose_jax.pose import geometry
from aggpose_jax.pose.codec import encode_targets

logger = logging.getLogger(__name__)

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
_NORM_MATRIX = np.zeros((3, 4), dtype=np.float32)
_NORM_MATRIX[[0, 1, 2], [0, 1, 2]] = 1.0 / (255.0 * IMAGENET_STD)
_NORM_MATRIX[:, 3] = -IMAGENET_MEAN / IMAGENET_STD
_JITTER_OPS = ("brightness", "contrast", "saturation", "hue")


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation parameters (``config.data.aug``); defaults are the release's."""

    scale_factor: float = 0.35
    rotation_factor: float = 45.0
    rotation_prob: float = 0.6
    flip: bool = True
    half_body_prob: float = 0.3
    color_jitter_prob: float = 0.5
    brightness: float = 0.3
    contrast: float = 0.3
    saturation: float = 0.3
    hue: float = 0.1

    @classmethod
    def from_config(cls, aug: Any | None) -> AugmentConfig:
        """From an ml_collections section (or mapping); missing fields keep their defaults."""
        if aug is None:
            return cls()
        get = aug.get if hasattr(aug, "get") else lambda k, d: getattr(aug, k, d)
        return cls(**{f.name: type(f.default)(get(f.name, f.default)) for f in dataclasses.fields(cls)})


# --------------------------------------------------------------------------- decoding

_BAD_IMAGES: collections.Counter[str] = collections.Counter()


def decode_image(data: bytes) -> np.ndarray | None:
    """Encoded bytes -> uint8 RGB (H, W, 3), or None when empty or undecodable."""
    if not data:
        return None
    try:
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    except cv2.error:
        return None
    if bgr is None or bgr.ndim != 3 or bgr.shape[0] == 0 or bgr.shape[1] == 0:
        return None
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


class DecodeImage(grain.transforms.Map):
    """``image_bytes`` -> ``image`` (uint8 RGB), or ``image=None`` (then dropped) on failure.

    A failure is counted in this process, logged with ``logging.warning`` the first time this
    process meets the file, and, when ``report_dir`` is set, appended to
    ``report_dir/<pid>.jsonl`` so the main process can count failures in every worker.
    """

    def __init__(self, report_dir: str | None = None):
        self.report_dir = report_dir

    def map(self, element: dict[str, Any]) -> dict[str, Any]:
        element = dict(element)
        data = element.pop("image_bytes", b"")
        image = decode_image(data)
        if image is None:
            name = str(element.get("image_file", "?"))
            first = name not in _BAD_IMAGES
            _BAD_IMAGES[name] += 1
            if first:
                why = "missing (no bytes)" if not data else "corrupt (cv2.imdecode failed)"
                logger.warning("skipping samples of image %s: %s", name, why)
            if self.report_dir:
                self._report(name)
        element["image"] = image
        return element

    def _report(self, name: str) -> None:
        try:
            os.makedirs(self.report_dir, exist_ok=True)
            path = os.path.join(self.report_dir, f"{os.getpid()}.jsonl")
            with open(path, "a", encoding="utf-8") as f:
                f.write(json.dumps(name) + "\n")
        except OSError as err:  # counting must never stop a run
            logger.warning("could not record skipped image %s in %s: %s", name, self.report_dir, err)


class DropUndecodable(grain.transforms.Filter):
    """Keeps records whose image decoded."""

    def filter(self, element: dict[str, Any]) -> bool:
        return element.get("image") is not None


# --------------------------------------------------------------------------- colour jitter


def adjust_brightness(img: np.ndarray, factor: float) -> np.ndarray:
    lut = np.clip(np.arange(256, dtype=np.float64) * factor, 0, 255).astype(np.uint8)
    return cv2.LUT(img, lut)


def grey_mean(img: np.ndarray) -> int:
    """Rounded mean grey level (BT.601), the pivot of the contrast adjustment."""
    return round(cv2.mean(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY))[0])


def adjust_contrast(img: np.ndarray, factor: float, pivot: int | None = None) -> np.ndarray:
    """Scale grey levels about ``pivot`` (default: this image's rounded mean grey level)."""
    mean = grey_mean(img) if pivot is None else pivot
    lut = np.clip((np.arange(256, dtype=np.float64) - mean) * factor + mean, 0, 255)
    return cv2.LUT(img, lut.astype(np.uint8))


def adjust_saturation(img: np.ndarray, factor: float) -> np.ndarray:
    grey = cv2.cvtColor(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
    return cv2.addWeighted(img, factor, grey, 1.0 - factor, 0.0)


def adjust_hue(img: np.ndarray, shift: float) -> np.ndarray:
    """Rotate the hue by ``shift`` of a full turn (in [-0.5, 0.5]), on a 0..255 hue scale."""
    hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV_FULL)
    step = np.uint8(int(shift * 255) % 256)
    hue = hsv[..., 0]
    np.add(hue, step, out=hue, casting="unsafe")  # uint8 wrap-around = cyclic hue
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB_FULL)


_ADJUST = {
    "brightness": adjust_brightness,
    "contrast": adjust_contrast,
    "saturation": adjust_saturation,
    "hue": adjust_hue,
}


def color_jitter(
    img: np.ndarray, ops: Sequence[tuple[str, float]], pivot_image: np.ndarray | None = None
) -> np.ndarray:
    """Apply ``(op_name, factor)`` adjustments in the given order to a uint8 RGB image.

    ``img`` may be a window of a larger image; the contrast pivot is then the mean grey level of
    ``pivot_image`` (a thumbnail of the whole image) after the adjustments preceding contrast.
    """
    for name, factor in ops:
        if name == "contrast":
            pivot = grey_mean(img if pivot_image is None else pivot_image)
            img = adjust_contrast(img, factor, pivot)
            pivot_image = None  # later ops do not need it
        else:
            img = _ADJUST[name](img, factor)
            if pivot_image is not None:
                pivot_image = _ADJUST[name](pivot_image, factor)
    return img


def sample_color_jitter(rng: np.random.Generator, aug: AugmentConfig) -> tuple[tuple[str, float], ...]:
    """Factors as torchvision ``ColorJitter`` draws them, in a random order (zero ranges skipped)."""
    ops = []
    for name in _JITTER_OPS:
        amount = float(getattr(aug, name))
        if amount <= 0:
            continue
        if name == "hue":
            ops.append((name, float(rng.uniform(-amount, amount))))
        else:
            ops.append((name, float(rng.uniform(max(0.0, 1.0 - amount), 1.0 + amount))))
    order = rng.permutation(len(ops))
    return tuple(ops[i] for i in order)


# --------------------------------------------------------------------------- geometry of a sample


class TrainParams(NamedTuple):
    """Random choices for one training sample. ``center`` is in the *unflipped* image."""

    center: np.ndarray  # float32[2]
    scale: np.ndarray  # float32[2]
    rotation: float
    flip: bool
    jitter: tuple[tuple[str, float], ...] | None


def half_body_center_scale(
    joints: np.ndarray,
    visible: np.ndarray,
    upper_body: Sequence[int],
    aspect_ratio: float,
    upper_draw: float,
) -> tuple[np.ndarray, np.ndarray] | None:
    """The release's half-body box, or None when fewer than two joints get chosen.

    ``upper_draw`` is the standard-normal draw; the upper body is chosen when it is < 0.5.
    """
    vis = np.asarray(visible) > 0
    is_upper = np.zeros(len(vis), dtype=bool)
    is_upper[list(upper_body)] = True
    upper = joints[vis & is_upper]
    lower = joints[vis & ~is_upper]
    if upper_draw < 0.5 and len(upper) > 2:
        chosen = upper
    else:
        chosen = lower if len(lower) > 2 else upper
    if len(chosen) < 2:
        return None
    return geometry.joints_to_center_scale(chosen, aspect_ratio, padding=1.5)


def sample_train_params(
    rng: np.random.Generator,
    center: np.ndarray,
    scale: np.ndarray,
    joints: np.ndarray,
    visible: np.ndarray,
    keypoint_set: Any,
    aug: AugmentConfig,
    aspect_ratio: float,
) -> TrainParams:
    """Draw half-body, scale, rotation, flip and colour-jitter choices (the release's rules)."""
    c = np.asarray(center, np.float32)
    s = np.asarray(scale, np.float32)
    if float(np.sum(np.asarray(visible) > 0)) > keypoint_set.half_body_min_joints and rng.random() < aug.half_body_prob:
        hb = half_body_center_scale(
            joints, visible, keypoint_set.upper_body, aspect_ratio, upper_draw=float(rng.standard_normal())
        )
        if hb is not None:
            c, s = hb
    sf, rf = aug.scale_factor, aug.rotation_factor
    s = s * np.float32(np.clip(rng.standard_normal() * sf + 1.0, 1.0 - sf, 1.0 + sf))
    rot = 0.0
    if rng.random() <= aug.rotation_prob:
        rot = float(np.clip(rng.standard_normal() * rf, -2.0 * rf, 2.0 * rf))
    flip = bool(aug.flip and rng.random() <= 0.5)
    jitter = sample_color_jitter(rng, aug) if rng.random() <= aug.color_jitter_prob else None
    return TrainParams(c.astype(np.float32), s.astype(np.float32), rot, flip, jitter)


def normalize_image(crop: np.ndarray) -> np.ndarray:
    """uint8 RGB -> float32 ``(x / 255 - mean) / std`` (ImageNet statistics)."""
    return cv2.transform(crop.astype(np.float32), _NORM_MATRIX)


def warp_crop(image: np.ndarray, matrix: np.ndarray, image_size_hw: Sequence[int]) -> np.ndarray:
    """Bilinear affine crop as the release does it (zero border)."""
    h, w = int(image_size_hw[0]), int(image_size_hw[1])
    return cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_LINEAR)


def _jitter_and_crop(
    image: np.ndarray, ops: Sequence[tuple[str, float]], trans: np.ndarray, out_hw: tuple[int, int]
) -> np.ndarray:
    """Colour-jitter the whole image, then crop -- computed on the window the crop reads.

    Jitter is per pixel except the contrast pivot, which is taken from a stride-4 thumbnail of
    the whole image; the crop equals jitter-then-warp of the full image up to rare +-1 levels.
    """
    x0, y0, x1, y1 = geometry.source_window(trans, out_hw[::-1], image.shape[:2])
    if x1 <= x0 or y1 <= y0:  # the crop misses the image: all border
        return np.zeros(out_hw + (3,), dtype=np.uint8)
    thumb = np.ascontiguousarray(image[::4, ::4])
    window = color_jitter(np.ascontiguousarray(image[y0:y1, x0:x1]), ops, pivot_image=thumb)
    shifted = trans.copy()
    shifted[:, 2] += trans[:, :2] @ np.array([x0, y0], dtype=np.float64)
    return warp_crop(window, shifted, out_hw)


def make_train_sample(
    image: np.ndarray,
    joints: np.ndarray,
    visible: np.ndarray,
    params: TrainParams,
    flip_index: np.ndarray,
    image_size_hw: Sequence[int],
    heatmap_size_hw: Sequence[int],
    sigma: float,
    convention: geometry.Convention = "aggpose",
    return_uint8: bool = False,
) -> dict[str, np.ndarray]:
    """Deterministic part of a training sample: flip, jitter, crop, targets, normalise.

    ``joints`` (J, 2) and ``visible`` (J,) are in the original image. With ``return_uint8`` the
    un-normalised crop and the heatmap-space joints are returned too (for tests and plots).
    """
    c = np.array(params.center, dtype=np.float32, copy=True)
    joints = np.asarray(joints, np.float32)[:, :2]
    vis = np.asarray(visible, np.float32)
    if params.flip:
        width = image.shape[1]
        image = cv2.flip(image, 1)
        joints, vis = geometry.flip_joints(joints, vis, width, flip_index)
        c[0] = np.float32(width) - c[0] - np.float32(1.0)
    out_hw = (int(image_size_hw[0]), int(image_size_hw[1]))
    hm_hw = (int(heatmap_size_hw[0]), int(heatmap_size_hw[1]))
    trans = geometry.get_affine_transform(c, params.scale, params.rotation, out_hw[::-1], convention=convention)
    if params.jitter:
        crop = _jitter_and_crop(image, params.jitter, trans, out_hw)
    else:
        crop = warp_crop(image, trans, out_hw)
    trans_hm = geometry.get_affine_transform(c, params.scale, params.rotation, hm_hw[::-1], convention=convention)
    joints_hm = geometry.affine_points(joints, trans_hm).astype(np.float32)
    target, weight = encode_targets(joints_hm, vis, hm_hw, sigma)
    out = {
        "image": normalize_image(crop),
        "target": np.asarray(target, np.float32),
        "target_weight": np.asarray(weight, np.float32),
    }
    if return_uint8:
        out["crop"] = crop
        out["joints_hm"] = joints_hm
    return out


# --------------------------------------------------------------------------- Grain transforms


@dataclasses.dataclass
class _Sizes:
    image_size_hw: tuple[int, int]
    heatmap_size_hw: tuple[int, int]

    @property
    def aspect_ratio(self) -> float:
        return self.image_size_hw[1] / self.image_size_hw[0]


class TrainTransform(grain.transforms.RandomMap):
    """Decoded person record -> {'image', 'target', 'target_weight'} with random augmentation."""

    def __init__(
        self,
        keypoint_set: Any,
        image_size_hw: Sequence[int],
        heatmap_size_hw: Sequence[int],
        sigma: float,
        aug: AugmentConfig | None = None,
        convention: geometry.Convention = "aggpose",
    ):
        self.keypoint_set = keypoint_set
        self.sizes = _Sizes(tuple(map(int, image_size_hw)), tuple(map(int, heatmap_size_hw)))
        self.sigma = float(sigma)
        self.aug = aug or AugmentConfig()
        self.convention = convention

    def random_map(self, element: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        kps = np.asarray(element["keypoints"], np.float32)
        joints, vis = kps[:, :2], (kps[:, 2] > 0).astype(np.float32)
        center, scale = geometry.box_to_center_scale(element["bbox"], self.sizes.aspect_ratio)
        params = sample_train_params(
            rng, center, scale, joints, vis, self.keypoint_set, self.aug, self.sizes.aspect_ratio
        )
        return make_train_sample(
            element["image"],
            joints,
            vis,
            params,
            self.keypoint_set.flip_index,
            self.sizes.image_size_hw,
            self.sizes.heatmap_size_hw,
            self.sigma,
            self.convention,
        )


class EvalTransform(grain.transforms.Map):
    """Decoded person record -> un-augmented crop with its box and identity for evaluation."""

    def __init__(self, image_size_hw: Sequence[int], convention: geometry.Convention = "aggpose"):
        self.sizes = _Sizes(tuple(map(int, image_size_hw)), (0, 0))
        self.convention = convention

    def map(self, element: dict[str, Any]) -> dict[str, Any]:
        center, scale = geometry.box_to_center_scale(element["bbox"], self.sizes.aspect_ratio)
        hw = self.sizes.image_size_hw
        trans = geometry.get_affine_transform(center, scale, 0.0, hw[::-1], convention=self.convention)
        crop = warp_crop(element["image"], trans, hw)
        return {
            "image": normalize_image(crop),
            "image_id": np.int64(element["image_id"]),
            "center": center,
            "scale": scale,
            "score": np.float32(element.get("score", 1.0)),
            "area": np.float32(element.get("area", 0.0)),
            "valid": np.bool_(True),
        }
