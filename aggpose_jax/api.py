"""High-level inference API: ``aggpose_jax.load(path)`` -> ``PoseModel`` with ``heatmaps(images)``."""

from __future__ import annotations

import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from aggpose_jax.checkpoints import CheckpointError, is_model_dir, load_model
from aggpose_jax.convert import ConfigSpec, load_torch_checkpoint, resolve_config
from aggpose_jax.models.aggpose import AggPose, ModelConfig, model_from_params

# Fields that define the function a model computes; the others (image_size, dtype, drop_path_rate, remat,
# unroll_blocks) may be changed when loading a stored model.
ARCHITECTURE_FIELDS = ('dims', 'heads', 'sr_ratios', 'mlp_ratio', 'stage_depths', 'num_joints')


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
            raise ValueError(f'heatmaps: expected images of shape (B, H, W, 3), got {tuple(images.shape)}')
        return _heatmaps(*nnx.split(self.model), images)

    __call__ = heatmaps

    def __repr__(self) -> str:
        return f'PoseModel({self.config})'


def _check_architecture(stored: ModelConfig, given: ModelConfig, where: str) -> None:
    diff = [f'{f}: stored {getattr(stored, f)}, given {getattr(given, f)}' for f in ARCHITECTURE_FIELDS
            if getattr(stored, f) != getattr(given, f)]
    if diff:
        raise CheckpointError(f'{where}: the given config disagrees with the stored model: {"; ".join(diff)}')


def load(path: str | os.PathLike, config: ConfigSpec = None) -> PoseModel:
    """Load a PyTorch checkpoint (``.pth``) or a converted model directory as a ``PoseModel``.

    ``config`` (a ``ModelConfig``, variant name or JSON file): for a ``.pth`` it is checked against the
    tensors (default: inferred); for a directory its architecture must equal the stored one, and its other
    fields (e.g. ``dtype='bfloat16'``, ``image_size``) are used as given.
    """
    path = os.fspath(path)
    given = resolve_config(config)
    if os.path.isdir(path):
        if not is_model_dir(path):
            raise CheckpointError(f'{path}: not an aggpose-jax model checkpoint directory')
        stored, params = load_model(path)
        if given is not None:
            _check_architecture(stored, given, path)
        resolved = given or stored
    else:
        resolved, params = load_torch_checkpoint(path, given)
    return PoseModel(resolved, model_from_params(resolved, params))


__all__ = ['PoseModel', 'load']
