"""Inference helpers for videos and image folders: reading inputs, keypoint time series, exports."""
