"""Model parameters for training/evaluation: random init, MiT backbone weights, AggPose checkpoints.

Parameters are the pure nested dict of ``nnx.state(model, nnx.Param)`` (what optax, Orbax and the
converter exchange). ``split_model`` gives the static graph and the non-parameter state needed to
rebuild the module inside a jitted function.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from aggpose_jax.models.aggpose import AggPose, ModelConfig
from aggpose_jax.optim import named_leaves

log = logging.getLogger(__name__)

# Fields that change the parameters (others: image_size, dtype, drop-path, remat, unroll may differ).
ARCHITECTURE_FIELDS = ('dims', 'heads', 'sr_ratios', 'mlp_ratio', 'stage_depths', 'num_joints')


def split_model(config: ModelConfig, seed: int = 0) -> tuple[nnx.GraphDef, Any, nnx.State]:
    """(graphdef, abstract params (pure dict of ShapeDtypeStruct), other state) without running initialisers."""
    abstract = nnx.eval_shape(lambda: AggPose(config, rngs=nnx.Rngs(seed)))
    graphdef, params, other = nnx.split(abstract, nnx.Param, ...)
    other = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype) if isinstance(s, jax.ShapeDtypeStruct) else s, other)
    return graphdef, nnx.to_pure_dict(params), other


_INIT: dict[tuple, Any] = {}


def random_params(config: ModelConfig, seed: int, shardings: Any = None) -> dict:
    """Freshly initialised parameters (the release's initialisers), built by one jitted function
    (compiled once per configuration, seed and placement in a process)."""
    key = (config, int(seed), shardings)
    if key not in _INIT:
        def init() -> dict:
            return nnx.to_pure_dict(nnx.state(AggPose(config, rngs=nnx.Rngs(seed)), nnx.Param))

        lowered = jax.jit(init, out_shardings=shardings).lower()
        # Runs once: on CPU, skip LLVM optimisation (halves the compile time of hundreds of RNG calls).
        fast = {'xla_backend_optimization_level': 0, 'xla_llvm_disable_expensive_passes': True}
        _INIT[key] = lowered.compile(compiler_options=fast if jax.default_backend() == 'cpu' else None)
    return _INIT[key]()


def merge(graphdef: nnx.GraphDef, params: dict, other: nnx.State) -> AggPose:
    """The module with ``params`` (works on traced values inside ``jax.jit``)."""
    state = nnx.State(jax.tree.map(lambda x: x, params))
    return nnx.merge(graphdef, state, other)


def read_checkpoint(path: str) -> tuple[ModelConfig, dict]:
    """(config, host params) from a PyTorch ``.pth``/safetensors file or a converted model directory."""
    from aggpose_jax.checkpoints import is_model_dir, load_model
    from aggpose_jax.convert import load_torch_checkpoint

    if os.path.isdir(path):
        if not is_model_dir(path):
            raise ValueError(f'config.init_checkpoint: {path} is a directory but not a converted model '
                             f'(aggpose_model.json is missing)')
        return load_model(path)
    if not os.path.isfile(path):
        raise ValueError(f'config.init_checkpoint: {path}: no such file or directory')
    return load_torch_checkpoint(path)


def check_architecture(stored: ModelConfig, wanted: ModelConfig, where: str, *, allow_joints: bool = False) -> None:
    fields = [f for f in ARCHITECTURE_FIELDS if not (allow_joints and f == 'num_joints')]
    diff = [f'{f}: checkpoint {getattr(stored, f)}, config {getattr(wanted, f)}' for f in fields
            if getattr(stored, f) != getattr(wanted, f)]
    if diff:
        raise ValueError(f'{where}: the checkpoint does not match the configured model: {"; ".join(diff)}')


def _set_path(tree: dict, path: str, value: Any) -> None:
    *head, last = path.split('/')
    for key in head:
        tree = tree[key]
    tree[last] = value


def load_matching(params: dict, loaded: dict) -> list[str]:
    """Copy every loaded array whose path and shape match into ``params`` (in place); returns the paths
    kept fresh (absent or of another shape, e.g. the output layer when the joint count changes)."""
    source = dict(named_leaves(loaded))
    fresh = []
    for path, leaf in named_leaves(params):
        value = source.get(path)
        if value is None or tuple(np.shape(value)) != tuple(leaf.shape):
            fresh.append(path)
            continue
        _set_path(params, path, np.asarray(value, np.float32))
    return fresh


def pretrained_params(config: Any, model_cfg: ModelConfig) -> dict:
    """Randomly initialised parameters (``config.seed``), then MiT backbone weights
    (``config.init.mit_checkpoint``), then an AggPose checkpoint (``config.init_checkpoint``) on top.

    A checkpoint with another joint count keeps the configured output layer fresh (fine-tuning
    COCO -> infant); any other architecture difference is an error. Returns host (numpy) arrays.
    """
    params = jax.tree.map(np.asarray, random_params(model_cfg, int(config.seed)))
    if config.init.mit_checkpoint:
        from aggpose_jax.convert import import_mit_backbone
        path = os.fspath(config.init.mit_checkpoint)
        if not os.path.isfile(path):
            raise ValueError(f'config.init.mit_checkpoint: {path}: no such file')
        report = import_mit_backbone(params, path, config=model_cfg)
        log.info('MiT backbone: %s', report.summary())
    if config.init_checkpoint:
        path = os.fspath(config.init_checkpoint)
        stored, loaded = read_checkpoint(path)
        check_architecture(stored, model_cfg, f'config.init_checkpoint={path}', allow_joints=True)
        fresh = load_matching(params, loaded)
        if fresh:
            log.warning('init_checkpoint %s: %d parameters kept their fresh initialisation '
                        '(absent or of another shape): %s', path, len(fresh), ', '.join(fresh[:8]))
        else:
            log.info('init_checkpoint %s: every parameter loaded', path)
    return jax.tree.map(lambda a: np.asarray(a, np.float32), params)


def eval_model_config(config: Any, model_cfg: ModelConfig) -> tuple[ModelConfig, dict]:
    """For ``--mode eval``: the checkpoint's architecture at the configured image size/dtype, and its params."""
    path = os.fspath(config.init_checkpoint)
    stored, params = read_checkpoint(path)
    if stored.num_joints != model_cfg.num_joints:
        raise ValueError(f'config.init_checkpoint={path}: the checkpoint predicts {stored.num_joints} joints '
                         f'but data.keypoints={config.data.keypoints!r} has {model_cfg.num_joints}')
    cfg = dataclasses.replace(stored, image_size=model_cfg.image_size, dtype=model_cfg.dtype,
                              unroll_blocks=model_cfg.unroll_blocks)
    return cfg, jax.tree.map(lambda a: np.asarray(a, np.float32), params)


__all__ = ['ARCHITECTURE_FIELDS', 'split_model', 'random_params', 'merge', 'read_checkpoint',
           'check_architecture', 'load_matching', 'pretrained_params', 'eval_model_config']
