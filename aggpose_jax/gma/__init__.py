"""Movement features for General Movements Assessment research: the Chambers et al. 2020 set.

    from aggpose_jax.gma import compute_features, load_videos
    for video in load_videos(["results/"]):                  # aggpose-predict results
        table = compute_features(video.xy, video.fps, frames=video.frames).features

``features`` (pure numpy: the 104 features, the paper's 38, the two modes and the quirks), ``inputs``
(reading ``aggpose-predict`` results, keypoint sets to OpenPose-18), ``report`` (the PNG report) and
``cli`` (``aggpose-features``). This package sits above ``predict`` and ``pose``; nothing below imports it.
"""

from aggpose_jax.gma.features import (
    FEATURE_COLUMNS,
    MODES,
    QUIRKS,
    SIDE_AVERAGED_COLUMNS,
    VideoFeatures,
    compute_features,
    side_average,
)
from aggpose_jax.gma.inputs import INFANT21_TO_OPENPOSE18, VideoSeries, load_videos

__all__ = [
    "FEATURE_COLUMNS",
    "INFANT21_TO_OPENPOSE18",
    "MODES",
    "QUIRKS",
    "SIDE_AVERAGED_COLUMNS",
    "VideoFeatures",
    "VideoSeries",
    "compute_features",
    "load_videos",
    "side_average",
]
