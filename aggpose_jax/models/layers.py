"""Building blocks of AggPose (Mix-Transformer layers), Flax NNX, NHWC feature maps.

Every layer keeps its parameters in float32 and computes in ``dtype`` (float32 or bfloat16).
Sub-module attribute names follow the PyTorch release (``proj``/``norm``, ``fc1``/``dwconv``/``fc2``,
``q``/``kv``/``proj``/``sr``, ``norm1``/``attn``/``norm2``/``mlp``) so that checkpoint names map
one to one (see ``aggpose_jax.convert.mapping``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

PATCH_NORM_EPS = 1e-5  # LayerNorm inside patch embeddings and after the reduction conv (torch default)
BLOCK_NORM_EPS = 1e-6  # LayerNorm inside blocks and the per-stream norms

# The release's trunc_normal_(std=.02) cuts at +-2 in absolute units (100 std): in effect N(0, 0.02).
_linear_init = nnx.initializers.normal(stddev=0.02)
_zeros = nnx.initializers.zeros_init()


def dense(in_features: int, out_features: int, dtype: jnp.dtype, rngs: nnx.Rngs) -> nnx.Linear:
    """Linear layer with the release's initialisation (N(0, 0.02), zero bias)."""
    return nnx.Linear(in_features, out_features, dtype=dtype, param_dtype=jnp.float32,
                      kernel_init=_linear_init, bias_init=_zeros, rngs=rngs)


def conv(in_features: int, out_features: int, kernel: int, stride: int, padding: int, dtype: jnp.dtype,
         rngs: nnx.Rngs, groups: int = 1) -> nnx.Conv:
    """Conv2d (NHWC) with the release's initialisation: N(0, sqrt(2 / fan_out)), fan_out = k*k*out/groups."""
    fan_out = kernel * kernel * out_features // groups
    return nnx.Conv(in_features, out_features, kernel_size=(kernel, kernel), strides=(stride, stride),
                    padding=((padding, padding), (padding, padding)), feature_group_count=groups,
                    dtype=dtype, param_dtype=jnp.float32,
                    kernel_init=nnx.initializers.normal(stddev=math.sqrt(2.0 / fan_out)),
                    bias_init=_zeros, rngs=rngs)


def layer_norm(features: int, eps: float, dtype: jnp.dtype, rngs: nnx.Rngs) -> nnx.LayerNorm:
    """LayerNorm over channels; statistics computed in float32 with the two-pass variance (as torch)."""
    return nnx.LayerNorm(features, epsilon=eps, dtype=dtype, param_dtype=jnp.float32,
                         use_fast_variance=False, rngs=rngs)


def apply_dense(layer: nnx.Linear, x: jax.Array) -> jax.Array:
    """``layer`` on the last axis of ``x``, via a 2-D (rows, features) matmul.

    XLA:CPU runs a dense layer (and its kernel gradient) several times faster on a 2-D operand than
    on a 4-D NHWC map.
    """
    y = layer(x.reshape(-1, x.shape[-1]))
    return y.reshape(*x.shape[:-1], y.shape[-1])


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

    def __init__(self, in_features: int, out_features: int, patch_size: int, stride: int, *,
                 dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
        self.proj = conv(in_features, out_features, patch_size, stride, patch_size // 2, dtype, rngs)
        self.norm = layer_norm(out_features, PATCH_NORM_EPS, dtype, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.norm(self.proj(x))


def _pad1(x: jax.Array) -> jax.Array:
    return jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))


def _shift_sum3x3(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """sum_{a,b} pad(x, 1)[:, i+a, j+b, c] * kernel[a, b, c], in float32."""
    h, w = x.shape[1], x.shape[2]
    xp = _pad1(x).astype(jnp.float32)
    k = kernel.astype(jnp.float32)
    return sum(xp[:, a:a + h, b:b + w, :] * k[a, b] for a in range(3) for b in range(3))


def _normal_cdf(x32: jax.Array) -> jax.Array:
    return 0.5 * (1.0 + jax.lax.erf(x32 * (1.0 / math.sqrt(2.0))))


def _gelu32(z: jax.Array) -> jax.Array:
    """Exact GELU, z * Phi(z) with Phi from erf (the formula of torch ``nn.GELU()``), float32 in and out."""
    return z * _normal_cdf(z)


def _gelu32_grad(z: jax.Array) -> jax.Array:
    return _normal_cdf(z) + z * jnp.exp(-0.5 * z * z) * (1.0 / math.sqrt(2.0 * math.pi))


def _conv_gelu(h: jax.Array, kernel: jax.Array, bias: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(pre-activation z in float32, GELU(z) in ``h.dtype``) for the depthwise 3x3 conv + bias of ``h``."""
    z = _shift_sum3x3(h, kernel) + bias.astype(jnp.float32)
    return z, _gelu32(z).astype(h.dtype)


def _kernel_grad_batched(h: jax.Array, gz: jax.Array) -> jax.Array:
    """dk[a, b, c] = sum_{n,i,j} pad(h, 1)[n, i+a, j+b, c] * gz[n, i, j, c], float32 (3, 3, C)."""
    hh, ww = h.shape[1], h.shape[2]
    hp = _pad1(h).astype(jnp.float32)
    return jnp.stack([jnp.stack([jnp.sum(hp[:, a:a + hh, b:b + ww, :] * gz, axis=(0, 1, 2)) for b in range(3)])
                      for a in range(3)])


def _kernel_grad_per_sample(h: jax.Array, gz: jax.Array) -> jax.Array:
    """:func:`_kernel_grad_batched` accumulated one sample at a time.

    On XLA:CPU the batched form materialises nine shifted copies of the whole batch in fresh memory;
    one sample's copies stay in cache and their buffer is reused (4x faster on 2 cores).
    """
    def add_sample(n: jax.Array, acc: jax.Array) -> jax.Array:
        one = lambda a: jax.lax.dynamic_slice_in_dim(a, n, 1)  # noqa: E731
        return acc + _kernel_grad_batched(one(h), one(gz))

    return jax.lax.fori_loop(0, h.shape[0], add_sample, jnp.zeros((3, 3, h.shape[-1]), jnp.float32))


def _stencil_kernel_grad(h: jax.Array, gz: jax.Array) -> jax.Array:
    """Kernel gradient of the depthwise 3x3 stencil: a per-sample loop on CPU, one batched op elsewhere."""
    return jax.lax.platform_dependent(h, gz, cpu=_kernel_grad_per_sample, default=_kernel_grad_batched)


@jax.custom_vjp
def conv_gelu_linear(h: jax.Array, kernel: jax.Array, bias: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
    """The MixFFN after ``fc1``: ``GELU(depthwise3x3(h) + bias) @ w + b`` for an NHWC map ``h``.

    ``kernel`` (3, 3, C), ``bias`` (C,): the depthwise conv (stride 1, zero pad 1), computed as nine
    shifted multiply-adds in float32 (XLA:CPU runs a grouped ``conv_general_dilated``, and above all
    its gradients, an order of magnitude slower). ``w`` (C, C_out), ``b`` (C_out,): ``fc2``, in the
    dtype of ``h``. The custom VJP keeps only the inputs, so a scanned block stack stores one hidden map
    per MixFFN; the backward pass recomputes the conv and GELU from ``h`` (autodiff would store the
    pre-activation and the GELU output, and XLA:CPU re-emits the stencil into every residual write).
    """
    _, y = _conv_gelu(h, kernel, bias)
    out = y.reshape(-1, y.shape[-1]) @ w + b
    return out.reshape(*h.shape[:-1], w.shape[-1])


def _conv_gelu_linear_fwd(h: jax.Array, kernel: jax.Array, bias: jax.Array, w: jax.Array,
                          b: jax.Array) -> tuple[jax.Array, tuple]:
    return conv_gelu_linear(h, kernel, bias, w, b), (h, kernel, bias, w, b)


def _conv_gelu_linear_bwd(res: tuple, g: jax.Array) -> tuple[jax.Array, ...]:
    h, kernel, bias, w, b = res
    rows = g.size // g.shape[-1]
    z, y = _conv_gelu(h, kernel, bias)
    g2 = g.reshape(rows, g.shape[-1])
    dw = y.reshape(rows, -1).T @ g2
    db = jnp.sum(g2.astype(jnp.float32), axis=0)
    dy = (g2 @ w.T).reshape(h.shape)
    gz = dy.astype(jnp.float32) * _gelu32_grad(z)
    dh = _shift_sum3x3(gz, kernel[::-1, ::-1])  # input gradient: the same stencil, kernel flipped
    dk = _stencil_kernel_grad(h, gz)
    dbias = jnp.sum(gz, axis=(0, 1, 2))
    return (dh.astype(h.dtype), dk.astype(kernel.dtype), dbias.astype(bias.dtype), dw.astype(w.dtype),
            db.astype(b.dtype))


conv_gelu_linear.defvjp(_conv_gelu_linear_fwd, _conv_gelu_linear_bwd)


class DWConv(nnx.Module):
    """Parameters of the MixFFN's 3x3 depthwise conv with bias, pad 1 (attribute ``dwconv`` as in the release).

    They stay those of a grouped ``nnx.Conv`` (kernel (3, 3, 1, C), bias (C,)) so checkpoints map
    unchanged; the computation is part of :func:`conv_gelu_linear`.
    """

    def __init__(self, features: int, *, dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
        self.dwconv = conv(features, features, 3, 1, 1, dtype, rngs, groups=features)


class MixFFN(nnx.Module):
    """Linear(in -> hidden) -> depthwise 3x3 conv -> exact GELU -> Linear(hidden -> out), on an NHWC map."""

    def __init__(self, in_features: int, hidden_features: int, out_features: int, *,
                 dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
        self.fc1 = dense(in_features, hidden_features, dtype, rngs)
        self.dwconv = DWConv(hidden_features, dtype=dtype, rngs=rngs)
        self.fc2 = dense(hidden_features, out_features, dtype, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        dtype = self.fc2.dtype or x.dtype
        conv = self.dwconv.dwconv
        return conv_gelu_linear(apply_dense(self.fc1, x).astype(dtype), conv.kernel[...][:, :, 0, :],
                                conv.bias[...], self.fc2.kernel[...].astype(dtype),
                                self.fc2.bias[...].astype(dtype))


class MlpUpsample(nnx.Module):
    """MixFFN to ``out_features`` (hidden = out) followed by nearest up-sampling by ``factor``."""

    def __init__(self, in_features: int, out_features: int, factor: int, *,
                 dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
        self.factor = factor
        self.mlp = MixFFN(in_features, out_features, out_features, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return upsample_nearest(self.mlp(x), self.factor)


def strided_patch_conv(layer: nnx.Conv, x: jax.Array) -> jax.Array:
    """``layer`` (an r x r conv with stride r, no padding) as one matmul over non-overlapping r x r patches.

    Same result as the convolution (trailing rows/columns that do not fill a patch are dropped, as by the
    conv); XLA:CPU computes the convolution's kernel gradient inside a scanned block ~10x slower.
    """
    r = layer.kernel_size[0]
    b, h, w, c = x.shape
    ho, wo = h // r, w // r
    dtype = layer.dtype or x.dtype
    patches = x[:, :ho * r, :wo * r].reshape(b, ho, r, wo, r, c).transpose(0, 1, 3, 2, 4, 5)
    kernel = layer.kernel[...].astype(dtype).reshape(r * r * c, -1)  # (r, r, c, out): row-major (dy, dx, c)
    y = patches.reshape(b * ho * wo, r * r * c).astype(dtype) @ kernel + layer.bias[...].astype(dtype)
    return y.reshape(b, ho, wo, -1)


class Attention(nnx.Module):
    """Multi-head self-attention with spatial sequence reduction (keys/values from an R x R strided conv)."""

    def __init__(self, dim: int, num_heads: int, sr_ratio: int, *, dtype: jnp.dtype = jnp.float32,
                 rngs: nnx.Rngs):
        if dim % num_heads:
            raise ValueError(f'Attention: dim {dim} is not divisible by num_heads {num_heads}')
        self.num_heads = num_heads
        self.sr_ratio = sr_ratio
        self.q = dense(dim, dim, dtype, rngs)
        self.kv = dense(dim, 2 * dim, dtype, rngs)
        self.proj = dense(dim, dim, dtype, rngs)
        if sr_ratio > 1:
            self.sr = conv(dim, dim, sr_ratio, sr_ratio, 0, dtype, rngs)
            self.norm = layer_norm(dim, PATCH_NORM_EPS, dtype, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        b, h, w, c = x.shape
        head_dim = c // self.num_heads
        q = self.q(x.reshape(b * h * w, c)).reshape(b, h * w, self.num_heads, head_dim)
        src = self.norm(strided_patch_conv(self.sr, x)) if self.sr_ratio > 1 else x
        kv = self.kv(src.reshape(-1, c)).reshape(b, -1, 2, self.num_heads, head_dim)  # k first, then v
        out = jax.nn.dot_product_attention(q, kv[:, :, 0], kv[:, :, 1], scale=head_dim ** -0.5)
        return self.proj(out.reshape(b * h * w, c)).reshape(b, h, w, c)


class Block(nnx.Module):
    """Pre-norm Mix-Transformer block: x + Attn(LN(x)); x + MixFFN(LN(x)); with drop-path."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, sr_ratio: int, *,
                 dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
        self.norm1 = layer_norm(dim, BLOCK_NORM_EPS, dtype, rngs)
        self.attn = Attention(dim, num_heads, sr_ratio, dtype=dtype, rngs=rngs)
        self.norm2 = layer_norm(dim, BLOCK_NORM_EPS, dtype, rngs)
        self.mlp = MixFFN(dim, int(dim * mlp_ratio), dim, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, drop_rate: jax.Array | float = 0.0,
                 key: jax.Array | None = None) -> jax.Array:
        k1, k2 = (None, None) if key is None else tuple(jax.random.split(key))
        x = x + drop_path(self.attn(self.norm1(x)), drop_rate, k1)
        return x + drop_path(self.mlp(self.norm2(x)), drop_rate, k2)


def materialise_small_leaves(tree: Any, max_size: int = 1 << 15) -> Any:
    """``tree`` with its small float leaves (norm scales, biases, depthwise kernels) materialised, on CPU.

    In a scanned stack every parameter is a dynamic slice of the stacked parameters; XLA:CPU fuses
    those slices into elementwise consumers and recomputes them per output element (2-3x slower
    layer norms and stencils). The small leaves go, concatenated, through one exact identity matmul,
    whose output XLA always materialises. Elsewhere (GPU, TPU) the tree is returned unchanged.
    """
    leaves, treedef = jax.tree.flatten(tree)
    small = [i for i, leaf in enumerate(leaves)
             if jnp.issubdtype(leaf.dtype, jnp.floating) and leaf.size <= max_size]
    if not small:
        return tree
    flat = jnp.concatenate([leaves[i].reshape(-1).astype(jnp.float32) for i in small])
    rows = 8
    flat = jnp.pad(flat, (0, -flat.size % rows)).reshape(rows, -1)

    def through_dot(m: jax.Array) -> jax.Array:
        return jnp.matmul(jnp.eye(rows, dtype=m.dtype), m, precision=jax.lax.Precision.HIGHEST)

    flat = jax.lax.platform_dependent(flat, cpu=through_dot, default=lambda m: m).reshape(-1)
    out, offset = list(leaves), 0
    for i in small:
        leaf = leaves[i]
        out[i] = flat[offset:offset + leaf.size].reshape(leaf.shape).astype(leaf.dtype)
        offset += leaf.size
    return jax.tree.unflatten(treedef, out)


class BlockStack(nnx.Module):
    """``num_blocks`` identical blocks run with ``jax.lax.scan``: one compiled body whatever the depth.

    Parameters live in ``self.layers`` (one ``Block`` whose every parameter has a leading axis of size
    ``num_blocks``); ``drop_rates[i]`` is block i's drop-path probability.
    """

    def __init__(self, num_blocks: int, dim: int, num_heads: int, mlp_ratio: float, sr_ratio: int,
                 drop_rates: Sequence[float], *, dtype: jnp.dtype = jnp.float32, remat: bool = False,
                 unroll: bool = False, rngs: nnx.Rngs):
        if num_blocks < 1 or len(drop_rates) != num_blocks:
            raise ValueError(f'BlockStack: need num_blocks >= 1 and one drop rate per block, '
                             f'got {num_blocks} blocks and {len(drop_rates)} rates')
        self.num_blocks = num_blocks
        self.drop_rates = tuple(float(r) for r in drop_rates)
        self.remat = remat
        self.unroll = unroll

        @nnx.split_rngs(splits=num_blocks)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def make(layer_rngs: nnx.Rngs) -> Block:
            return Block(dim, num_heads, mlp_ratio, sr_ratio, dtype=dtype, rngs=layer_rngs)

        self.layers = make(rngs)

    def __call__(self, x: jax.Array, key: jax.Array | None = None) -> jax.Array:
        graphdef, params = nnx.split(self.layers)
        rates = jnp.asarray(self.drop_rates, jnp.float32)
        keys = None if key is None else jax.random.split(key, self.num_blocks)

        def body(carry: jax.Array, xs: tuple) -> tuple[jax.Array, None]:
            layer_params, rate, layer_key = xs
            layer_params = materialise_small_leaves(layer_params)
            return nnx.merge(graphdef, layer_params)(carry, rate, layer_key), None

        if self.remat:
            body = jax.checkpoint(body)
        if self.unroll:  # Python loop, static slices (XLA:CPU differentiates even an unrolled scan ~10x slower)
            for i in range(self.num_blocks):
                x, _ = body(x, jax.tree.map(lambda a: a[i], (params, rates, keys)))
            return x
        x, _ = jax.lax.scan(body, x, (params, rates, keys))
        return x
