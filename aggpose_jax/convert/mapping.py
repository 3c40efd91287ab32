"""PyTorch state-dict names and layouts <-> AggPose (Flax NNX) parameters. No torch needed.

Naming rule: the Flax parameter path is the torch name split at dots, with
  * leaf ``weight`` -> ``kernel`` (Linear, Conv) or ``scale`` (LayerNorm), ``bias`` -> ``bias``;
  * scanned block stacks: ``block3.17.attn.q.weight`` -> ``block3/layers/attn/q/kernel[17]`` (every parameter of a
    stack has a leading axis, one entry per block).
Layouts: Linear (out, in) <-> (in, out); Conv2d (out, in/groups, kh, kw) <-> (kh, kw, in/groups, out)
(depthwise (C, 1, 3, 3) <-> (3, 3, 1, C)); LayerNorm and biases unchanged.

Values of ``state_dict`` arguments may be arrays or, where only shapes are read (``infer_model_config``,
``check_state_dict``), plain shape tuples.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import jax
import numpy as np
from flax import nnx

from aggpose_jax.errors import CheckpointError
from aggpose_jax.models.aggpose import ModelConfig, stack_name
from aggpose_jax.params import abstract_params

_STACK = "layers"  # attribute of BlockStack holding the stacked blocks
_LEAF_TO_TORCH = {"kernel": "weight", "scale": "weight", "bias": "bias"}
_MAX_LISTED = 20


class CheckpointMismatchError(CheckpointError):
    """A state dict does not fit a model configuration (missing, unexpected or mis-shaped tensors)."""


class _Entry(NamedTuple):
    flax_path: tuple[str, ...]  # path in the Param state (includes 'layers' for stacks)
    index: int | None  # position in the block stack, None when not stacked
    torch_shape: tuple[int, ...]


def _shape_of(value: Any) -> tuple[int, ...]:
    if hasattr(value, "shape"):
        return tuple(int(s) for s in value.shape)
    return tuple(int(s) for s in value)


# Flax -> torch axis order by rank: Linear (in, out) -> (out, in); Conv (H, W, in, out) -> (out, in, H, W).
_TO_TORCH_AXES = {2: (1, 0), 4: (3, 2, 0, 1)}


def _to_torch_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    axes = _TO_TORCH_AXES.get(len(shape))
    return shape if axes is None else tuple(shape[i] for i in axes)


def _to_torch_array(array: np.ndarray) -> np.ndarray:
    axes = _TO_TORCH_AXES.get(array.ndim)
    return array if axes is None else array.transpose(axes)


def _to_flax_array(array: np.ndarray) -> np.ndarray:
    axes = _TO_TORCH_AXES.get(array.ndim)
    return array if axes is None else array.transpose(np.argsort(axes))


def _flatten(tree: Mapping, prefix: tuple[str, ...] = ()) -> Iterable[tuple[tuple[str, ...], Any]]:
    for key, value in tree.items():
        path = prefix + (str(key),)
        if isinstance(value, Mapping):
            yield from _flatten(value, path)
        else:
            yield path, value


@functools.lru_cache(maxsize=8)
def _layout(config: ModelConfig) -> dict[str, _Entry]:
    """torch name -> where the tensor lives in the Flax parameters."""
    out: dict[str, _Entry] = {}
    for path, leaf in _flatten(abstract_params(config)):
        *modules, leaf_name = path
        torch_leaf = _LEAF_TO_TORCH[leaf_name]
        shape = tuple(leaf.shape)
        if len(modules) > 1 and modules[1] == _STACK:
            for i in range(shape[0]):
                name = ".".join([modules[0], str(i), *modules[2:], torch_leaf])
                out[name] = _Entry(path, i, _to_torch_shape(shape[1:]))
        else:
            out[".".join([*modules, torch_leaf])] = _Entry(path, None, _to_torch_shape(shape))
    return out


def expected_torch_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor name and shape the PyTorch release's state dict has for ``config``."""
    return {name: entry.torch_shape for name, entry in _layout(config).items()}


def _stack_depth(names: Iterable[str], prefix: str) -> int:
    pattern = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.")
    indices = {int(m.group(1)) for n in names if (m := pattern.match(n))}
    return max(indices) + 1 if indices else 0


def infer_model_config(
    state_dict: Mapping[str, Any],
    *,
    heads: tuple[int, ...] | None = None,
    image_size: tuple[int, int] = (256, 192),
    **overrides: Any,
) -> ModelConfig:
    """Read widths, stage table, reduction ratios, MLP ratio and joint count off tensor names and shapes.

    Head counts change no shape: they default to the MiT convention (1, 2, 5, 8) unless ``heads`` is given.
    Remaining ``ModelConfig`` fields (drop_path_rate, dtype, ...) come from ``overrides``.
    """

    def shape(name: str) -> tuple[int, ...]:
        if name not in state_dict:
            raise CheckpointMismatchError(f"infer_model_config: tensor {name!r} is missing; not an AggPose state dict?")
        return _shape_of(state_dict[name])

    dims = tuple(shape(f"patch_embed{s}.proj.weight")[0] for s in range(1, 5))
    sr_ratios = tuple(
        _shape_of(state_dict[f"block{s}.0.attn.sr.weight"])[-1] if f"block{s}.0.attn.sr.weight" in state_dict else 1
        for s in range(1, 5)
    )
    rows: list[list[int]] = [[], [], [], []]
    for stream in range(1, 5):
        for stage in range(stream, 5):
            name = stack_name(stream, stage)
            depth = _stack_depth(state_dict, name)
            if depth == 0:
                raise CheckpointMismatchError(
                    f"infer_model_config: no tensors named {name}.<i>.*; not an AggPose state dict?"
                )
            rows[stream - 1].append(depth)
    mlp_ratio = shape("block1.0.mlp.fc1.weight")[0] / dims[0]
    num_joints = shape("final_layer.fc2.weight")[0]
    fields = dict(
        dims=dims,
        heads=tuple(heads) if heads is not None else (1, 2, 5, 8),
        sr_ratios=sr_ratios,
        mlp_ratio=mlp_ratio,
        stage_depths=tuple(tuple(r) for r in rows),
        num_joints=num_joints,
        image_size=tuple(image_size),
    )
    fields.update(overrides)
    try:
        return ModelConfig(**fields)
    except ValueError as err:
        raise CheckpointMismatchError(f"infer_model_config: {err} (pass heads=... matching the widths)") from err


def _ranges(indices: Iterable[int]) -> str:
    """[0, 1, 2, 5] -> '0-2,5'."""
    out: list[str] = []
    for i in sorted(indices):
        if out and out[-1].split("-")[-1] == str(i - 1):
            out[-1] = f"{out[-1].split('-')[0]}-{i}"
        else:
            out.append(str(i))
    return ",".join(out)


def _group_blocks(names: list[str]) -> list[str]:
    """Collapse the per-block tensor names of each stack: 'block3.{6-39}.* (680 tensors)'."""
    stacks: dict[str, list[str]] = {}
    rest = []
    for name in names:
        match = re.match(r"^(block[\d_]+)\.\d+\.", name)
        if match:
            stacks.setdefault(match.group(1), []).append(name)
        else:
            rest.append(name)
    grouped = []
    for stack, members in stacks.items():
        if len(members) == 1:
            grouped.extend(members)
        else:
            indices = {int(n.split(".")[1]) for n in members}
            grouped.append(f"{stack}.{{{_ranges(indices)}}}.* ({len(members)} tensors)")
    return grouped + rest


def _listing(title: str, items: list[str]) -> str:
    shown = items[:_MAX_LISTED]
    more = f"\n    ... and {len(items) - len(shown)} more" if len(items) > len(shown) else ""
    return f"  {title}:\n" + "\n".join(f"    {s}" for s in shown) + more


def _compare(state_dict: Mapping[str, Any], config: ModelConfig) -> tuple[list[str], list[str], list[str]]:
    expected = expected_torch_shapes(config)
    missing = [n for n in expected if n not in state_dict]
    unexpected = sorted(n for n in state_dict if n not in expected)
    misshaped = [
        f"{n}: got {_shape_of(v)}, expected {expected[n]}"
        for n, v in state_dict.items()
        if n in expected and _shape_of(v) != expected[n]
    ]
    return missing, unexpected, misshaped


def _raise(missing: list[str], unexpected: list[str], misshaped: list[str], what: str) -> None:
    parts = [
        (f"{t} ({len(items)})", grouped)
        for t, items, grouped in (
            ("missing", missing, _group_blocks(missing)),
            ("unexpected", unexpected, _group_blocks(unexpected)),
            ("mis-shaped", misshaped, misshaped),
        )
        if items
    ]
    if parts:
        body = "\n".join(_listing(t, items) for t, items in parts)
        raise CheckpointMismatchError(f"state dict does not match {what}:\n{body}")


def check_state_dict(state_dict: Mapping[str, Any], config: ModelConfig) -> None:
    """Raise ``CheckpointMismatchError`` listing missing, unexpected and mis-shaped tensors (if any)."""
    _raise(*_compare(state_dict, config), what=_describe(config))


def _describe(config: ModelConfig) -> str:
    return f"AggPose(dims={config.dims}, stage_depths={config.stage_depths}, num_joints={config.num_joints})"


def _nested_set(tree: dict, path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _nested_get(tree: Mapping, path: tuple[str, ...]) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def _write(arrays: dict[tuple[str, ...], np.ndarray], state_dict: Mapping[str, Any], config: ModelConfig) -> list[str]:
    """Copy the tensors of ``state_dict`` present in the layout into ``arrays`` (Flax layout, in place)."""
    written = []
    for name, entry in _layout(config).items():
        if name in state_dict:
            value = _to_flax_array(np.asarray(state_dict[name], dtype=np.float32))
            target = arrays[entry.flax_path]
            target[... if entry.index is None else entry.index] = value
            written.append(name)
    return written


def torch_to_flax(state_dict: Mapping[str, Any], config: ModelConfig) -> dict:
    """Full conversion: nested dict of float32 numpy arrays shaped like ``nnx.state(model, nnx.Param)``.

    Raises ``CheckpointMismatchError`` unless the state dict matches ``config`` exactly.
    """
    check_state_dict(state_dict, config)
    out: dict = {}
    arrays = {path: np.empty(leaf.shape, np.float32) for path, leaf in _flatten(abstract_params(config))}
    for path, array in arrays.items():
        _nested_set(out, path, array)
    _write(arrays, state_dict, config)
    return out


def flax_to_torch(params: Any, config: ModelConfig) -> dict[str, np.ndarray]:
    """Inverse of ``torch_to_flax``: ``params`` is an ``nnx.State`` of Params or its pure nested dict."""
    if isinstance(params, nnx.State):
        params = nnx.to_pure_dict(params)
    out: dict[str, np.ndarray] = {}
    for name, entry in _layout(config).items():
        try:
            value = np.asarray(jax.device_get(_nested_get(params, entry.flax_path)))
        except (KeyError, TypeError) as err:
            raise CheckpointMismatchError(f"flax_to_torch: parameter {'/'.join(entry.flax_path)} is missing") from err
        if entry.index is not None:
            value = value[entry.index]
        out[name] = np.ascontiguousarray(_to_torch_array(value))
    return out


__all__ = [
    "CheckpointMismatchError",
    "expected_torch_shapes",
    "infer_model_config",
    "check_state_dict",
    "torch_to_flax",
    "flax_to_torch",
]
