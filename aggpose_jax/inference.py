"""The inference API: ``aggpose_jax.load(path)`` -> ``PoseModel`` with ``heatmaps(images)`` and ``predictor()``."""

from __future__ import annotations

import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from aggpose_jax.convert import ConfigSpec, resolve_config
from aggpose_jax.models.aggpose import AggPose, ModelConfig
from aggpose_jax.params import bind, read_params


@functools.partial(jax.jit, static_argnums=0)
def _heatmaps(graphdef: nnx.GraphDef, state: nnx.State, images: jax.Array) -> jax.Array:
    return nnx.merge(graphdef, state)(images, deterministic=True)


class PoseModel:
    """A loaded AggPose: ``.config``, ``.model`` (the ``AggPose`` module), ``.params`` and ``heatmaps``."""

    def __init__(self, config: ModelConfig, model: AggPose):
        self.config = config
        self.model = model

    @property
    def params(self) -> nnx.State:
        return nnx.state(self.model, nnx.Param)

    def heatmaps(self, images: Any) -> jax.Array:
        """(B, H, W, 3) ImageNet-normalised images (H, W multiples of 32) -> (B, H/4, W/4, J) float32 heatmaps."""
        images = jnp.asarray(images, jnp.float32)
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"heatmaps: expected images of shape (B, H, W, 3), got {tuple(images.shape)}")
        return _heatmaps(*nnx.split(self.model), images)

    __call__ = heatmaps

    def predictor(self, keypoints: str | None = None, **options: Any) -> Any:
        """Keypoints of images and videos with this model: an ``aggpose_jax.predict.Predictor``.

        ``keypoints``: the keypoint set's name (default: 'coco' for 17 joints, 'infant' for 21); ``options``:
        the predictor's (``flip``, ``decode``, ``batch_size``, ``subject``, ``min_box_score``, ``progress``).
        """
        from aggpose_jax.pose.keypoints import get_keypoint_set
        from aggpose_jax.predict.runner import Predictor

        name = keypoints or {17: "coco", 21: "infant"}.get(self.config.num_joints)
        if name is None:
            raise ValueError(f"predictor: name the keypoint set of this {self.config.num_joints}-joint model")
        return Predictor(self, get_keypoint_set(name), **options)

    def __repr__(self) -> str:
        return f"PoseModel({self.config})"


def load(path: str | os.PathLike, config: ConfigSpec = None, *, which: str = "latest") -> PoseModel:
    """Load a PyTorch checkpoint (``.pth``/safetensors), a converted model directory or a training workdir.

    ``config`` (a ``ModelConfig``, variant name or JSON file): for a ``.pth`` it is checked against the
    tensors (default: inferred); for a directory its architecture must equal the stored one, and its other
    fields (e.g. ``dtype='bfloat16'``, ``image_size``) are used as given. ``which``: a workdir's 'latest'
    or 'best' training checkpoint.
    """
    resolved, params = read_params(path, resolve_config(config), which=which)
    return PoseModel(resolved, bind(resolved, params))


__all__ = ["PoseModel", "load"]
