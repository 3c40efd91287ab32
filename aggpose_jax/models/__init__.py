"""AggPose model definition (Flax NNX)."""

from aggpose_jax.models.aggpose import VARIANTS, AggPose, ModelConfig, get_model_config, model_from_params

__all__ = ['AggPose', 'ModelConfig', 'VARIANTS', 'get_model_config', 'model_from_params']
