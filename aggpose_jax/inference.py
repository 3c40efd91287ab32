"""The inference API: ``aggpose_jax.load(path)`` -> ``PoseModel`` with ``heatmaps(images)`` and ``predictor()``."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax

from aggpose_jax.convert import ConfigSpec, resolve_config
from aggpose_jax.heatmaps import HeatmapModel
from aggpose_jax.model_source import read_model
from aggpose_jax.models import cpu_kernels
from aggpose_jax.models.aggpose import AggPose, ModelConfig
from aggpose_jax.params import bind
from aggpose_jax.predict.runner import Predictor


class PoseModel(HeatmapModel):
    """A loaded AggPose: ``.config``, ``.model`` (the ``AggPose`` module), ``.params``, ``heatmaps`` and
    ``predictor``."""

    def predictor(self, keypoints: str | None = None, **options: Any) -> Predictor:
        """Keypoints of images and videos with this model: an ``aggpose_jax.predict.Predictor``.

        ``keypoints``: the keypoint set's name (default: 'coco' for 17 joints, 'infant' for 21); ``options``:
        the predictor's (``flip``, ``decode``, ``batch_size``, ``subject``, ``min_box_score``, ``progress``).
        """
        return Predictor(self, keypoints, **options)


def load(path: str | os.PathLike, config: ConfigSpec = None, *, which: str = "latest") -> PoseModel:
    """Load a PyTorch checkpoint (``.pth``/safetensors), a converted model directory or a training workdir.

    ``config`` (a ``ModelConfig``, variant name or JSON file): for a ``.pth`` it is checked against the
    tensors (default: inferred); for a directory its architecture must equal the stored one, and its other
    fields (e.g. ``dtype='bfloat16'``, ``image_size``) are used as given. ``which``: a workdir's 'latest'
    or 'best' training checkpoint.
    """
    source = read_model(path, resolve_config(config), which=which)
    # The module computes with the kernels resolved for this backend; .config stays as asked.
    kernels = cpu_kernels.resolve(source.config.kernels, jax.default_backend())
    return PoseModel(source.config, bind(dataclasses.replace(source.config, kernels=kernels), source.params))


__all__ = ["AggPose", "ModelConfig", "PoseModel", "load"]
