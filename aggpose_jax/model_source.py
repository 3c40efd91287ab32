"""Reading any model source, the one owner: a PyTorch/safetensors file, a converted model directory or a
training workdir (its latest or best checkpoint), for evaluation, training starts, inference, prediction
and export.

:func:`checkpoint_kind` is the one dispatch on the kind of a path; :func:`read_model` reads any kind into
a :class:`ModelSource` (its ``ModelConfig``, host float32 parameters, and for a workdir the step read).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Literal

import jax
import numpy as np
from ml_collections import ConfigDict

from aggpose_jax import model_dir
from aggpose_jax.config import RunConfig, model_config
from aggpose_jax.convert import import_mit_backbone, load_torch_checkpoint
from aggpose_jax.errors import CheckpointError
from aggpose_jax.models.aggpose import ModelConfig
from aggpose_jax.params import abstract_params, check_architecture, init_params, load_matching
from aggpose_jax.train.checkpoints import check_which, restore_params

log = logging.getLogger(__name__)

Kind = Literal["model_dir", "workdir", "file"]


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """What :func:`read_model` read: where from, the model config, host float32 params, a workdir's step."""

    path: str
    kind: Kind
    config: ModelConfig
    params: dict = dataclasses.field(repr=False)
    step: int | None = None  # a workdir's training step read
    which: str | None = None  # a workdir's 'latest' or 'best'


def checkpoint_kind(path: str | os.PathLike[str]) -> Kind:
    """'model_dir', 'workdir' or 'file'; ``CheckpointError`` for a directory of neither kind or a missing path."""
    path = os.fspath(path)
    if os.path.isdir(path):
        if model_dir.is_model_dir(path):
            return "model_dir"
        if os.path.isdir(os.path.join(path, "checkpoints")):
            return "workdir"
        raise CheckpointError(
            f"{path}: a directory but neither a converted model ({model_dir.META_FILE} is missing) "
            f"nor a training workdir (checkpoints/ is missing)"
        )
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: no such file or directory")
    return "file"


def read_model(
    path: str | os.PathLike[str], config: ModelConfig | None = None, *, which: str = "latest"
) -> ModelSource:
    """Any model source, read to host float32 arrays.

    ``path``: a PyTorch ``.pth`` / safetensors file (``config`` checked against the tensors, default
    inferred), a converted model directory (``config``'s architecture must match the stored one), or a
    training workdir (its ``which`` = 'latest' or 'best' training checkpoint). With ``config`` given, the
    returned config is it (so its non-architecture fields such as ``dtype`` apply).
    """
    check_which(which)
    path = os.fspath(path)
    kind = checkpoint_kind(path)
    step = None
    if kind == "file":
        stored, params = load_torch_checkpoint(path, config)
    else:
        if kind == "model_dir":
            stored, params = model_dir.load_model(path)
        else:
            stored, step, params = _read_workdir(path, which)
        if config is not None:
            check_architecture(stored, config, path)
    params = jax.tree.map(lambda a: np.asarray(a, np.float32), params)
    resolved = stored if kind == "file" or config is None else config
    return ModelSource(path, kind, resolved, params, step, which if kind == "workdir" else None)


def _read_workdir(workdir: str, which: str) -> tuple[ModelConfig, int, dict]:
    """(config, step, params) of a training workdir's latest or best checkpoint; the model from its config.json."""
    config_file = os.path.join(workdir, "config.json")
    try:
        with open(config_file, encoding="utf-8") as f:
            stored = model_config(ConfigDict(json.load(f)))
    except (OSError, ValueError, KeyError, AttributeError) as err:
        raise CheckpointError(f"{config_file}: cannot read the run's model config ({err})") from None
    step, params = restore_params(os.path.join(workdir, "checkpoints"), abstract_params(stored), which=which)
    log.info("%s: %s training checkpoint, step %d", workdir, which, step)
    return stored, step, params


def _read_init_checkpoint(path: str) -> ModelSource:
    try:
        return read_model(path)
    except (ValueError, FileNotFoundError) as err:
        raise ValueError(f"config.init_checkpoint: {err}") from None


def pretrained_params(
    model_cfg: ModelConfig, seed: int, *, mit_checkpoint: str = "", init_checkpoint: str = ""
) -> dict:
    """Training start: random parameters (``seed``), then MiT backbone weights (``mit_checkpoint``,
    ``config.init.mit_checkpoint``), then an AggPose checkpoint (``init_checkpoint``) on top.

    A checkpoint with another joint count keeps the configured output layer fresh (fine-tuning
    COCO -> infant); any other architecture difference is an error. Returns host (numpy) arrays.
    """
    params = jax.tree.map(np.asarray, init_params(model_cfg, seed))
    if mit_checkpoint:
        if not os.path.isfile(mit_checkpoint):
            raise ValueError(f"config.init.mit_checkpoint: {mit_checkpoint}: no such file")
        params, report = import_mit_backbone(params, mit_checkpoint, model_cfg)
        log.info("MiT backbone: %s", report.summary())
    if init_checkpoint:
        source = _read_init_checkpoint(init_checkpoint)
        check_architecture(source.config, model_cfg, f"config.init_checkpoint={init_checkpoint}", allow_joints=True)
        fresh = load_matching(params, source.params)
        if fresh:
            log.warning(
                "init_checkpoint %s: %d parameters kept their fresh initialisation (absent or of another shape): %s",
                init_checkpoint,
                len(fresh),
                ", ".join(fresh[:8]),
            )
        else:
            log.info("init_checkpoint %s: every parameter loaded", init_checkpoint)
    return jax.tree.map(lambda a: np.asarray(a, np.float32), params)


def run_params(run: RunConfig) -> dict:
    """The training start of ``run`` (:func:`pretrained_params` with the run's seed and checkpoints)."""
    return pretrained_params(
        run.model, run.seed, mit_checkpoint=run.mit_checkpoint, init_checkpoint=run.init_checkpoint
    )


def eval_params(run: RunConfig) -> tuple[ModelConfig, dict]:
    """``run.init_checkpoint``'s architecture at the run's image size, dtype and kernels, and its params."""
    source = _read_init_checkpoint(run.init_checkpoint)
    if source.config.num_joints != run.model.num_joints:
        raise ValueError(
            f"config.init_checkpoint={run.init_checkpoint}: the checkpoint predicts {source.config.num_joints} "
            f"joints but data.keypoints={run.data.keypoints!r} has {run.model.num_joints}"
        )
    m = run.model
    cfg = dataclasses.replace(
        source.config,
        image_size=m.image_size,
        dtype=m.dtype,
        unroll_blocks=m.unroll_blocks,
        kernels=m.kernels,
        attention=m.attention,
    )
    return cfg, source.params


__all__ = ["ModelSource", "checkpoint_kind", "eval_params", "pretrained_params", "read_model", "run_params"]
