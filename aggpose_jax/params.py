"""Model parameters, the one owner: the abstract tree, initialisation, checks, binding, partial loading.

Parameters are the pure nested dict of ``nnx.state(model, nnx.Param)`` (what optax, Orbax and the
converter exchange), keyed by module/attribute names (``block1/layers/attn/q/bias``). Reading them from
any checkpoint kind is ``aggpose_jax.model_source``'s.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from aggpose_jax.errors import CheckpointError
from aggpose_jax.models.aggpose import AggPose, ModelConfig

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
        # Runs once: on CPU, skip LLVM optimisation (halves the compile time of hundreds of RNG calls). The
        # options are XLA:CPU's: chosen by the platform the function is compiled for, not the host's backend.
        fast = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
        _INIT[key] = lowered.compile(compiler_options=fast if target_platform(shardings) == "cpu" else None)
    return _INIT[key]()


def target_platform(shardings: Any = None) -> str:
    """The platform of the devices ``shardings`` (a sharding or a pytree of them) place arrays on; without
    shardings, the default backend's (where an unplaced ``jax.jit`` runs)."""
    for leaf in jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding)):
        if isinstance(leaf, jax.sharding.Sharding):
            return next(iter(leaf.device_set)).platform
    return jax.default_backend()


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
