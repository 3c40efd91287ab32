"""Import PyTorch AggPose checkpoints (and MiT ImageNet weights) without PyTorch.

config, params = load_torch_checkpoint('pose_aggpose_l_256x192.pth')      # config inferred
convert_checkpoint('infant_aggpose_l.pth', 'converted/infant', config='aggpose_l')
params, report = import_mit_backbone(params, 'mit_b5.pth', config)
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence

from aggpose_jax.convert.mapping import CheckpointMismatchError, infer_model_config, torch_to_flax
from aggpose_jax.convert.mit import MitImportReport, import_mit_backbone
from aggpose_jax.convert.torch_reader import read_state_dict, read_torch_file
from aggpose_jax.errors import CheckpointError, one_line
from aggpose_jax.model_dir import save_model
from aggpose_jax.models.aggpose import VARIANTS, ModelConfig, get_model_config
from aggpose_jax.params import init_params

ConfigSpec = ModelConfig | str | os.PathLike | None


def resolve_config(spec: ConfigSpec) -> ModelConfig | None:
    """A ``ModelConfig`` from a config, a variant name ('aggpose_l', ...) or a JSON file of its fields."""
    if spec is None or isinstance(spec, ModelConfig):
        return spec
    text = os.fspath(spec)
    if text in VARIANTS:
        return get_model_config(text)
    if not os.path.isfile(text):
        raise ValueError(f"config {text!r}: neither a variant ({', '.join(sorted(VARIANTS))}) nor a JSON file")
    try:
        with open(text) as f:
            data = json.load(f)
        if not isinstance(data, dict):
            raise ValueError("expected a JSON object of ModelConfig fields")
        return ModelConfig.from_dict(data)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError, ValueError) as err:
        raise ValueError(f"{text}: invalid model config: {err}") from None


def describe_config(config: ModelConfig) -> str:
    """'aggpose_l' when ``config`` is a named variant, else the variant it resembles with its differences."""
    base = min(
        VARIANTS,
        key=lambda n: sum(
            getattr(VARIANTS[n], f.name) != getattr(config, f.name) for f in dataclasses.fields(ModelConfig)
        ),
    )
    diff = [
        f"{f.name}={getattr(config, f.name)}"
        for f in dataclasses.fields(ModelConfig)
        if getattr(VARIANTS[base], f.name) != getattr(config, f.name)
    ]
    return base if not diff else f"{base} with {', '.join(diff)}"


def load_torch_checkpoint(
    path: str | os.PathLike, config: ConfigSpec = None, *, heads: Sequence[int] | None = None, key: str | None = None
) -> tuple[ModelConfig, dict]:
    """(config, Flax params as a nested dict of float32 numpy arrays) from a PyTorch AggPose checkpoint.

    Without ``config`` the architecture is read off the tensors (head counts from ``heads`` or the MiT
    default); with it, every disagreement is reported in one ``CheckpointMismatchError``. ``key`` picks
    the wrapping entry of a training checkpoint (default: see ``read_state_dict``).
    """
    path = os.fspath(path)
    state_dict = read_state_dict(path, key)
    try:
        resolved = resolve_config(config)
        if resolved is None:
            resolved = infer_model_config(state_dict, heads=tuple(heads) if heads is not None else None)
        elif heads is not None:
            resolved = dataclasses.replace(resolved, heads=tuple(heads))
        return resolved, torch_to_flax(state_dict, resolved)
    except CheckpointMismatchError as err:
        raise CheckpointMismatchError(f"{path}: {one_line(str(err))}") from None


def _refuse_existing(dest: str, force: bool) -> None:
    if not force and os.path.exists(dest) and (not os.path.isdir(dest) or os.listdir(dest)):
        raise FileExistsError(f"{dest}: destination exists and is not empty; use force=True (--force) to replace it")


def convert_checkpoint(
    src: str | os.PathLike,
    dest: str | os.PathLike,
    *,
    config: ConfigSpec = None,
    heads: Sequence[int] | None = None,
    key: str | None = None,
    force: bool = False,
) -> ModelConfig:
    """Convert a PyTorch checkpoint into a model checkpoint directory (see ``aggpose_jax.model_dir``)."""
    _refuse_existing(os.path.abspath(dest), force)  # before the (possibly long) read
    resolved, params = load_torch_checkpoint(src, config, heads=heads, key=key)
    save_model(dest, params, resolved, force=force)
    return resolved


def init_from_mit(
    src: str | os.PathLike, dest: str | os.PathLike, config: ConfigSpec, *, seed: int = 0, force: bool = False
) -> tuple[ModelConfig, MitImportReport]:
    """Write a model checkpoint: a freshly initialised AggPose (``seed``) with MiT weights in its backbone."""
    resolved = resolve_config(config)
    if resolved is None:
        raise ValueError("init_from_mit: a model config is required (e.g. aggpose_l for mit_b5)")
    _refuse_existing(os.path.abspath(dest), force)
    params, report = import_mit_backbone(init_params(resolved, seed), src, resolved)
    save_model(dest, params, resolved, force=force)
    return resolved, report


__all__ = [
    "CheckpointError",
    "CheckpointMismatchError",
    "MitImportReport",
    "convert_checkpoint",
    "describe_config",
    "import_mit_backbone",
    "init_from_mit",
    "load_torch_checkpoint",
    "read_state_dict",
    "read_torch_file",
    "resolve_config",
]
