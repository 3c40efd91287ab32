"""Pose geometry shared by data, evaluation and inference: keypoint sets, crop affines, heatmap codec, flips."""
