"""XLA:CPU forms of AggPose's layers: same numbers and parameters, faster on a CPU backend.

XLA:CPU runs grouped convolutions, 4-D dense layers and strided patch convolutions (and above all their
gradients) many times slower than the equivalent matrix products and shifted sums. The layers in
``aggpose_jax.models.layers`` call these forms when ``ModelConfig.kernels`` selects them (``auto``: when the
model is built for the CPU platform, :func:`resolve`). On GPU and TPU the plain forms are the fast ones.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

KERNEL_CHOICES = ("auto", "xla", "cpu")


def resolve(kernels: str, platform: str) -> str:
    """'xla' or 'cpu': the forms ``kernels`` ('auto', 'xla' or 'cpu') selects on ``platform`` (a JAX backend)."""
    if kernels not in KERNEL_CHOICES:
        raise ValueError(f"kernels: must be one of {list(KERNEL_CHOICES)}, got {kernels!r}")
    if kernels == "auto":
        return "cpu" if platform == "cpu" else "xla"
    return kernels


def uses_cpu_forms(kernels: str) -> bool:
    """Whether a layer's ``kernels`` (already resolved: 'xla' or 'cpu') selects the CPU forms. Layers never see
    'auto': the model resolves it once, for its target platform, when it is built (:func:`resolve`)."""
    if kernels not in ("xla", "cpu"):
        raise ValueError(
            f"kernels: a layer takes 'xla' or 'cpu' (resolve 'auto' for the target platform with "
            f"cpu_kernels.resolve), got {kernels!r}"
        )
    return kernels == "cpu"


def dense_2d(layer: nnx.Linear, x: jax.Array) -> jax.Array:
    """``layer`` on the last axis of ``x`` through a 2-D (rows, features) matrix product."""
    y = layer(x.reshape(-1, x.shape[-1]))
    return y.reshape(*x.shape[:-1], y.shape[-1])


def strided_patch_conv(layer: nnx.Conv, x: jax.Array) -> jax.Array:
    """``layer`` (an r x r conv with stride r, no padding) as one matrix product over r x r patches.

    Rows/columns that do not fill a patch are dropped, as by the convolution.
    """
    r = layer.kernel_size[0]
    b, h, w, c = x.shape
    ho, wo = h // r, w // r
    dtype = layer.dtype or x.dtype
    patches = x[:, : ho * r, : wo * r].reshape(b, ho, r, wo, r, c).transpose(0, 1, 3, 2, 4, 5)
    kernel = layer.kernel[...].astype(dtype).reshape(r * r * c, -1)  # (r, r, c, out): row-major (dy, dx, c)
    y = patches.reshape(b * ho * wo, r * r * c).astype(dtype) @ kernel + layer.bias[...].astype(dtype)
    return y.reshape(b, ho, wo, -1)


def _pad1(x: jax.Array) -> jax.Array:
    return jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))


def _shift_sum3x3(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """sum_{a,b} pad(x, 1)[:, i+a, j+b, c] * kernel[a, b, c], in float32."""
    h, w = x.shape[1], x.shape[2]
    xp = _pad1(x).astype(jnp.float32)
    k = kernel.astype(jnp.float32)
    return sum(xp[:, a : a + h, b : b + w, :] * k[a, b] for a in range(3) for b in range(3))


def _normal_cdf(x32: jax.Array) -> jax.Array:
    return 0.5 * (1.0 + jax.lax.erf(x32 * (1.0 / math.sqrt(2.0))))


def _gelu32(z: jax.Array) -> jax.Array:
    """Exact GELU, z * Phi(z), float32 in and out."""
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
    return jnp.stack(
        [
            jnp.stack([jnp.sum(hp[:, a : a + hh, b : b + ww, :] * gz, axis=(0, 1, 2)) for b in range(3)])
            for a in range(3)
        ]
    )


def _kernel_grad_per_sample(h: jax.Array, gz: jax.Array) -> jax.Array:
    """:func:`_kernel_grad_batched` accumulated one sample at a time.

    The batched form materialises nine shifted copies of the whole batch; one sample's copies stay in
    cache and their buffer is reused (4x faster on 2 cores).
    """

    def add_sample(n: jax.Array, acc: jax.Array) -> jax.Array:
        one = lambda a: jax.lax.dynamic_slice_in_dim(a, n, 1)  # noqa: E731
        return acc + _kernel_grad_batched(one(h), one(gz))

    return jax.lax.fori_loop(0, h.shape[0], add_sample, jnp.zeros((3, 3, h.shape[-1]), jnp.float32))


def _stencil_kernel_grad(h: jax.Array, gz: jax.Array) -> jax.Array:
    """Kernel gradient of the depthwise stencil: per sample on the CPU platform, batched elsewhere."""
    return jax.lax.platform_dependent(h, gz, cpu=_kernel_grad_per_sample, default=_kernel_grad_batched)


@jax.custom_vjp
def conv_gelu_linear(h: jax.Array, kernel: jax.Array, bias: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
    """The MixFFN after ``fc1``: ``GELU(depthwise3x3(h) + bias) @ w + b`` for an NHWC map ``h``.

    ``kernel`` (3, 3, C), ``bias`` (C,): the depthwise conv (stride 1, zero pad 1) as nine shifted
    multiply-adds in float32. ``w`` (C, C_out), ``b`` (C_out,): ``fc2``, in the dtype of ``h``. The VJP
    keeps only the inputs (a scanned stack stores one hidden map per MixFFN) and recomputes the conv and
    GELU from ``h``.
    """
    _, y = _conv_gelu(h, kernel, bias)
    out = y.reshape(-1, y.shape[-1]) @ w + b
    return out.reshape(*h.shape[:-1], w.shape[-1])


def _conv_gelu_linear_fwd(h: jax.Array, kernel: jax.Array, bias: jax.Array, w: jax.Array, b: jax.Array) -> tuple:
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
    return (
        dh.astype(h.dtype),
        dk.astype(kernel.dtype),
        dbias.astype(bias.dtype),
        dw.astype(w.dtype),
        db.astype(b.dtype),
    )


conv_gelu_linear.defvjp(_conv_gelu_linear_fwd, _conv_gelu_linear_bwd)


def mix_ffn(fc1: nnx.Linear, dwconv: nnx.Conv, fc2: nnx.Linear, x: jax.Array) -> jax.Array:
    """fc1 -> depthwise 3x3 conv -> exact GELU -> fc2 with a 2-D fc1 and :func:`conv_gelu_linear`."""
    dtype = fc2.dtype or x.dtype
    return conv_gelu_linear(
        dense_2d(fc1, x).astype(dtype),
        dwconv.kernel[...][:, :, 0, :],
        dwconv.bias[...],
        fc2.kernel[...].astype(dtype),
        fc2.bias[...].astype(dtype),
    )


def materialise_small_leaves(tree: Any, max_size: int = 1 << 15) -> Any:
    """``tree`` with its small float leaves (norm scales, biases, depthwise kernels) materialised.

    In a scanned stack every parameter is a dynamic slice of the stacked parameters; XLA:CPU fuses
    those slices into elementwise consumers and recomputes them per output element (2-3x slower layer
    norms and stencils). The small leaves go, concatenated, through one exact identity matrix product,
    whose output XLA always materialises. On other platforms the values pass through unchanged.
    """
    leaves, treedef = jax.tree.flatten(tree)
    small = [i for i, leaf in enumerate(leaves) if jnp.issubdtype(leaf.dtype, jnp.floating) and leaf.size <= max_size]
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
        out[i] = flat[offset : offset + leaf.size].reshape(leaf.shape).astype(leaf.dtype)
        offset += leaf.size
    return jax.tree.unflatten(treedef, out)
