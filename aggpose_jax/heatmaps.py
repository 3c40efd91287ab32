"""The heatmap runtime, the one owner: a model's jitted forward (with the flip test inside when asked) for
evaluation, inference, prediction and export, and :class:`HeatmapModel`, a model with its parameters bound.

The flip test itself is ``aggpose_jax.pose.flip``'s; decoding heatmaps to image coordinates is
``aggpose_jax.pose.decode``'s.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from aggpose_jax.models.aggpose import AggPose, ModelConfig
from aggpose_jax.params import merge
from aggpose_jax.pose.flip import with_flip_test


def heatmap_function(graphdef: nnx.GraphDef, flip_index: Any = None, *, shift: bool = False) -> Any:
    """``f(state, images (B, H, W, 3)) -> float32 heatmaps (B, h, w, J)``; ``state``: the ``nnx.State`` of
    ``nnx.split(model)`` or a (params, other) pair of ``params.split_model``. With ``flip_index`` the flip
    test (``pose.flip.with_flip_test``, ``shift``: HRNet's one-pixel shift) runs inside. Pure and
    jit/export-friendly (any batch size)."""

    def forward(state: Any, images: jax.Array) -> jax.Array:
        model = merge(graphdef, *state) if isinstance(state, tuple) else nnx.merge(graphdef, state)

        def plain(x: jax.Array) -> jax.Array:
            return model(x, deterministic=True).astype(jnp.float32)

        return plain(images) if flip_index is None else with_flip_test(plain, flip_index, shift=shift)(images)

    return forward


def jitted(graphdef: nnx.GraphDef, flip_index: Any = None, out_sharding: Any = None, *, shift: bool = False) -> Any:
    """One jitted :func:`heatmap_function` per model structure, flip setting and output placement in a process,
    so models built again for the same architecture (another checkpoint, another evaluation) reuse its code.
    ``flip_index``: a keypoint set's flip index (any sequence of ints) for the flip test, or None."""
    flip = None if flip_index is None else tuple(int(j) for j in flip_index)
    return _jitted(graphdef, flip, out_sharding, bool(shift))


@functools.lru_cache(maxsize=8)
def _jitted(graphdef: nnx.GraphDef, flip: tuple[int, ...] | None, out_sharding: Any, shift: bool) -> Any:
    fn = heatmap_function(graphdef, flip, shift=shift)
    return jax.jit(fn) if out_sharding is None else jax.jit(fn, out_shardings=out_sharding)


class HeatmapModel:
    """A model with its parameters bound: ``.config``, ``.model`` (the ``AggPose`` module), ``.params``,
    ``heatmaps``."""

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
        graphdef, state = nnx.split(self.model)
        return jitted(graphdef)(state, images)

    __call__ = heatmaps

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"


__all__ = ["HeatmapModel", "heatmap_function", "jitted"]
