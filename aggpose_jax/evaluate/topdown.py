"""End-to-end top-down evaluation: model heatmaps -> image keypoints -> COCO OKS AP.

Per batch (as the released ``validate`` + ``get_final_preds``): heatmaps of the crops from
``predict_fn`` (the heatmap runtime's forward, the flip test inside when the run asks for it:
``evaluate.job.eval_forward``); decoding (argmax + DARK by default) in heatmap pixels; the inverse
crop affine at heatmap resolution to image pixels. Then rescoring, OKS-NMS, the results JSON and
pycocotools.

The next batch's ``predict_fn`` call is dispatched before the previous batch is decoded, so
with an asynchronous (JAX) ``predict_fn`` the host-side decoding overlaps the device work.

Several processes: each decodes its own shard of the val set; ``gather_predictions`` then
all-gathers the decoded people (serialised arrays, exact) and puts them in one canonical order
(image id, box score, centre, scale), so rescoring, OKS-NMS (per image, across shards) and
pycocotools see the same input whatever the process and loader-worker counts. Process 0 scores,
writes and draws; the others receive its stats.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from aggpose_jax.distributed import barrier
from aggpose_jax.evaluate import coco_eval, postprocess
from aggpose_jax.evaluate.draw import draw_predictions, image_paths_for
from aggpose_jax.pose import geometry
from aggpose_jax.pose.decode import decode_to_image

__all__ = ["PersonPredictions", "predict_people", "gather_predictions", "evaluate"]

log = logging.getLogger(__name__)

PredictFn = Callable[[np.ndarray], Any]


@dataclasses.dataclass
class PersonPredictions:
    """Per-person predictions, N people (padding rows removed)."""

    image_ids: np.ndarray  # int64 (N,)
    keypoints: np.ndarray  # float32 (N, J, 2), image pixels
    maxvals: np.ndarray  # float32 (N, J)
    box_scores: np.ndarray  # float32 (N,)
    centers: np.ndarray  # float32 (N, 2)
    scales: np.ndarray  # float32 (N, 2)

    def __len__(self) -> int:
        return int(self.image_ids.shape[0])


def _batch_field(batch: dict[str, Any], key: str) -> np.ndarray:
    if key not in batch:
        raise KeyError(f"evaluate: eval batch has no field '{key}' (got {sorted(batch)})")
    return np.asarray(batch[key])


def predict_people(
    predict_fn: PredictFn,
    loader: Iterable[dict[str, Any]],
    *,
    decode: str = "dark",
    image_size: Sequence[int] | None = None,
    heatmap_size: Sequence[int] | None = None,
    convention: geometry.Convention = "aggpose",
) -> PersonPredictions:
    """Run ``predict_fn`` over every eval batch and decode people to image coordinates.

    Rows with ``valid == False`` (padding) are dropped.
    ``image_size``/``heatmap_size`` (H, W)/(h, w), when given, are checked against the data.
    """
    parts: dict[str, list[np.ndarray]] = {
        k: [] for k in ("image_ids", "keypoints", "maxvals", "box_scores", "centers", "scales")
    }

    def finish(meta: dict[str, np.ndarray], out: Any) -> None:
        hm = np.asarray(out, dtype=np.float32)
        if hm.ndim != 4:
            raise ValueError(f"evaluate: predict_fn must return (B, h, w, J) heatmaps, got {hm.shape}")
        if heatmap_size is not None and tuple(hm.shape[1:3]) != tuple(heatmap_size):
            raise ValueError(f"evaluate: heatmaps are {hm.shape[1:3]}, expected heatmap_size {tuple(heatmap_size)}")
        keep = meta["valid"]
        if not keep.any():
            return
        hm = hm[keep]
        pts, maxvals = decode_to_image(
            hm, meta["center"][keep], meta["scale"][keep], decode=decode, convention=convention
        )
        parts["image_ids"].append(meta["image_id"][keep].astype(np.int64))
        parts["keypoints"].append(pts)
        parts["maxvals"].append(maxvals)
        parts["box_scores"].append(meta["score"][keep].astype(np.float32))
        parts["centers"].append(meta["center"][keep].astype(np.float32))
        parts["scales"].append(meta["scale"][keep].astype(np.float32))

    pending: tuple[dict[str, np.ndarray], Any] | None = None
    for batch in loader:
        images = _batch_field(batch, "image").astype(np.float32, copy=False)
        if image_size is not None and tuple(images.shape[1:3]) != tuple(image_size):
            raise ValueError(f"evaluate: images are {images.shape[1:3]}, expected image_size {tuple(image_size)}")
        n = images.shape[0]
        meta = {k: _batch_field(batch, k) for k in ("image_id", "center", "scale", "score")}
        meta["valid"] = np.asarray(batch["valid"], bool) if "valid" in batch else np.ones(n, bool)
        out = predict_fn(images)
        if pending is not None:
            finish(*pending)
        pending = (meta, out)
    if pending is not None:
        finish(*pending)

    if not parts["image_ids"]:
        return PersonPredictions(
            np.zeros((0,), np.int64),
            np.zeros((0, 0, 2), np.float32),
            np.zeros((0, 0), np.float32),
            np.zeros((0,), np.float32),
            np.zeros((0, 2), np.float32),
            np.zeros((0, 2), np.float32),
        )
    return PersonPredictions(**{k: np.concatenate(v) for k, v in parts.items()})


def _default_image_dir(ann_file: str) -> str:
    """ROOT/annotations/person_keypoints_val2017.json -> ROOT/val2017."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(ann_file)))
    split = os.path.splitext(os.path.basename(ann_file))[0].split("_")[-1]
    return os.path.join(root, split)


def _allgather_bytes(blob: bytes) -> list[bytes]:
    """Every process's ``blob``, in process order, on every process (a device all-gather of padded bytes)."""
    data = np.frombuffer(blob, np.uint8)
    sizes = np.asarray(multihost_utils.process_allgather(np.int32(data.size))).reshape(-1)
    padded = np.zeros(int(sizes.max()), np.uint8)
    padded[: data.size] = data
    gathered = np.asarray(multihost_utils.process_allgather(padded))
    return [gathered[i, : int(n)].tobytes() for i, n in enumerate(sizes)]


def _to_bytes(preds: PersonPredictions) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **dataclasses.asdict(preds))
    return buf.getvalue()


def _from_bytes(blob: bytes) -> PersonPredictions:
    with np.load(io.BytesIO(blob)) as data:
        return PersonPredictions(**{f.name: data[f.name] for f in dataclasses.fields(PersonPredictions)})


def _canonical_order(preds: PersonPredictions) -> PersonPredictions:
    """People sorted by (image id, box score, centre, scale): input order never decides ties."""
    if len(preds) < 2:
        return preds
    order = np.lexsort(
        (
            preds.scales[:, 1],
            preds.scales[:, 0],
            preds.centers[:, 1],
            preds.centers[:, 0],
            preds.box_scores,
            preds.image_ids,
        )
    )
    return PersonPredictions(**{f.name: getattr(preds, f.name)[order] for f in dataclasses.fields(preds)})


def gather_predictions(preds: PersonPredictions) -> PersonPredictions:
    """This process's people joined with every other process's (all processes must call it), in canonical order."""
    if jax.process_count() > 1:
        barrier("eval_predicted")  # the processes may finish their shards far apart
        parts = [_from_bytes(blob) for blob in _allgather_bytes(_to_bytes(preds))]
        parts = [p for p in parts if len(p)] or parts[:1]
        preds = PersonPredictions(
            **{f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(preds)}
        )
    return _canonical_order(preds)


def _share_stats(stats: dict[str, float] | None) -> dict[str, float]:
    """Process 0's stats on every process (exact: sent as JSON)."""
    if jax.process_count() == 1:
        assert stats is not None
        return stats
    barrier("eval_scored")  # process 0 scored and drew meanwhile
    blob = json.dumps(stats).encode() if jax.process_index() == 0 else b""
    return json.loads(_allgather_bytes(blob)[0])


def evaluate(
    predict_fn: PredictFn,
    loader: Iterable[dict[str, Any]],
    *,
    keypoint_set: Any,
    ann_file: str,
    out_dir: str,
    decode: str = "dark",
    image_size: Sequence[int] | None = None,
    heatmap_size: Sequence[int] | None = None,
    oks_nms_thre: float | None = 0.9,
    in_vis_thre: float = 0.2,
    convention: geometry.Convention = "aggpose",
    name: str = "aggpose",
    draw_images: int = 4,
    image_dir: str | None = None,
) -> dict[str, float]:
    """Evaluate a heatmap model on a top-down eval loader; returns the COCO OKS AP/AR stats.

    Args:
      predict_fn: float32 NHWC crops (B, H, W, 3) -> heatmaps (B, h, w, J) (numpy or jax), the
        flip test inside when wanted (``pose.flip.with_flip_test``; ``evaluate.job.eval_forward``).
      loader: iterable of eval batches ({'image', 'image_id', 'center', 'scale', 'score'},
        optional 'valid').
      keypoint_set: provides ``sigmas`` and ``skeleton``.
      ann_file: COCO keypoint annotations (ground truth).
      out_dir: receives ``keypoints_results.json``, ``stats.json`` and ``predictions.png``.
      oks_nms_thre: OKS-NMS threshold (None: no NMS, as the released infant evaluation).
      draw_images: how many val images to draw predictions on (0: none); images are read
        from ``image_dir`` (default ROOT/<split> beside ROOT/annotations).
    Returns:
      {'AP', 'AP50', 'AP75', 'APM', 'APL', 'AR', 'AR50', 'AR75', 'ARM', 'ARL'}, plus
      'num_people' and 'eval_seconds'.
    """
    t0 = time.perf_counter()
    os.makedirs(out_dir, exist_ok=True)
    sigmas = np.asarray(keypoint_set.sigmas, dtype=np.float64)
    preds = predict_people(
        predict_fn,
        loader,
        decode=decode,
        image_size=image_size,
        heatmap_size=heatmap_size,
        convention=convention,
    )
    preds = gather_predictions(preds)
    if len(preds) and preds.keypoints.shape[1] != sigmas.shape[0]:
        raise ValueError(
            f"evaluate: model predicts {preds.keypoints.shape[1]} joints but keypoint set "
            f"'{getattr(keypoint_set, 'name', '?')}' has {sigmas.shape[0]}"
        )
    if jax.process_index() != 0:  # process 0 scores, writes and draws
        return _share_stats(None)
    merged = postprocess.build_results(
        preds.image_ids,
        preds.keypoints,
        preds.maxvals,
        preds.box_scores,
        preds.scales,
        sigmas,
        oks_nms_thre=oks_nms_thre,
        in_vis_thre=in_vis_thre,
    )
    stats_path = os.path.join(out_dir, "stats.json")
    coco_eval.write_results(merged, os.path.join(out_dir, "keypoints_results.json"))
    coco_gt = coco_eval.load_coco_gt(ann_file)
    stats, summary = coco_eval.coco_keypoint_eval(merged, coco_gt, sigmas)
    log.debug("pycocotools summary:\n%s", summary)
    stats = dict(stats)
    stats["num_people"] = float(len(merged))
    stats["eval_seconds"] = time.perf_counter() - t0
    print(coco_eval.format_table(stats, name), flush=True)
    coco_eval.save_stats(stats, stats_path)
    if draw_images > 0 and merged:
        try:
            paths = image_paths_for(
                coco_gt, image_dir or _default_image_dir(ann_file), [r["image_id"] for r in merged], limit=draw_images
            )
            draw_predictions(
                paths,
                merged,
                keypoint_set,
                os.path.join(out_dir, "predictions.png"),
                max_images=draw_images,
                kpt_thre=in_vis_thre,
                ground_truth=coco_gt.loadAnns(coco_gt.getAnnIds(imgIds=[i for i, _ in paths])),
            )
        except (OSError, ValueError) as e:  # drawing is a convenience; never lose the stats
            log.warning("evaluate: could not draw predictions: %s", e)
    return _share_stats(stats)
