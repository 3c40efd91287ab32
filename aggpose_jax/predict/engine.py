"""Crops in, image keypoints out: the evaluation's crop, one jitted batched forward, the evaluation's decoding.

* Crop: the box -> centre/scale (aspect of the model input, x1.25 unless told otherwise), the crop affine
  (``convention='aggpose'``), bilinear ``cv2.warpAffine`` with a zero border and ImageNet normalisation:
  exactly ``data.transforms.EvalTransform``. Frames are BGR (OpenCV); only the crop is turned to RGB.
* Forward: one ``jax.jit`` function per engine; crops are padded to ``batch_size``, so it compiles
  once. With the flip test the mirrored crops run in the same call (one batch of 2n) and their
  flipped-back heatmaps are averaged in the function, as the release's ``validate`` does. Dispatch is
  asynchronous: :meth:`CropEngine.dispatch` returns at once and :meth:`Pending.result` waits, so the host
  can prepare or decode other batches meanwhile.
* Decode: argmax + DARK (or argmax only) in heatmap pixels, then the inverse crop affine to image pixels
  (``pose.decode.decode_to_image``). A joint's score is its heatmap maximum.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from aggpose_jax.data.transforms import normalize_image, warp_crop
from aggpose_jax.heatmaps import heatmap_function, jitted
from aggpose_jax.pose import geometry
from aggpose_jax.pose.codec import get_max_preds
from aggpose_jax.pose.decode import decode_to_image
from aggpose_jax.pose.keypoints import KeypointSet

DECODERS = ("dark", "argmax")


def default_batch_size() -> int:
    """Crops per model call by default: 4 on CPU (larger batches are no faster there: measured in
    ``benchmarks/predict.py``), 16 on accelerators."""
    return 4 if jax.default_backend() == "cpu" else 16


@dataclasses.dataclass
class Crops:
    """n crops ready for the model: normalised RGB float32 (n, H, W, 3) with their centres and scales (n, 2)."""

    images: np.ndarray
    centers: np.ndarray
    scales: np.ndarray

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @staticmethod
    def concat(parts: Sequence[Crops], image_size: Sequence[int]) -> Crops:
        if not parts:
            h, w = image_size
            return Crops(np.zeros((0, h, w, 3), np.float32), np.zeros((0, 2), np.float32), np.zeros((0, 2), np.float32))
        return Crops(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("images", "centers", "scales")))


class Pending:
    """Heatmaps being computed for ``n`` crops; :meth:`result` waits for them (host float32 (n, h, w, J))."""

    def __init__(self, out: Any, n: int, engine: CropEngine):
        self._out, self.n, self._engine = out, n, engine

    def result(self) -> np.ndarray:
        t0 = time.perf_counter()
        hm = np.asarray(self._out)[: self.n]
        self._engine.wait_s += time.perf_counter() - t0
        return hm


class CropEngine:
    """A loaded model's batched crop -> heatmap function, with the crop and decoding around it.

    Args:
      model: a ``PoseModel`` (``aggpose_jax.load``); its config's ``dtype`` sets the compute precision.
      keypoint_set: the model's keypoint set (its ``flip_index`` for the flip test).
      flip: average with the flipped-back heatmaps of the mirrored crops (flip test).
      decode: 'dark' (argmax + distribution-aware refinement) or 'argmax'.
      batch_size: crops per model call (padded up to it); default :func:`default_batch_size`.
    """

    def __init__(
        self,
        model: Any,
        keypoint_set: KeypointSet,
        *,
        flip: bool = True,
        decode: str = "dark",
        batch_size: int | None = None,
    ):
        batch_size = default_batch_size() if batch_size is None else batch_size
        if decode not in DECODERS:
            raise ValueError(f"decode must be one of {DECODERS}, got {decode!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if keypoint_set.num_joints != model.config.num_joints:
            raise ValueError(
                f"the model predicts {model.config.num_joints} joints but keypoint set '{keypoint_set.name}' "
                f"has {keypoint_set.num_joints}"
            )
        self.config = model.config
        self.keypoint_set = keypoint_set
        self.flip, self.decode, self.batch_size = bool(flip), decode, int(batch_size)
        self.image_size: tuple[int, int] = tuple(self.config.image_size)  # (H, W)
        self.heatmap_size: tuple[int, int] = (self.image_size[0] // 4, self.image_size[1] // 4)
        self.aspect_ratio = self.image_size[1] / self.image_size[0]
        graphdef, self._state = nnx.split(model.model)
        self._fn = jitted(graphdef, keypoint_set.flip_index if flip else None)
        self.calls = 0
        self.crops_run = 0
        self.wait_s = 0.0  # time the host spent blocked on results

    # -- crops

    def center_scale(self, boxes_xywh: np.ndarray, padding: float = 1.25) -> tuple[np.ndarray, np.ndarray]:
        """(n, 4) boxes -> centres, scales (n, 2), fixed to the model's aspect ratio and scaled by ``padding``."""
        return geometry.box_to_center_scale(
            np.asarray(boxes_xywh, np.float64).reshape(-1, 4), self.aspect_ratio, padding
        )

    def crop(self, frame_bgr: np.ndarray, centers: np.ndarray, scales: np.ndarray) -> Crops:
        """The evaluation's crops of one BGR frame, one per (centre, scale)."""
        h, w = self.image_size
        centers = np.asarray(centers, np.float32).reshape(-1, 2)
        scales = np.asarray(scales, np.float32).reshape(-1, 2)
        out = np.empty((centers.shape[0], h, w, 3), np.float32)
        for i in range(centers.shape[0]):
            trans = geometry.get_affine_transform(centers[i], scales[i], 0.0, (w, h))
            crop = warp_crop(frame_bgr, trans, (h, w))
            out[i] = normalize_image(np.ascontiguousarray(crop[:, :, ::-1]))
        return Crops(out, centers, scales)

    def crop_boxes(self, frame_bgr: np.ndarray, boxes_xywh: np.ndarray, padding: float = 1.25) -> Crops:
        centers, scales = self.center_scale(boxes_xywh, padding)
        return self.crop(frame_bgr, centers, scales)

    # -- model

    def bucket(self, n: int) -> int:
        """The padded batch size used for ``n`` crops: always ``batch_size`` (one compiled shape)."""
        return self.batch_size

    def dispatch(self, images: np.ndarray) -> Pending:
        """Start the heatmaps of up to ``batch_size`` crops; returns at once."""
        n = int(images.shape[0])
        if not 1 <= n <= self.batch_size:
            raise ValueError(f"dispatch: expected 1..{self.batch_size} crops, got {n}")
        size = self.bucket(n)
        if n < size:
            pad = np.zeros((size - n,) + images.shape[1:], np.float32)
            images = np.concatenate([images, pad])
        self.calls += 1
        self.crops_run += n
        return Pending(self._fn(self._state, jnp.asarray(images, jnp.float32)), n, self)

    def heatmaps(self, images: np.ndarray) -> np.ndarray:
        """Heatmaps of any number of crops (host float32 (n, h, w, J)); batches of ``batch_size``."""
        parts = [self.dispatch(images[i : i + self.batch_size]) for i in range(0, images.shape[0], self.batch_size)]
        if not parts:
            return np.zeros((0, *self.heatmap_size, self.config.num_joints), np.float32)
        return np.concatenate([p.result() for p in parts])

    def warm_up(self, sizes: Sequence[int] | None = None) -> None:
        """Compile (and run once) for the given padded batch sizes (default: ``batch_size``)."""
        h, w = self.image_size
        counters = (self.calls, self.crops_run, self.wait_s)
        for size in sizes or (self.batch_size,):
            self.dispatch(np.zeros((size, h, w, 3), np.float32)).result()
        self.calls, self.crops_run, self.wait_s = counters  # not counted as work

    # -- decoding

    def decode_heatmaps(self, heatmaps: np.ndarray, centers: np.ndarray, scales: np.ndarray) -> tuple:
        """(keypoints float32 (n, J, 2) in image pixels, scores float32 (n, J))."""
        if heatmaps.shape[0] == 0:
            j = self.config.num_joints
            return np.zeros((0, j, 2), np.float32), np.zeros((0, j), np.float32)
        return decode_to_image(heatmaps, centers, scales, decode=self.decode)

    @staticmethod
    def scores(heatmaps: np.ndarray) -> np.ndarray:
        """Joint scores (n, J) alone (heatmap maxima), without decoding positions."""
        return get_max_preds(heatmaps)[1]


__all__ = ["Crops", "CropEngine", "DECODERS", "Pending", "default_batch_size", "heatmap_function"]
