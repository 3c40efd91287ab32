"""Keypoints of images, image folders and videos: the pipeline beneath ``aggpose-predict``, its result
files, keypoint time series (``sequences``), video input/output (``video``) and ``aggpose-export``.

    from aggpose_jax.predict import Predictor
    predictor = Predictor.load("converted/infant")        # any checkpoint kind
    clip = predictor.video("clip.mp4")                     # single subject; or boxes=..., region=(x, y, w, h)
    clip.times, clip.keypoints, clip.scores, clip.box_sources
    predictor.run(["clip.mp4", "photos/"], "results/")     # the result files aggpose-predict writes

Names are imported on first use (``import aggpose_jax.predict`` stays cheap).
"""

from typing import Any

_LAZY = {
    "Predictor": "aggpose_jax.predict.runner",
    "RunPlan": "aggpose_jax.predict.runner",
    "plan_run": "aggpose_jax.predict.runner",
    "load_model": "aggpose_jax.predict.model",
    "SeriesSettings": "aggpose_jax.predict.series",
    "SubjectSettings": "aggpose_jax.predict.subject",
    "export_model": "aggpose_jax.predict.export",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
