"""The model of a prediction run: any checkpoint kind, precision and input-size overrides, its keypoint
set, and a description of where its weights came from (kind, step, SHA-256 of the checkpoint)."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from aggpose_jax import model_dir
from aggpose_jax.inference import PoseModel
from aggpose_jax.model_dir import CheckpointError
from aggpose_jax.params import bind, read_params
from aggpose_jax.pose.keypoints import KeypointSet, get_keypoint_set
from aggpose_jax.predict import provenance

_SETS_BY_JOINTS = {17: "coco", 21: "infant"}


@dataclasses.dataclass
class LoadedModel:
    """A ``PoseModel`` with its keypoint set and the description recorded in every result file."""

    model: PoseModel
    keypoint_set: KeypointSet
    description: dict[str, Any]


def checkpoint_kind(path: str) -> str:
    if os.path.isdir(path) and model_dir.is_model_dir(path):
        return "model_dir"
    if os.path.isdir(path) and os.path.isdir(os.path.join(path, "checkpoints")):
        return "workdir"
    return "file"


def _workdir_step(workdir: str, which: str) -> int | None:
    """The training step that ``read_params`` reads from a workdir ('latest' or best AP), or None."""
    import orbax.checkpoint as ocp

    options = ocp.CheckpointManagerOptions(read_only=True, create=False)
    with ocp.CheckpointManager(os.path.join(workdir, "checkpoints"), options=options) as manager:
        if which == "best":
            scored = [(float(m["AP"]), s) for s in manager.all_steps() if (m := manager.metrics(s)) and "AP" in m]
            return max(scored)[1] if scored else None
        return manager.latest_step()


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
    if which not in ("latest", "best"):
        raise ValueError(f"which must be 'latest' or 'best', got {which!r}")
    kind = checkpoint_kind(path)
    config, params = read_params(path, which=which)
    changes: dict[str, Any] = {"drop_path_rate": 0.0}
    if bf16:
        changes["dtype"] = "bfloat16"
    if image_size is not None:
        changes["image_size"] = tuple(int(v) for v in image_size)
    if kernels is not None:
        changes["kernels"] = kernels
    config = dataclasses.replace(config, **changes)
    name = keypoints or _SETS_BY_JOINTS.get(config.num_joints)
    if name is None:
        raise ValueError(f"{path}: the model predicts {config.num_joints} joints; name its keypoint set (--keypoints)")
    kset = get_keypoint_set(name)
    if kset.num_joints != config.num_joints:
        raise ValueError(
            f"{path}: the model predicts {config.num_joints} joints "
            f"but keypoint set '{kset.name}' has {kset.num_joints}"
        )
    description: dict[str, Any] = {
        "path": os.path.abspath(path),
        "kind": kind,
        "config": config.to_dict(),
        "keypoint_set": kset.name,
        "params_sha256": provenance.params_sha256(params),
    }
    if kind == "workdir":
        step = _workdir_step(path, which)
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
    return LoadedModel(PoseModel(config, module), kset, description)


__all__ = ["LoadedModel", "checkpoint_kind", "load_model"]
