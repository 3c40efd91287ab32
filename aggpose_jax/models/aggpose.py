"""AggPose: deep-aggregation vision transformer for top-down pose estimation (Flax NNX, NHWC).

Four resolution streams (1/4, 1/8, 1/16, 1/32) run Mix-Transformer blocks; after each stage the streams
exchange information (fusion); the four streams are finally brought to 1/4 and mixed into heatmaps.
Sub-module names are those of the PyTorch release, so that checkpoint tensors map by name.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any, NoReturn

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from aggpose_jax.models import cpu_kernels
from aggpose_jax.models.cpu_kernels import KERNEL_CHOICES
from aggpose_jax.models.layers import (
    ATTENTION_CHOICES,
    BLOCK_NORM_EPS,
    BlockStack,
    MixFFN,
    MlpUpsample,
    OverlapPatchEmbed,
    layer_norm,
)

_STAGES_PER_STREAM = (4, 3, 2, 1)
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class ModelConfigError(ValueError):
    """An invalid ``ModelConfig`` field; ``field`` names it, ``reason`` says what is wrong (with the value)."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"ModelConfig.{field}: {reason}")
        self.field, self.reason = field, reason


def _fail(config: Any, field: str, msg: str) -> NoReturn:
    raise ModelConfigError(field, f"{msg} (got {getattr(config, field)!r})")


def _int_tuple(config: Any, field: str, length: int, minimum: int) -> tuple[int, ...]:
    value = getattr(config, field)
    try:
        out = tuple(int(v) for v in value)
        ok = len(out) == length and all(not isinstance(v, bool) and int(v) == v for v in value)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        _fail(config, field, f"expected {length} integers")
    if any(v < minimum for v in out):
        _fail(config, field, f"every entry must be >= {minimum}")
    return out


def _number(config: Any, field: str) -> float:
    value = getattr(config, field)
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        _fail(config, field, "expected a number")
    return float(value)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of an AggPose model (defaults: AggPose-L, 17 joints, 256x192).

    stage_depths[s][k] is the number of blocks stream s+1 runs in its (k+1)-th stage (stream 1 has 4
    stages, stream 2 three, stream 3 two, stream 4 one). ``remat`` recomputes block activations in the
    backward pass (saves memory, same numbers); ``unroll_blocks`` unrolls the block scans (slower compile;
    needed for exact XLA cost analysis, which counts a loop body once). ``kernels`` picks how layers
    compute, never their parameters: 'xla' (the plain layers), 'cpu' (``models/cpu_kernels.py``) or
    'auto' (the CPU forms when the model is built for the CPU platform: ``cpu_kernels.resolve``, once, for the
    target devices, never at trace time). ``attention``: 'dot_product' (``jax.nn.dot_product_attention``),
    'cudnn' (its cuDNN kernel, GPU only) or 'einsum' (the formula written out).
    """

    dims: tuple[int, int, int, int] = (64, 128, 320, 512)
    heads: tuple[int, int, int, int] = (1, 2, 5, 8)
    sr_ratios: tuple[int, int, int, int] = (8, 4, 2, 1)
    mlp_ratio: float = 4.0
    stage_depths: tuple[tuple[int, ...], ...] = ((3, 3, 3, 3), (6, 3, 3), (40, 3), (3,))
    num_joints: int = 17
    image_size: tuple[int, int] = (256, 192)
    drop_path_rate: float = 0.1
    dtype: str = "float32"
    remat: bool = False
    unroll_blocks: bool = False
    kernels: str = "auto"
    attention: str = "dot_product"

    def __post_init__(self) -> None:
        set_ = functools.partial(object.__setattr__, self)
        for field in ("dims", "heads", "sr_ratios"):
            set_(field, _int_tuple(self, field, 4, 1))
        set_("image_size", _int_tuple(self, "image_size", 2, 32))
        if any(s % 32 for s in self.image_size):
            _fail(self, "image_size", "(H, W) must both be multiples of 32")
        if any(d % h for d, h in zip(self.dims, self.heads)):
            _fail(self, "heads", f"every width in dims={self.dims} must be divisible by its head count")
        try:
            depths = tuple(tuple(int(n) for n in row) for row in self.stage_depths)
        except (TypeError, ValueError):
            _fail(self, "stage_depths", "expected 4 sequences of block counts")
        if tuple(len(row) for row in depths) != _STAGES_PER_STREAM:
            _fail(self, "stage_depths", "expected rows of lengths (4, 3, 2, 1): blocks per stage of streams 1..4")
        if any(n < 1 for row in depths for n in row):
            _fail(self, "stage_depths", "every stage needs at least one block")
        set_("stage_depths", depths)
        set_("mlp_ratio", _number(self, "mlp_ratio"))
        if any(int(d * self.mlp_ratio) < 1 for d in self.dims):
            _fail(self, "mlp_ratio", "must be > 0 and leave every hidden width >= 1")
        if (
            isinstance(self.num_joints, bool)
            or not isinstance(self.num_joints, (int, np.integer))
            or self.num_joints < 1
        ):
            _fail(self, "num_joints", "must be a positive integer")
        set_("num_joints", int(self.num_joints))
        set_("drop_path_rate", _number(self, "drop_path_rate"))
        if not 0.0 <= self.drop_path_rate < 1.0:
            _fail(self, "drop_path_rate", "must lie in [0, 1)")
        if not isinstance(self.dtype, str) or self.dtype not in _DTYPES:
            _fail(self, "dtype", f"must be one of {sorted(_DTYPES)}")
        if self.kernels not in KERNEL_CHOICES:
            _fail(self, "kernels", f"must be one of {list(KERNEL_CHOICES)}")
        if self.attention not in ATTENTION_CHOICES:
            _fail(self, "attention", f"must be one of {list(ATTENTION_CHOICES)}")
        set_("remat", bool(self.remat))
        set_("unroll_blocks", bool(self.unroll_blocks))

    @property
    def compute_dtype(self) -> jnp.dtype:
        return _DTYPES[self.dtype]

    @property
    def heatmap_size(self) -> tuple[int, int]:
        return self.image_size[0] // 4, self.image_size[1] // 4

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (tuples become lists)."""
        out = dataclasses.asdict(self)
        for key, value in out.items():
            if isinstance(value, tuple):
                out[key] = [list(v) if isinstance(v, tuple) else v for v in value]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelConfig:
        """Inverse of ``to_dict``; unknown keys are an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ModelConfigError(unknown[0], f"unknown field(s) {unknown}; known fields: {sorted(known)}")
        return cls(**dict(data))


VARIANTS: dict[str, ModelConfig] = {
    "aggpose_l": ModelConfig(),
    "aggpose_s": ModelConfig(stage_depths=((3, 3, 3, 3), (4, 3, 3), (6, 3), (3,))),
    # The fixture model (tests/fixtures/upstream_tiny17.json): small widths, one or two blocks per stage.
    "aggpose_tiny": ModelConfig(dims=(16, 32, 40, 64), stage_depths=((1, 1, 1, 1), (2, 1, 1), (2, 1), (1,))),
}


def get_model_config(name: str, **overrides: Any) -> ModelConfig:
    """A named variant ('aggpose_l', 'aggpose_s', 'aggpose_tiny') with fields replaced by ``overrides``."""
    if name not in VARIANTS:
        raise ValueError(f"get_model_config: unknown variant {name!r}; choose from {sorted(VARIANTS)}")
    return dataclasses.replace(VARIANTS[name], **overrides)


def stack_name(stream: int, stage: int) -> str:
    """Release name of the blocks stream ``stream`` runs in stage ``stage`` (1-based): block3, block3_1..."""
    offset = stage - stream
    return f"block{stream}" if offset == 0 else f"block{stream}_{offset}"


def block_stacks(config: ModelConfig) -> list[tuple[str, int, int, int]]:
    """(name, stream, stage, num_blocks) for every block stack, in execution order."""
    out = []
    for stage in range(1, 5):
        for stream in range(1, stage + 1):
            out.append((stack_name(stream, stage), stream, stage, config.stage_depths[stream - 1][stage - stream]))
    return out


def drop_path_rates(config: ModelConfig) -> dict[str, tuple[float, ...]]:
    """Per-block drop-path rates, as in the release.

    A linear ramp 0 -> drop_path_rate over the blocks of each stream's first stage (streams in order);
    a stream's later stages reuse the rates of its first stage from its own start (clipped at the end).
    """
    first = [row[0] for row in config.stage_depths]
    ramp = np.linspace(0.0, config.drop_path_rate, sum(first))
    starts = np.cumsum([0] + first[:-1])
    return {
        name: tuple(float(ramp[min(starts[stream - 1] + i, len(ramp) - 1)]) for i in range(n))
        for name, stream, _, n in block_stacks(config)
    }


class AggPose(nnx.Module):
    """AggPose heatmap regressor: ``model(images (B, H, W, 3)) -> heatmaps (B, H/4, W/4, J) float32``."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs, platform: str | None = None):
        """``platform``: the JAX platform ('cpu', 'gpu', 'tpu') the model is built for, which resolves
        ``config.kernels='auto'`` here, once (default: the host's default backend, where an eager model runs);
        the layers only see the resolved 'xla' or 'cpu'. A run config resolves it for the run's devices
        before the model is built, so the model then never looks at the host."""
        self.config = config
        dt = config.compute_dtype
        self.kernels = kernels = cpu_kernels.resolve(config.kernels, platform or jax.default_backend())
        d1, d2, d3, d4 = config.dims

        def embed(c_in: int, c_out: int) -> OverlapPatchEmbed:  # 3x3 stride-2 down-sampling
            return OverlapPatchEmbed(c_in, c_out, 3, 2, dtype=dt, rngs=rngs)

        def mix(c_in: int, c_out: int, hidden: int | None = None) -> MixFFN:
            return MixFFN(c_in, hidden or c_out, c_out, dtype=dt, kernels=kernels, rngs=rngs)

        def up(c_in: int, c_out: int, factor: int = 2) -> MlpUpsample:
            return MlpUpsample(c_in, c_out, factor, dtype=dt, kernels=kernels, rngs=rngs)

        # Patch embeddings opening streams 1..4.
        self.patch_embed1 = OverlapPatchEmbed(3, d1, 7, 4, dtype=dt, rngs=rngs)
        self.patch_embed2, self.patch_embed3, self.patch_embed4 = embed(d1, d2), embed(d2, d3), embed(d3, d4)
        # Fusion after stage 2 (streams 1-2).
        self.patch_embed12, self.upsample1_21 = embed(d1, d2), up(d2, d1)
        self.merge_12_1, self.merge_12_2 = mix(2 * d1, d1), mix(2 * d2, d2)
        # Fusion after stage 3 (streams 1-3).
        self.patch_embed12k, self.patch_embed23k = embed(d1, d2), embed(d2, d3)
        self.upsample2_21, self.upsample2_32 = up(d2, d1), up(d3, d2)
        self.merge_123_1, self.merge_123_2, self.merge_123_3 = mix(2 * d1, d1), mix(3 * d2, d2), mix(2 * d3, d3)
        # Final fusion (streams 1-4).
        self.patch_embed12kk, self.patch_embed23kk, self.patch_embed34kk = embed(d1, d2), embed(d2, d3), embed(d3, d4)
        self.upsample3_21, self.upsample3_32, self.upsample3_43 = up(d2, d1), up(d3, d2), up(d4, d3)
        self.merge_1234_1, self.merge_1234_2 = mix(2 * d1, d1), mix(3 * d2, d2)
        self.merge_1234_3, self.merge_1234_4 = mix(3 * d3, d3), mix(2 * d4, d4)
        # Transformer blocks + LayerNorm per stream and stage (block1, norm1, block1_1, norm1_1, ...).
        rates = drop_path_rates(config)
        for name, stream, _, num in block_stacks(config):
            s = stream - 1
            setattr(
                self,
                name,
                BlockStack(
                    num,
                    config.dims[s],
                    config.heads[s],
                    config.mlp_ratio,
                    config.sr_ratios[s],
                    rates[name],
                    dtype=dt,
                    remat=config.remat,
                    unroll=config.unroll_blocks,
                    kernels=kernels,
                    attention=config.attention,
                    rngs=rngs,
                ),
            )
            setattr(self, name.replace("block", "norm"), layer_norm(config.dims[s], BLOCK_NORM_EPS, dt, rngs))
        # Head: streams 2-4 to 1/4 resolution and d1 channels, then two MixFFNs to heatmaps.
        self.upsample4_21, self.upsample4_31, self.upsample4_41 = up(d2, d1, 2), up(d3, d1, 4), up(d4, d1, 8)
        self.final = mix(4 * d1, d1)
        self.final_layer = mix(d1, config.num_joints, hidden=d1)
        try:  # drop-path masks when deterministic=False (falls back to the 'default' stream)
            self.rngs = rngs["dropout"].fork()
        except KeyError:
            self.rngs = nnx.data(None)

    def _stage(self, name: str, x: jax.Array, key: jax.Array | None) -> jax.Array:
        """Blocks ``name`` then the matching LayerNorm."""
        names = [n for n, *_ in block_stacks(self.config)]
        sub = None if key is None else jax.random.fold_in(key, names.index(name))
        x = getattr(self, name)(x, sub)
        return getattr(self, name.replace("block", "norm"))(x)

    def __call__(
        self, images: jax.Array, deterministic: bool = True, *, rngs: nnx.Rngs | jax.Array | None = None
    ) -> jax.Array:
        """Heatmaps (B, H/4, W/4, J) float32 from ImageNet-normalised images (B, H, W, 3), H, W multiples of 32.

        With ``deterministic=False`` drop-path is active; its key comes from ``rngs`` (an ``nnx.Rngs``
        whose 'dropout' stream is used, or a key) or else from the model's own 'dropout' stream.
        """
        if images.ndim != 4 or images.shape[-1] != 3 or images.shape[1] % 32 or images.shape[2] % 32:
            raise ValueError(
                f"AggPose: expected images (B, H, W, 3) with H, W multiples of 32, got shape {tuple(images.shape)}"
            )
        key = None
        if not deterministic and self.config.drop_path_rate > 0:
            if rngs is None:
                if self.rngs is None:
                    raise ValueError(
                        "AggPose: deterministic=False needs a dropout key: build the model with "
                        "nnx.Rngs having a 'dropout' or default stream, or pass rngs=..."
                    )
                key = self.rngs()
            elif isinstance(rngs, nnx.Rngs):
                key = rngs.dropout()
            else:
                key = rngs
        cat = lambda *xs: jnp.concatenate(xs, axis=-1)  # noqa: E731
        x = images.astype(self.config.compute_dtype)

        # Stage 1: stream 1 (1/4).
        x1 = self._stage("block1", self.patch_embed1(x), key)
        # Stage 2: open stream 2 (1/8) from stream 1; no fusion.
        x2 = self.patch_embed2(x1)
        x1, x2 = self._stage("block1_1", x1, key), self._stage("block2", x2, key)
        # Stage 3: open stream 3 (1/16); fuse streams 1-2 (stream 2 reads [self, down]).
        x3 = self.patch_embed3(x2)
        x1, x2 = (self.merge_12_1(cat(x1, self.upsample1_21(x2))), self.merge_12_2(cat(x2, self.patch_embed12(x1))))
        x1, x2, x3 = (
            self._stage("block1_2", x1, key),
            self._stage("block2_1", x2, key),
            self._stage("block3", x3, key),
        )
        # Stage 4: open stream 4 (1/32); fuse streams 1-3 ([down, self, up]).
        x4 = self.patch_embed4(x3)
        x1, x2, x3 = (
            self.merge_123_1(cat(x1, self.upsample2_21(x2))),
            self.merge_123_2(cat(self.patch_embed12k(x1), x2, self.upsample2_32(x3))),
            self.merge_123_3(cat(self.patch_embed23k(x2), x3)),
        )
        x1, x2, x3, x4 = (
            self._stage("block1_3", x1, key),
            self._stage("block2_2", x2, key),
            self._stage("block3_1", x3, key),
            self._stage("block4", x4, key),
        )
        # Final fusion of streams 1-4.
        x1, x2, x3, x4 = (
            self.merge_1234_1(cat(x1, self.upsample3_21(x2))),
            self.merge_1234_2(cat(self.patch_embed12kk(x1), x2, self.upsample3_32(x3))),
            self.merge_1234_3(cat(self.patch_embed23kk(x2), x3, self.upsample3_43(x4))),
            self.merge_1234_4(cat(self.patch_embed34kk(x3), x4)),
        )
        # Head: everything to 1/4, concatenate, mix to heatmaps.
        y = cat(x1, self.upsample4_21(x2), self.upsample4_31(x3), self.upsample4_41(x4))
        y = self.final_layer(self.final(y))
        return y.astype(jnp.float32)
