"""Evaluation of a configured run, the one owner: params + config -> val loader -> COCO OKS AP -> records.

``evaluate_params`` runs the val loader, predicts, decodes, scores, draws and appends the metrics to
``workdir/metrics.json``; the training loop and ``--mode eval`` (``evaluate_run``) both call it.
Inference runs on each process's own devices (a local mesh) with a process-local copy of the
parameters, so processes never wait on each other per batch; each reads its own shard of the val set
(``source[i::N]``) and ``evaluate.topdown.evaluate`` gathers the decoded people of all processes before
rescoring, OKS-NMS and COCO scoring on process 0 (the AP does not depend on the process count).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from aggpose_jax import sharding as shd
from aggpose_jax import storage
from aggpose_jax.config import RunConfig
from aggpose_jax.data.pipeline import make_loader, make_source
from aggpose_jax.evaluate.topdown import evaluate
from aggpose_jax.heatmaps import jitted
from aggpose_jax.logs import log, write_json
from aggpose_jax.model_source import eval_params
from aggpose_jax.models.aggpose import ModelConfig
from aggpose_jax.params import abstract_params, split_model
from aggpose_jax.train.checkpoints import best_step, restore_params


def local_params(params: Any, mesh: jax.sharding.Mesh | None = None) -> tuple[Any, jax.sharding.Mesh]:
    """(params replicated on this process's devices, the local mesh). ``params`` may be host arrays,
    or global arrays replicated or FSDP-sharded over ``mesh`` (then every process must call this)."""
    local_mesh = shd.make_mesh(jax.local_devices())
    rep = NamedSharding(local_mesh, P())
    leaves = jax.tree.leaves(params)
    if any(isinstance(a, jax.Array) and not a.is_fully_replicated for a in leaves):  # FSDP: gather once
        params = jax.jit(lambda t: t, out_shardings=shd.replicated(mesh))(params)

    def one(a: Any) -> jax.Array:
        if isinstance(a, jax.Array):
            a = a.addressable_data(0)
        return jax.device_put(a, rep)

    return jax.tree.map(one, params), local_mesh


def eval_forward(run: RunConfig, graphdef: nnx.GraphDef, out_sharding: Any = None) -> Any:
    """The evaluation's jitted forward (``heatmaps.jitted``): the flip test inside when ``run.eval.flip_test``
    (crops and mirror images as one batch), with ``run.eval.shift_heatmap``."""
    flip_index = run.data.keypoint_set.flip_index if run.eval.flip_test else None
    return jitted(graphdef, flip_index, out_sharding, shift=run.eval.shift_heatmap)


def make_predict_fn(
    run: RunConfig, graphdef: nnx.GraphDef, other: nnx.State, params: Any, mesh: jax.sharding.Mesh | None = None
) -> Callable[[np.ndarray], jax.Array]:
    """``predict(images (B, H, W, 3) float32) -> heatmaps (B, h, w, J)`` (:func:`eval_forward`); B is padded
    internally to a multiple of the local device count."""
    params, local_mesh = local_params(params, mesh)
    n_dev = local_mesh.devices.size
    batch_sharding = NamedSharding(local_mesh, P(shd.DATA_AXIS))
    # compiled once per model and device set (evaluations during training)
    forward_fn = eval_forward(run, graphdef, NamedSharding(local_mesh, P()))

    def predict(images: np.ndarray) -> jax.Array:
        n = images.shape[0]
        pad = (-n) % n_dev
        if pad:
            images = np.concatenate([images, np.zeros((pad,) + images.shape[1:], images.dtype)])
        out = forward_fn((params, other), jax.device_put(jnp.asarray(images, jnp.float32), batch_sharding))
        return out[:n] if pad else out

    return predict


def val_loader(run: RunConfig) -> Any:
    """This process's share of the configured val split (``run.eval.batch``)."""
    return make_loader(
        make_source(run.data, "val"),
        keypoint_set=run.data.keypoint_set,
        data_config=run.data,
        train=False,
        batch=run.eval.batch,
        worker_count=run.data.num_workers,
        prefetch=run.data.prefetch,
    )


def run_evaluation(run: RunConfig, predict_fn: Callable[[np.ndarray], Any], out_dir: str) -> dict[str, float]:
    """COCO OKS metrics of ``predict_fn`` (:func:`make_predict_fn`) on the configured val split; writes
    ``out_dir``/{stats.json, keypoints_results.json, predictions.png}."""
    ev, data = run.eval, run.data
    return evaluate(
        predict_fn,
        val_loader(run),
        keypoint_set=data.keypoint_set,
        ann_file=ev.ann_file,
        out_dir=out_dir,
        decode=ev.decode,
        image_size=data.image_size,
        heatmap_size=data.heatmap_size,
        oks_nms_thre=ev.oks_nms_thre,
        in_vis_thre=ev.in_vis_thre,
        convention=data.affine_convention,
        draw_images=ev.draw_images,
        image_dir=ev.image_dir,
    )


def record_metrics(workdir: str, step: int, metrics: dict[str, float], out_dir: str) -> None:
    """Append to ``workdir/metrics.json``: {'evaluations': [{'step', 'out_dir', metrics...}], 'latest', 'best'}."""
    path = storage.join(workdir, "metrics.json")
    history: dict[str, Any] = {"evaluations": []}
    if storage.isfile(path):
        try:
            history = json.loads(storage.read_text(path))
        except (OSError, ValueError):
            log.warning("%s is unreadable; starting a new history", path)
            history = {"evaluations": []}
    entry = {"step": int(step), "out_dir": out_dir, **{k: float(v) for k, v in metrics.items()}}
    history["evaluations"] = [e for e in history.get("evaluations", []) if e.get("step") != step] + [entry]
    history["latest"] = entry
    by_step = {e.get("step"): e for e in history["evaluations"]}
    best = best_step(by_step.items())
    history.pop("best", None)
    if best is not None:
        history["best"] = by_step[best]
    write_json(path, history)
    log.info(
        "step %d: AP %.4f (AP50 %.4f, AR %.4f) -> %s",
        step,
        metrics.get("AP", float("nan")),
        metrics.get("AP50", float("nan")),
        metrics.get("AR", float("nan")),
        out_dir,
    )


def evaluate_params(
    run: RunConfig,
    model_cfg: ModelConfig,
    params: Any,
    workdir: str,
    step: int,
    *,
    name: str | None = None,
    mesh: jax.sharding.Mesh | None = None,
) -> dict[str, float]:
    """Evaluate ``params`` on the configured val split into ``workdir/eval/<name>`` (default ``step_<step>``)
    and record the metrics at ``step``."""
    graphdef, _, other = split_model(model_cfg)
    out_dir = storage.join(workdir, "eval", name or f"step_{step:08d}")
    # The evaluation writes local files (pycocotools, OpenCV); for a gs:// workdir they are copied up after.
    local = storage.local_folder(out_dir)
    metrics = run_evaluation(run, make_predict_fn(run, graphdef, other, params, mesh), local)
    if local != out_dir and jax.process_index() == 0:
        storage.put_folder(local, out_dir)
    record_metrics(workdir, step, metrics, out_dir)
    return metrics


def evaluate_run(run: RunConfig, workdir: str) -> dict[str, float]:
    """``--mode eval``: ``run.init_checkpoint`` if set, else the workdir's latest training checkpoint
    (its parameters alone: no optimizer, no train data)."""
    if run.init_checkpoint:
        model_cfg, params = eval_params(run)
        name = os.path.splitext(os.path.basename(os.path.normpath(run.init_checkpoint)))[0]  # e.g. eval/infant_l
        return evaluate_params(run, model_cfg, params, workdir, 0, name=name)
    directory = storage.join(workdir, "checkpoints")
    try:
        step, params = restore_params(directory, abstract_params(run.model))
    except FileNotFoundError:
        raise ValueError(f"config.init_checkpoint: empty and no training checkpoint in {directory}") from None
    return evaluate_params(run, run.model, params, workdir, step)


__all__ = ["eval_forward", "evaluate_params", "evaluate_run", "make_predict_fn", "record_metrics", "run_evaluation"]
