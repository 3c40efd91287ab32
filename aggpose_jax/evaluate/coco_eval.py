"""COCO keypoint evaluation with pycocotools (OKS AP/AR), results/stats JSON, a printed table."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

__all__ = ["STAT_NAMES", "load_coco_gt", "write_results", "coco_keypoint_eval", "format_table", "save_stats"]

log = logging.getLogger(__name__)

# Order of ``COCOeval.stats`` for iouType 'keypoints'.
STAT_NAMES = ("AP", "AP50", "AP75", "APM", "APL", "AR", "AR50", "AR75", "ARM", "ARL")


def write_results(results: Sequence[dict[str, Any]], path: str) -> str:
    """Write COCO results JSON (a list of records); creates the directory. Returns ``path``."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(list(results), f)
    os.replace(tmp, path)
    return path


def load_coco_gt(ann_file: str | Any) -> Any:
    """A pycocotools ``COCO`` for ``ann_file`` (quietly); a ``COCO`` object passes through."""
    if not isinstance(ann_file, (str, os.PathLike)):
        return ann_file  # an already loaded COCO object
    if not os.path.isfile(ann_file):
        raise FileNotFoundError(f"coco_keypoint_eval: annotation file not found: {ann_file}")
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(os.fspath(ann_file))


def coco_keypoint_eval(
    results: Sequence[dict[str, Any]],
    ann_file: str | Any,
    sigmas: np.ndarray,
    *,
    image_ids: Sequence[int] | None = None,
) -> tuple[dict[str, float], str]:
    """OKS keypoint AP/AR of ``results`` against ``ann_file`` (path or a loaded ``COCO``).

    ``sigmas`` (J,) replace pycocotools' COCO defaults, so any joint count works.
    ``image_ids`` restricts evaluation to those images (default: all images of the file).
    Returns (stats dict keyed by ``STAT_NAMES``, pycocotools' summary text). An empty results
    list gives all zeros and a warning (pycocotools cannot load an empty list).
    """
    sigmas = np.asarray(sigmas, dtype=np.float64)
    coco_gt = load_coco_gt(ann_file)
    if len(results) == 0:
        log.warning("coco_keypoint_eval: no predictions to evaluate; reporting AP = AR = 0")
        return {k: 0.0 for k in STAT_NAMES}, "no predictions"
    num_kpts = len(results[0]["keypoints"]) // 3
    if num_kpts != sigmas.shape[0]:
        raise ValueError(f"coco_keypoint_eval: results have {num_kpts} keypoints but {sigmas.shape[0]} sigmas")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        coco_dt = coco_gt.loadRes(list(results))
        ev = COCOeval(coco_gt, coco_dt, "keypoints")
        ev.params.useSegm = None
        ev.params.kpt_oks_sigmas = sigmas
        if image_ids is not None:
            ev.params.imgIds = sorted(int(i) for i in image_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = {k: float(v) for k, v in zip(STAT_NAMES, ev.stats)}
    # pycocotools reports -1 where a category has no ground truth (e.g. no medium people).
    return stats, buf.getvalue()


def format_table(stats: dict[str, float], name: str = "model") -> str:
    """Markdown table of the stats (as HRNet prints them)."""
    keys = [k for k in STAT_NAMES if k in stats]
    head = "| Arch | " + " | ".join(keys) + " |"
    sep = "|---" * (len(keys) + 1) + "|"
    row = f"| {name} | " + " | ".join(f"{stats[k]:.3f}" for k in keys) + " |"
    return "\n".join([head, sep, row])


def save_stats(stats: dict[str, float], path: str) -> str:
    """Write the stats dict as JSON; returns ``path``."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(stats, f, indent=2, sort_keys=False)
    return path
