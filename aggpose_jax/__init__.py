"""AggPose (deep aggregation vision transformer for pose estimation) in JAX/Flax.

``aggpose_jax.load(path)`` loads a PyTorch checkpoint or a converted model directory (see
``aggpose_jax.inference``); sub-packages are imported on first use.
"""

from typing import Any

__all__ = ["load", "PoseModel"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from aggpose_jax import inference

        return getattr(inference, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
