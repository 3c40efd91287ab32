"""The converted-model directory: the Flax parameters of an AggPose (Orbax) plus its ``ModelConfig`` (JSON).

What ``aggpose-convert`` writes and ``aggpose_jax.load`` reads (training workdirs hold training
checkpoints instead: ``aggpose_jax.train.checkpoints``).

Directory layout::

    DIR/aggpose_model.json   {"format": "aggpose-jax-model", "version": 1, "config": {...}, "num_params": N}
    DIR/params/              Orbax (StandardCheckpointer) checkpoint of nnx.state(model, nnx.Param)

A checkpoint is written next to its destination under a temporary name and renamed into place only
once complete, so a failed write never leaves a half-written or destroyed checkpoint behind.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from aggpose_jax.errors import CheckpointError, one_line
from aggpose_jax.models.aggpose import ModelConfig
from aggpose_jax.params import abstract_params, check_params, count_params, to_pure

META_FILE = "aggpose_model.json"
PARAMS_DIR = "params"
FORMAT = "aggpose-jax-model"
VERSION = 1


def _is_nonempty(path: str) -> bool:
    return os.path.exists(path) and (not os.path.isdir(path) or bool(os.listdir(path)))


def save_model(directory: str | os.PathLike, params: Any, config: ModelConfig, *, force: bool = False) -> str:
    """Write ``params`` (nnx.State or nested dict matching ``config``) and ``config`` to ``directory``.

    An existing non-empty destination is refused unless ``force``; with ``force`` it is replaced only
    after the new checkpoint is completely written. Returns the absolute directory.
    """
    dest = os.path.abspath(os.fspath(directory))
    if _is_nonempty(dest) and not force:
        raise FileExistsError(f"{dest}: destination exists and is not empty; use force=True (--force) to replace it")
    tree = to_pure(params)
    check_params(tree, config)
    tree = jax.tree.map(lambda x: np.asarray(jax.device_get(x), np.float32), tree)
    parent, name = os.path.split(dest)
    os.makedirs(parent, exist_ok=True)
    tag = uuid.uuid4().hex[:8]
    tmp, old = os.path.join(parent, f".{name}.tmp-{tag}"), os.path.join(parent, f".{name}.old-{tag}")
    try:
        os.makedirs(tmp)
        with ocp.StandardCheckpointer() as checkpointer:
            checkpointer.save(os.path.join(tmp, PARAMS_DIR), tree)
            checkpointer.wait_until_finished()
        meta = {"format": FORMAT, "version": VERSION, "config": config.to_dict(), "num_params": count_params(tree)}
        with open(os.path.join(tmp, META_FILE), "w") as f:
            json.dump(meta, f, indent=2)
        if os.path.exists(dest):
            os.rename(dest, old)
        try:
            os.rename(tmp, dest)
        except OSError:
            if os.path.exists(old):
                os.rename(old, dest)
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if os.path.isdir(old):
        shutil.rmtree(old, ignore_errors=True)
    elif os.path.exists(old):
        os.remove(old)
    return dest


def is_model_dir(path: str | os.PathLike) -> bool:
    return os.path.isfile(os.path.join(os.fspath(path), META_FILE))


def load_config(directory: str | os.PathLike) -> ModelConfig:
    """The ``ModelConfig`` stored in a model checkpoint directory."""
    directory = os.path.abspath(os.fspath(directory))
    meta_path = os.path.join(directory, META_FILE)
    if not os.path.isdir(directory):
        raise CheckpointError(f"{directory}: no such checkpoint directory")
    if not os.path.isfile(meta_path):
        raise CheckpointError(f"{directory}: not an aggpose-jax model checkpoint ({META_FILE} is missing)")
    try:
        with open(meta_path) as f:
            meta = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{meta_path}: unreadable ({err})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f'{meta_path}: field "format" must be {FORMAT!r}')
    if meta.get("version") != VERSION:
        raise CheckpointError(f'{meta_path}: field "version": unsupported version {meta.get("version")!r}')
    if not isinstance(meta.get("config"), dict):
        raise CheckpointError(f'{meta_path}: field "config" is missing or not an object')
    try:
        return ModelConfig.from_dict(meta["config"])
    except (TypeError, ValueError) as err:
        raise CheckpointError(f'{meta_path}: field "config": {err}') from None


def load_model(directory: str | os.PathLike) -> tuple[ModelConfig, dict]:
    """(config, params) from a directory written by ``save_model``; params: nested dict of float32 numpy arrays.

    Host arrays, like ``load_torch_checkpoint``'s: place them with ``jax.device_put`` as needed.
    """
    config = load_config(directory)
    params_dir = os.path.join(os.path.abspath(os.fspath(directory)), PARAMS_DIR)
    if not os.path.isdir(params_dir):
        raise CheckpointError(f"{params_dir}: parameter checkpoint is missing")
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), abstract_params(config))
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            # Compare shapes first: a mismatch is reported here, without a failing restore.
            stored = checkpointer.metadata(params_dir)
            stored = getattr(stored, "item_metadata", stored)
            got, want = (
                {jax.tree_util.keystr(p): tuple(leaf.shape) for p, leaf in jax.tree_util.tree_leaves_with_path(tree)}
                for tree in (stored, target)
            )
            if not got:
                raise CheckpointError(f"{params_dir}: damaged parameter checkpoint (its metadata cannot be read)")
            if got != want:
                bad = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))
                raise CheckpointError(
                    f"{params_dir}: the stored parameters do not match the config in {META_FILE} "
                    f"({len(bad)} differ, e.g. {', '.join(bad[:3])})"
                )
            params = checkpointer.restore(params_dir, target)
    except CheckpointError:
        raise
    except Exception as err:  # orbax raises many types (FileNotFoundError, ValueError, KeyError, ...)
        raise CheckpointError(
            f"{params_dir}: cannot restore the parameters ({type(err).__name__}: {one_line(err, limit=300)})"
        ) from None
    return config, jax.tree.map(lambda a: np.array(a, np.float32), params)


__all__ = ["CheckpointError", "is_model_dir", "load_config", "load_model", "save_model"]
