"""Evaluation: flip test, decoding to image coordinates, rescoring, OKS-NMS, COCO OKS AP."""

from aggpose_jax.evaluation.coco_eval import (
    STAT_NAMES, coco_keypoint_eval, format_table, load_coco_gt, save_stats, write_results)
from aggpose_jax.evaluation.draw import draw_predictions, image_paths_for
from aggpose_jax.evaluation.evaluator import PersonPredictions, decode_to_image, evaluate, predict_people
from aggpose_jax.evaluation.flip import flip_average, flip_heatmaps, flip_images
from aggpose_jax.evaluation.postprocess import build_results, oks_matrix, oks_nms, rescore, results_by_image

__all__ = [
    "STAT_NAMES", "coco_keypoint_eval", "format_table", "load_coco_gt", "save_stats", "write_results",
    "draw_predictions", "image_paths_for",
    "PersonPredictions", "decode_to_image", "evaluate", "predict_people",
    "flip_average", "flip_heatmaps", "flip_images",
    "build_results", "oks_matrix", "oks_nms", "rescore", "results_by_image",
]
