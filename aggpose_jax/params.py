"""Model parameters, the one owner: the abstract tree, initialisation, every checkpoint kind, binding.

Parameters are the pure nested dict of ``nnx.state(model, nnx.Param)`` (what optax, Orbax and the
converter exchange), keyed by module/attribute names (``block1/layers/attn/q/bias``). Readers of the
checkpoint kinds (``convert`` for PyTorch/safetensors, ``model_dir`` for converted directories,
``train.checkpoints`` for training workdirs) are imported on use by :func:`read_params`.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from aggpose_jax import model_dir
from aggpose_jax.model_dir import CheckpointError
from aggpose_jax.models.aggpose import AggPose, ModelConfig

log = logging.getLogger(__name__)

# Fields that change the function a model computes; the others (image_size, dtype, drop_path_rate,
# remat, unroll_blocks, kernels, attention) may differ between a checkpoint and the model loading it.
ARCHITECTURE_FIELDS = ("dims", "heads", "sr_ratios", "mlp_ratio", "stage_depths", "num_joints")


def path_name(path: tuple[Any, ...]) -> str:
    """'a/b/c' from a jax key path (dict keys, attributes or indices)."""
    parts = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts)


def named_leaves(params: Any) -> list[tuple[str, Any]]:
    """[('a/b/c', leaf), ...] in tree order."""
    return [(path_name(p), leaf) for p, leaf in jax.tree_util.tree_flatten_with_path(params)[0]]


@functools.lru_cache(maxsize=16)
def abstract_params(config: ModelConfig) -> dict:
    """Nested dict of ``jax.ShapeDtypeStruct`` shaped like the model's parameters (cached: do not modify)."""
    return split_model(config)[1]


def split_model(config: ModelConfig, seed: int = 0) -> tuple[nnx.GraphDef, dict, nnx.State]:
    """(graphdef, abstract params, other state) without running initialisers; :func:`merge` rebuilds."""
    abstract = nnx.eval_shape(lambda: AggPose(config, rngs=nnx.Rngs(seed)))
    graphdef, params, other = nnx.split(abstract, nnx.Param, ...)
    other = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype) if isinstance(s, jax.ShapeDtypeStruct) else s, other)
    return graphdef, nnx.to_pure_dict(params), other


def merge(graphdef: nnx.GraphDef, params: Mapping, other: nnx.State) -> AggPose:
    """The module holding ``params`` (works on traced values inside ``jax.jit``)."""
    return nnx.merge(graphdef, nnx.State(jax.tree.map(lambda x: x, dict(params))), other)


def bind(config: ModelConfig, params: Any, *, seed: int = 0) -> AggPose:
    """An ``AggPose`` holding ``params`` (checked against ``config``); ``seed`` seeds its drop-path stream."""
    tree = to_pure(params)
    check_params(tree, config)
    graphdef, _, other = split_model(config, seed)
    return merge(graphdef, jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), tree), other)


_INIT: dict[tuple, Any] = {}


def init_params(config: ModelConfig, seed: int, shardings: Any = None) -> dict:
    """Freshly initialised parameters (the release's initialisers), built by one jitted function
    (compiled once per configuration, seed and placement in a process)."""
    key = (config, int(seed), shardings)
    if key not in _INIT:

        def init() -> dict:
            return nnx.to_pure_dict(nnx.state(AggPose(config, rngs=nnx.Rngs(seed)), nnx.Param))

        lowered = jax.jit(init, out_shardings=shardings).lower()
        # Runs once: on CPU, skip LLVM optimisation (halves the compile time of hundreds of RNG calls).
        fast = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
        _INIT[key] = lowered.compile(compiler_options=fast if jax.default_backend() == "cpu" else None)
    return _INIT[key]()


def to_pure(params: Any) -> dict:
    """``nnx.State`` -> nested dict of arrays (a nested dict is returned as is)."""
    if isinstance(params, nnx.State):
        return nnx.to_pure_dict(params)
    if not isinstance(params, Mapping):
        raise TypeError(f"params: expected an nnx.State or a nested dict of arrays, got {type(params).__name__}")
    return dict(params)


def check_params(params: Mapping, config: ModelConfig) -> None:
    """Raise ``ValueError`` naming the parameters that are missing, unexpected or mis-shaped for ``config``."""
    expected = {k: tuple(v.shape) for k, v in named_leaves(abstract_params(config))}
    got = {k: tuple(np.shape(v)) for k, v in named_leaves(dict(params))}
    problems = [f"missing {k}" for k in expected if k not in got]
    problems += [f"unexpected {k}" for k in got if k not in expected]
    problems += [f"{k}: shape {got[k]}, expected {s}" for k, s in expected.items() if k in got and got[k] != s]
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise ValueError(f"params do not match the model config: {'; '.join(problems[:5])}{more}")


def count_params(params: Any) -> int:
    """Number of scalar parameters."""
    return sum(int(np.prod(np.shape(leaf), dtype=np.int64)) for _, leaf in named_leaves(params))


def check_architecture(stored: ModelConfig, wanted: ModelConfig, where: str, *, allow_joints: bool = False) -> None:
    """Raise ``CheckpointError`` naming every architecture field where ``stored`` and ``wanted`` differ."""
    fields = [f for f in ARCHITECTURE_FIELDS if not (allow_joints and f == "num_joints")]
    diff = [
        f"{f}: checkpoint {getattr(stored, f)}, config {getattr(wanted, f)}"
        for f in fields
        if getattr(stored, f) != getattr(wanted, f)
    ]
    if diff:
        raise CheckpointError(f"{where}: the checkpoint does not match the configured model: {'; '.join(diff)}")


def read_params(path: str | os.PathLike, config: ModelConfig | None = None, *, which: str = "latest") -> tuple:
    """(config, host float32 params) from any checkpoint kind.

    ``path``: a PyTorch ``.pth`` / safetensors file (``config`` checked against the tensors, default
    inferred), a converted model directory (``config``'s architecture must match the stored one), or a
    training workdir (its ``which`` = 'latest' or 'best' training checkpoint). With ``config`` given, the
    returned config is it (so its non-architecture fields such as ``dtype`` apply).
    """
    path = os.fspath(path)
    if os.path.isdir(path) and model_dir.is_model_dir(path):
        stored, params = model_dir.load_model(path)
    elif os.path.isdir(path) and os.path.isdir(os.path.join(path, "checkpoints")):
        stored, params = _read_workdir(path, which)
    elif os.path.isdir(path):
        raise CheckpointError(
            f"{path}: a directory but neither a converted model ({model_dir.META_FILE} is missing) "
            f"nor a training workdir (checkpoints/ is missing)"
        )
    elif not os.path.exists(path):
        raise CheckpointError(f"{path}: no such file or directory")
    else:
        from aggpose_jax.convert import load_torch_checkpoint

        return load_torch_checkpoint(path, config)
    if config is not None:
        check_architecture(stored, config, path)
        stored = config
    return stored, params


def _read_workdir(workdir: str, which: str) -> tuple[ModelConfig, dict]:
    """(config, params) of a training workdir's latest or best checkpoint; the model from its config.json."""
    import json

    from ml_collections import ConfigDict

    from aggpose_jax.config import model_config
    from aggpose_jax.train.checkpoints import restore_params

    config_file = os.path.join(workdir, "config.json")
    try:
        with open(config_file, encoding="utf-8") as f:
            stored = model_config(ConfigDict(json.load(f)))
    except (OSError, ValueError, KeyError, AttributeError) as err:
        raise CheckpointError(f"{config_file}: cannot read the run's model config ({err})") from None
    step, params = restore_params(os.path.join(workdir, "checkpoints"), abstract_params(stored), which=which)
    log.info("%s: %s training checkpoint, step %d", workdir, which, step)
    return stored, jax.tree.map(lambda a: np.asarray(a, np.float32), params)


def _set_path(tree: dict, path: str, value: Any) -> None:
    *head, last = path.split("/")
    for key in head:
        tree = tree[key]
    tree[last] = value


def load_matching(params: dict, loaded: Mapping) -> list[str]:
    """Copy every loaded array whose path and shape match into ``params`` (in place); returns the paths
    kept fresh (absent or of another shape, e.g. the output layer when the joint count changes)."""
    source = dict(named_leaves(dict(loaded)))
    fresh = []
    for path, leaf in named_leaves(params):
        value = source.get(path)
        if value is None or tuple(np.shape(value)) != tuple(leaf.shape):
            fresh.append(path)
            continue
        _set_path(params, path, np.asarray(value, np.float32))
    return fresh


def pretrained_params(config: Any, model_cfg: ModelConfig) -> dict:
    """Training start: random parameters (``config.seed``), then MiT backbone weights
    (``config.init.mit_checkpoint``), then an AggPose checkpoint (``config.init_checkpoint``) on top.

    A checkpoint with another joint count keeps the configured output layer fresh (fine-tuning
    COCO -> infant); any other architecture difference is an error. Returns host (numpy) arrays.
    """
    params = jax.tree.map(np.asarray, init_params(model_cfg, int(config.seed)))
    if config.init.mit_checkpoint:
        from aggpose_jax.convert import import_mit_backbone

        path = os.fspath(config.init.mit_checkpoint)
        if not os.path.isfile(path):
            raise ValueError(f"config.init.mit_checkpoint: {path}: no such file")
        params, report = import_mit_backbone(params, path, model_cfg)
        log.info("MiT backbone: %s", report.summary())
    if config.init_checkpoint:
        path = os.fspath(config.init_checkpoint)
        stored, loaded = _read_init_checkpoint(path)
        check_architecture(stored, model_cfg, f"config.init_checkpoint={path}", allow_joints=True)
        fresh = load_matching(params, loaded)
        if fresh:
            log.warning(
                "init_checkpoint %s: %d parameters kept their fresh initialisation (absent or of another shape): %s",
                path,
                len(fresh),
                ", ".join(fresh[:8]),
            )
        else:
            log.info("init_checkpoint %s: every parameter loaded", path)
    return jax.tree.map(lambda a: np.asarray(a, np.float32), params)


def _read_init_checkpoint(path: str) -> tuple[ModelConfig, dict]:
    try:
        return read_params(path)
    except (ValueError, FileNotFoundError) as err:
        raise ValueError(f"config.init_checkpoint: {err}") from None


def eval_params(config: Any, model_cfg: ModelConfig) -> tuple[ModelConfig, dict]:
    """``config.init_checkpoint``'s architecture at the configured image size, dtype and kernels, and its params."""
    path = os.fspath(config.init_checkpoint)
    stored, params = _read_init_checkpoint(path)
    if stored.num_joints != model_cfg.num_joints:
        raise ValueError(
            f"config.init_checkpoint={path}: the checkpoint predicts {stored.num_joints} joints "
            f"but data.keypoints={config.data.keypoints!r} has {model_cfg.num_joints}"
        )
    cfg = dataclasses.replace(
        stored,
        image_size=model_cfg.image_size,
        dtype=model_cfg.dtype,
        unroll_blocks=model_cfg.unroll_blocks,
        kernels=model_cfg.kernels,
        attention=model_cfg.attention,
    )
    return cfg, jax.tree.map(lambda a: np.asarray(a, np.float32), params)
