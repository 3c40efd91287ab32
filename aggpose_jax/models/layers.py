"""Building blocks of AggPose (Mix-Transformer layers), Flax NNX, NHWC feature maps.

Every layer keeps its parameters in float32 and computes in ``dtype`` (float32 or bfloat16). Attribute
names follow the PyTorch release (``proj``/``norm``, ``fc1``/``dwconv``/``fc2``, ``q``/``kv``/``proj``/
``sr``, ``norm1``/``attn``/``norm2``/``mlp``) so that checkpoint names map one to one
(``aggpose_jax.convert.mapping``). ``kernels`` picks the computation, never the parameters: 'xla', the plain
forms below, or 'cpu', the XLA:CPU forms of ``aggpose_jax.models.cpu_kernels``. Layers take that choice
resolved ('auto' is the model's to resolve, once, for the platform it is built for); a layer checks it when
it is built and never looks at the host's backend.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from aggpose_jax.models import cpu_kernels

PATCH_NORM_EPS = 1e-5  # LayerNorm inside patch embeddings and after the reduction conv (torch default)
BLOCK_NORM_EPS = 1e-6  # LayerNorm inside blocks and the per-stream norms
ATTENTION_CHOICES = ("dot_product", "cudnn", "einsum")

# The release's trunc_normal_(std=.02) cuts at +-2 in absolute units (100 std): in effect N(0, 0.02).
_linear_init = nnx.initializers.normal(stddev=0.02)
_zeros = nnx.initializers.zeros_init()


def dense(in_features: int, out_features: int, dtype: jnp.dtype, rngs: nnx.Rngs) -> nnx.Linear:
    """Linear layer with the release's initialisation (N(0, 0.02), zero bias)."""
    return nnx.Linear(
        in_features,
        out_features,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=_linear_init,
        bias_init=_zeros,
        rngs=rngs,
    )


def conv(
    in_features: int,
    out_features: int,
    kernel: int,
    stride: int,
    padding: int,
    dtype: jnp.dtype,
    rngs: nnx.Rngs,
    groups: int = 1,
) -> nnx.Conv:
    """Conv2d (NHWC) with the release's initialisation: N(0, sqrt(2 / fan_out)), fan_out = k*k*out/groups."""
    fan_out = kernel * kernel * out_features // groups
    return nnx.Conv(
        in_features,
        out_features,
        kernel_size=(kernel, kernel),
        strides=(stride, stride),
        padding=((padding, padding), (padding, padding)),
        feature_group_count=groups,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=nnx.initializers.normal(stddev=math.sqrt(2.0 / fan_out)),
        bias_init=_zeros,
        rngs=rngs,
    )


def layer_norm(features: int, eps: float, dtype: jnp.dtype, rngs: nnx.Rngs) -> nnx.LayerNorm:
    """LayerNorm over channels; statistics in float32 with the two-pass variance (as torch)."""
    return nnx.LayerNorm(
        features, epsilon=eps, dtype=dtype, param_dtype=jnp.float32, use_fast_variance=False, rngs=rngs
    )


def gelu(x: jax.Array) -> jax.Array:
    """Exact GELU, x * Phi(x) (torch ``nn.GELU()``), evaluated in float32."""
    return jax.nn.gelu(x.astype(jnp.float32), approximate=False).astype(x.dtype)


def upsample_nearest(x: jax.Array, factor: int) -> jax.Array:
    """Nearest-neighbour up-sampling of an NHWC map by an integer factor (torch ``nn.Upsample``)."""
    if factor == 1:
        return x
    return jnp.repeat(jnp.repeat(x, factor, axis=1), factor, axis=2)


def drop_path(x: jax.Array, rate: jax.Array | float, key: jax.Array | None) -> jax.Array:
    """Stochastic depth: drop the whole residual branch per sample with probability ``rate``.

    ``key=None`` means deterministic (identity). ``rate`` may be a traced scalar (scanned stacks).
    """
    if key is None:
        return x
    keep = 1.0 - jnp.asarray(rate, jnp.float32)
    mask = jax.random.bernoulli(key, keep, (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(mask, x / keep.astype(x.dtype), jnp.zeros_like(x))


class OverlapPatchEmbed(nnx.Module):
    """Overlapped patch embedding: conv (k x k, stride s, pad k//2) then LayerNorm (eps 1e-5)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        patch_size: int,
        stride: int,
        *,
        dtype: jnp.dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.proj = conv(in_features, out_features, patch_size, stride, patch_size // 2, dtype, rngs)
        self.norm = layer_norm(out_features, PATCH_NORM_EPS, dtype, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.norm(self.proj(x))


class DWConv(nnx.Module):
    """The MixFFN's 3x3 depthwise conv with bias, pad 1 (``dwconv.dwconv`` as in the release)."""

    def __init__(self, features: int, *, dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
        self.dwconv = conv(features, features, 3, 1, 1, dtype, rngs, groups=features)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.dwconv(x)


class MixFFN(nnx.Module):
    """Linear(in -> hidden) -> depthwise 3x3 conv -> exact GELU -> Linear(hidden -> out), on an NHWC map."""

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        out_features: int,
        *,
        dtype: jnp.dtype = jnp.float32,
        kernels: str = "xla",
        rngs: nnx.Rngs,
    ):
        self.kernels = kernels
        self.cpu_forms = cpu_kernels.uses_cpu_forms(kernels)
        self.fc1 = dense(in_features, hidden_features, dtype, rngs)
        self.dwconv = DWConv(hidden_features, dtype=dtype, rngs=rngs)
        self.fc2 = dense(hidden_features, out_features, dtype, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.cpu_forms:
            return cpu_kernels.mix_ffn(self.fc1, self.dwconv.dwconv, self.fc2, x)
        return self.fc2(gelu(self.dwconv(self.fc1(x))))


class MlpUpsample(nnx.Module):
    """MixFFN to ``out_features`` (hidden = out) followed by nearest up-sampling by ``factor``."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        factor: int,
        *,
        dtype: jnp.dtype = jnp.float32,
        kernels: str = "xla",
        rngs: nnx.Rngs,
    ):
        self.factor = factor
        self.mlp = MixFFN(in_features, out_features, out_features, dtype=dtype, kernels=kernels, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return upsample_nearest(self.mlp(x), self.factor)


def attend(q: jax.Array, k: jax.Array, v: jax.Array, implementation: str) -> jax.Array:
    """softmax(q k^T / sqrt(d)) v over (B, L, heads, d) arrays.

    'dot_product': ``jax.nn.dot_product_attention`` (XLA); 'cudnn': the same with the cuDNN kernel
    (GPU only); 'einsum': the formula written out.
    """
    scale = q.shape[-1] ** -0.5
    if implementation == "einsum":
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
        weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
        return jnp.einsum("bhqk,bkhd->bqhd", weights, v)
    if implementation not in ATTENTION_CHOICES:
        raise ValueError(f"attention: must be one of {list(ATTENTION_CHOICES)}, got {implementation!r}")
    impl = "cudnn" if implementation == "cudnn" else None
    return jax.nn.dot_product_attention(q, k, v, scale=scale, implementation=impl)


class Attention(nnx.Module):
    """Multi-head self-attention with spatial sequence reduction (keys/values from an R x R strided conv)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        sr_ratio: int,
        *,
        dtype: jnp.dtype = jnp.float32,
        kernels: str = "xla",
        attention: str = "dot_product",
        rngs: nnx.Rngs,
    ):
        if dim % num_heads:
            raise ValueError(f"Attention: dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.sr_ratio = sr_ratio
        self.kernels = kernels
        self.cpu_forms = cpu_kernels.uses_cpu_forms(kernels)
        self.attention = attention
        self.q = dense(dim, dim, dtype, rngs)
        self.kv = dense(dim, 2 * dim, dtype, rngs)
        self.proj = dense(dim, dim, dtype, rngs)
        if sr_ratio > 1:
            self.sr = conv(dim, dim, sr_ratio, sr_ratio, 0, dtype, rngs)
            self.norm = layer_norm(dim, PATCH_NORM_EPS, dtype, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        b, h, w, c = x.shape
        head_dim = c // self.num_heads
        cpu = self.cpu_forms
        linear = cpu_kernels.dense_2d if cpu else (lambda layer, t: layer(t))
        src = x
        if self.sr_ratio > 1:  # keys and values from an (h/R, w/R) map
            src = self.norm(cpu_kernels.strided_patch_conv(self.sr, x) if cpu else self.sr(x))
        q = linear(self.q, x).reshape(b, h * w, self.num_heads, head_dim)
        kv = linear(self.kv, src).reshape(b, -1, 2, self.num_heads, head_dim)  # k first, then v
        out = attend(q, kv[:, :, 0], kv[:, :, 1], self.attention)
        return linear(self.proj, out.reshape(b, h, w, c))


class Block(nnx.Module):
    """Pre-norm Mix-Transformer block: x + Attn(LN(x)); x + MixFFN(LN(x)); with drop-path."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        sr_ratio: int,
        *,
        dtype: jnp.dtype = jnp.float32,
        kernels: str = "xla",
        attention: str = "dot_product",
        rngs: nnx.Rngs,
    ):
        self.norm1 = layer_norm(dim, BLOCK_NORM_EPS, dtype, rngs)
        self.attn = Attention(dim, num_heads, sr_ratio, dtype=dtype, kernels=kernels, attention=attention, rngs=rngs)
        self.norm2 = layer_norm(dim, BLOCK_NORM_EPS, dtype, rngs)
        self.mlp = MixFFN(dim, int(dim * mlp_ratio), dim, dtype=dtype, kernels=kernels, rngs=rngs)

    def __call__(self, x: jax.Array, drop_rate: jax.Array | float = 0.0, key: jax.Array | None = None) -> jax.Array:
        k1, k2 = (None, None) if key is None else tuple(jax.random.split(key))
        x = x + drop_path(self.attn(self.norm1(x)), drop_rate, k1)
        return x + drop_path(self.mlp(self.norm2(x)), drop_rate, k2)


class BlockStack(nnx.Module):
    """``num_blocks`` identical blocks run with ``jax.lax.scan``: one compiled body whatever the depth.

    Parameters live in ``self.layers`` (one ``Block`` whose every parameter has a leading axis of size
    ``num_blocks``); ``drop_rates[i]`` is block i's drop-path probability. ``remat`` recomputes each
    block's activations in the backward pass; ``unroll`` runs a Python loop over static slices.
    """

    def __init__(
        self,
        num_blocks: int,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        sr_ratio: int,
        drop_rates: Sequence[float],
        *,
        dtype: jnp.dtype = jnp.float32,
        remat: bool = False,
        unroll: bool = False,
        kernels: str = "xla",
        attention: str = "dot_product",
        rngs: nnx.Rngs,
    ):
        if num_blocks < 1 or len(drop_rates) != num_blocks:
            raise ValueError(
                f"BlockStack: need num_blocks >= 1 and one drop rate per block, "
                f"got {num_blocks} blocks and {len(drop_rates)} rates"
            )
        self.num_blocks = num_blocks
        self.drop_rates = tuple(float(r) for r in drop_rates)
        self.remat = remat
        self.unroll = unroll
        self.kernels = kernels
        self.cpu_forms = cpu_kernels.uses_cpu_forms(kernels)

        @nnx.split_rngs(splits=num_blocks)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def make(layer_rngs: nnx.Rngs) -> Block:
            return Block(
                dim, num_heads, mlp_ratio, sr_ratio, dtype=dtype, kernels=kernels, attention=attention, rngs=layer_rngs
            )

        self.layers = make(rngs)

    def __call__(self, x: jax.Array, key: jax.Array | None = None) -> jax.Array:
        graphdef, params = nnx.split(self.layers)
        rates = jnp.asarray(self.drop_rates, jnp.float32)
        keys = None if key is None else jax.random.split(key, self.num_blocks)
        materialise = self.cpu_forms

        def body(carry: jax.Array, xs: tuple) -> tuple[jax.Array, None]:
            layer_params, rate, layer_key = xs
            if materialise:
                layer_params = cpu_kernels.materialise_small_leaves(layer_params)
            return nnx.merge(graphdef, layer_params)(carry, rate, layer_key), None

        if self.remat:
            body = jax.checkpoint(body)
        if self.unroll:
            for i in range(self.num_blocks):
                x, _ = body(x, jax.tree.map(lambda a, i=i: a[i], (params, rates, keys)))
            return x
        x, _ = jax.lax.scan(body, x, (params, rates, keys))
        return x
