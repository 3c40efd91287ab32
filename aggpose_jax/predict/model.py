"""The model of a prediction run: any checkpoint kind, precision and input-size overrides, its keypoint
set, and a description of where its weights came from (kind, step, SHA-256 of the checkpoint)."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax

from aggpose_jax.errors import CheckpointError
from aggpose_jax.heatmaps import HeatmapModel
from aggpose_jax.model_source import read_model
from aggpose_jax.models import cpu_kernels
from aggpose_jax.params import bind
from aggpose_jax.pose.keypoints import KeypointSet, keypoint_set_for
from aggpose_jax.predict import provenance


@dataclasses.dataclass
class LoadedModel:
    """A model with its parameters bound, its keypoint set and the description recorded in every result file."""

    model: HeatmapModel
    keypoint_set: KeypointSet
    description: dict[str, Any]


def load_model(
    path: str | os.PathLike[str],
    *,
    which: str = "latest",
    bf16: bool = False,
    image_size: tuple[int, int] | None = None,
    keypoints: str | None = None,
    kernels: str | None = None,
    hash_checkpoint: bool = True,
) -> LoadedModel:
    """Load a ``.pth``/safetensors file, a converted model directory or a training workdir for prediction.

    ``bf16``: compute in bfloat16 (parameters stay float32); ``image_size``: (H, W) model input, multiples
    of 32 (default: the checkpoint's); ``keypoints``: the keypoint set name (default: from the joint count,
    17 -> 'coco', 21 -> 'infant'); ``kernels``: the layers' compute form ('auto', 'cpu', 'xla').
    """
    path = os.fspath(path)
    source = read_model(path, which=which)
    kind, params = source.kind, source.params
    changes: dict[str, Any] = {"drop_path_rate": 0.0}
    if bf16:
        changes["dtype"] = "bfloat16"
    if image_size is not None:
        changes["image_size"] = tuple(int(v) for v in image_size)
    changes["kernels"] = cpu_kernels.resolve(kernels or source.config.kernels, jax.default_backend())
    config = dataclasses.replace(source.config, **changes)
    kset = keypoint_set_for(config.num_joints, keypoints, where=path)
    description: dict[str, Any] = {
        "path": os.path.abspath(path),
        "kind": kind,
        "config": config.to_dict(),
        "keypoint_set": kset.name,
        "params_sha256": provenance.params_sha256(params),
    }
    if kind == "workdir":
        step = source.step
        description.update(which=which, step=step)
        step_dir = os.path.join(path, "checkpoints", str(step))
        if hash_checkpoint and step is not None and os.path.isdir(step_dir):
            description["checkpoint_sha256"] = provenance.sha256_tree(step_dir)
            description["checkpoint_hashed"] = os.path.abspath(step_dir)
    elif hash_checkpoint:
        hashed = provenance.sha256_file(path) if kind == "file" else provenance.sha256_tree(path)
        description["checkpoint_sha256"] = hashed
    try:
        module = bind(config, params)
    except ValueError as err:
        raise CheckpointError(f"{path}: {err}") from None
    return LoadedModel(HeatmapModel(config, module), kset, description)


__all__ = ["LoadedModel", "load_model"]
