"""AggPose model definition (Flax NNX)."""

from aggpose_jax.models.aggpose import VARIANTS, AggPose, ModelConfig, ModelConfigError, get_model_config

__all__ = ["AggPose", "ModelConfig", "ModelConfigError", "VARIANTS", "get_model_config"]
