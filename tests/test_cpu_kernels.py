"""The XLA:CPU kernels (models/cpu_kernels.py) against the plain XLA operations they replace: values and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from aggpose_jax.models.cpu_kernels import conv_gelu_linear, strided_patch_conv
from aggpose_jax.models.layers import MixFFN


def _reference_conv_gelu_linear(h, kernel, bias, w, b):
    """The release's formulation: grouped conv (torch Conv2d groups=C), exact erf GELU, then Linear."""
    c = h.shape[-1]
    z = jax.lax.conv_general_dilated(
        h,
        kernel[:, :, None, :],
        (1, 1),
        ((1, 1), (1, 1)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=c,
        precision=jax.lax.Precision.HIGHEST,
    )
    y = jax.nn.gelu(z + bias, approximate=False)
    return jnp.einsum("nhwc,cd->nhwd", y, w, precision=jax.lax.Precision.HIGHEST) + b


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b) / np.linalg.norm(b)


@pytest.mark.parametrize("shape", [(2, 5, 7, 6), (1, 1, 1, 3), (3, 4, 2, 8)])
def test_conv_gelu_linear_matches_the_grouped_conv_with_gradients(shape):
    rng = np.random.default_rng(0)
    c = shape[-1]
    args = [jnp.asarray(rng.standard_normal(s), jnp.float32) for s in (shape, (3, 3, c), (c,), (c, 5), (5,))]
    np.testing.assert_allclose(conv_gelu_linear(*args), _reference_conv_gelu_linear(*args), rtol=1e-5, atol=1e-5)
    cot = jnp.asarray(rng.standard_normal(shape[:-1] + (5,)), jnp.float32)

    def loss(fn):
        return lambda *a: jnp.sum(fn(*a) * cot)

    ours = jax.jit(jax.grad(loss(conv_gelu_linear), argnums=range(5)))(*args)
    ref = jax.jit(jax.grad(loss(_reference_conv_gelu_linear), argnums=range(5)))(*args)
    for name, a, b in zip(("h", "kernel", "bias", "w", "b"), ours, ref):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        assert _rel(a, b) < 1e-5, (name, _rel(a, b))


def test_conv_gelu_linear_in_bfloat16_keeps_input_dtypes_and_stays_close():
    rng = np.random.default_rng(1)
    args = [jnp.asarray(rng.standard_normal(s), jnp.float32) for s in ((2, 6, 4, 8), (3, 3, 8), (8,), (8, 4), (4,))]
    low = [args[0].astype(jnp.bfloat16), args[1], args[2], args[3].astype(jnp.bfloat16), args[4].astype(jnp.bfloat16)]
    out = conv_gelu_linear(*low)
    assert out.dtype == jnp.bfloat16
    assert _rel(out.astype(jnp.float32), _reference_conv_gelu_linear(*args)) < 2e-2
    grads = jax.grad(lambda *a: jnp.sum(conv_gelu_linear(*a).astype(jnp.float32)), argnums=range(5))(*low)
    assert [g.dtype for g in grads] == [a.dtype for a in low]


def test_gelu_is_the_erf_form_far_into_both_tails():
    x = jnp.asarray([-12.0, -5.0, -1.0, 0.0, 0.5, 3.0, 12.0], jnp.float32).reshape(1, 1, 7, 1)
    # identity conv (centre tap 1), identity linear: isolates the GELU
    kernel = jnp.zeros((3, 3, 1)).at[1, 1, 0].set(1.0)
    out = conv_gelu_linear(x, kernel, jnp.zeros(1), jnp.ones((1, 1)), jnp.zeros(1))
    exact = np.asarray(jax.nn.gelu(x, approximate=False), np.float64)
    np.testing.assert_allclose(out, exact, atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("kernels", ["xla", "cpu"])
def test_mixffn_module_matches_the_reference_layer(kernels):
    ffn = MixFFN(4, 12, 6, kernels=kernels, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (2, 6, 5, 4))
    conv = ffn.dwconv.dwconv
    h = x @ ffn.fc1.kernel[...] + ffn.fc1.bias[...]
    want = _reference_conv_gelu_linear(
        h, conv.kernel[...][:, :, 0, :], conv.bias[...], ffn.fc2.kernel[...], ffn.fc2.bias[...]
    )
    assert _rel(ffn(x), want) < 1e-5


@pytest.mark.parametrize("size,ratio", [((8, 6), 2), ((9, 7), 2), ((16, 12), 4), ((8, 8), 8)])
def test_strided_patch_conv_matches_the_convolution_with_gradients(size, ratio):
    conv = nnx.Conv(
        5,
        7,
        kernel_size=(ratio, ratio),
        strides=(ratio, ratio),
        padding="VALID",
        bias_init=nnx.initializers.normal(1.0),
        rngs=nnx.Rngs(0),
    )
    x = jax.random.normal(jax.random.key(2), (2, *size, 5))
    graphdef, params = nnx.split(conv)
    np.testing.assert_allclose(strided_patch_conv(conv, x), conv(x), rtol=1e-5, atol=1e-5)

    def grads(fn):
        return jax.grad(lambda p, x: jnp.sum(jnp.sin(fn(nnx.merge(graphdef, p), x))), argnums=(0, 1))(params, x)

    ours, ref = grads(strided_patch_conv), grads(lambda layer, x: layer(x))
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref)):
        assert _rel(a, b) < 1e-5


def test_materialise_small_leaves_is_exact_and_passes_gradients():
    from aggpose_jax.models.cpu_kernels import materialise_small_leaves

    rng = np.random.default_rng(3)
    tree = {
        "scale": jnp.asarray(rng.standard_normal(7), jnp.float32),
        "kernel": jnp.asarray(rng.standard_normal((3, 3, 5)), jnp.float32),
        "big": jnp.asarray(rng.standard_normal((300, 200)), jnp.float32),  # above max_size: untouched
        "half": jnp.asarray(rng.standard_normal(3), jnp.bfloat16),
        "count": jnp.arange(4),
    }
    out = jax.jit(materialise_small_leaves, static_argnums=1)(tree, 1000)
    for name in tree:
        assert out[name].dtype == tree[name].dtype and out[name].shape == tree[name].shape
        np.testing.assert_array_equal(np.asarray(out[name], np.float32), np.asarray(tree[name], np.float32))
    weights = {k: v for k, v in tree.items() if k != "count"}
    grads = jax.grad(
        lambda t: sum(jnp.sum(jnp.cos(v.astype(jnp.float32))) for v in materialise_small_leaves(t, 1000).values())
    )(weights)
    for name, value in weights.items():
        np.testing.assert_allclose(
            np.asarray(grads[name], np.float32),
            -np.sin(np.asarray(value, np.float32)),
            rtol=1e-2 if name == "half" else 1e-6,
        )


def test_both_depthwise_kernel_gradient_forms_agree():
    """The batched form (GPU/TPU branch of ``platform_dependent``) against the per-sample CPU form."""
    from aggpose_jax.models.cpu_kernels import _kernel_grad_batched, _kernel_grad_per_sample

    rng = np.random.default_rng(4)
    h = jnp.asarray(rng.standard_normal((3, 5, 4, 6)), jnp.float32)
    gz = jnp.asarray(rng.standard_normal((3, 5, 4, 6)), jnp.float32)
    batched, per_sample = jax.jit(_kernel_grad_batched)(h, gz), jax.jit(_kernel_grad_per_sample)(h, gz)
    assert batched.shape == (3, 3, 6)
    # dk[a, b] pairs h shifted by (a - 1, b - 1) with gz: check one tap against numpy directly
    hp = np.pad(np.asarray(h), ((0, 0), (1, 1), (1, 1), (0, 0)))
    np.testing.assert_allclose(batched[0, 2], (hp[:, 0:5, 2:6] * np.asarray(gz)).sum(axis=(0, 1, 2)), rtol=1e-5)
    np.testing.assert_allclose(per_sample, batched, rtol=1e-5, atol=1e-6)


def test_xla_and_cpu_kernel_forms_agree_on_the_tiny_model():
    """The whole network under kernels='xla' and kernels='cpu': same parameter tree, output and gradients."""
    import dataclasses

    from aggpose_jax.models.aggpose import get_model_config
    from aggpose_jax.params import abstract_params, merge, split_model

    base = get_model_config("aggpose_tiny", image_size=(32, 32), drop_path_rate=0.0)
    forms = {k: dataclasses.replace(base, kernels=k) for k in ("xla", "cpu")}
    assert jax.tree.map(lambda s: (s.shape, s.dtype), abstract_params(forms["xla"])) == jax.tree.map(
        lambda s: (s.shape, s.dtype), abstract_params(forms["cpu"])
    )
    rng = np.random.default_rng(5)
    params = jax.tree.map(lambda s: jnp.asarray(rng.standard_normal(s.shape) * 0.3, jnp.float32), abstract_params(base))
    images = jnp.asarray(rng.standard_normal((2, 32, 32, 3)), jnp.float32)
    cotangent = jnp.asarray(rng.standard_normal((2, 8, 8, base.num_joints)), jnp.float32)
    results = {}
    for name, config in forms.items():
        graphdef, _, other = split_model(config)

        def loss(p, x, graphdef=graphdef, other=other):
            out = merge(graphdef, p, other)(x)
            return jnp.sum(out * cotangent), out

        (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(params, images)
        results[name] = (out, grads)
    (out_x, grads_x), (out_c, grads_c) = results["xla"], results["cpu"]
    assert _rel(out_c, out_x) < 1e-5
    # Per leaf, relative to the leaf's norm; leaves whose gradient is a near-cancelling sum (q biases:
    # ~1e-4 of the whole) are judged against 1e-3 of the whole gradient's norm instead.
    total = np.sqrt(sum(np.sum(np.square(np.asarray(g, np.float64))) for g in jax.tree.leaves(grads_x)))
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(grads_c), jax.tree.leaves(grads_x)):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        err = np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-3 * total)
        assert err < 1e-4, (jax.tree_util.keystr(path), err)


@pytest.mark.parametrize("platform", ["tpu", "cpu"])
def test_kernels_auto_resolve_for_the_platform_the_model_is_built_for(monkeypatch, platform):
    """kernels='auto' is resolved once, when the model is built, for its target platform: a model built for
    a TPU never takes the CPU forms, though this host's backend is the CPU; built for the CPU it does. The
    forward (where the forms are chosen; the backward differentiates what it chose) is traced with every CPU
    form behind a tripwire."""
    from aggpose_jax.models import cpu_kernels
    from aggpose_jax.models.aggpose import AggPose, get_model_config

    taken = []

    def tripwire(name):
        real = getattr(cpu_kernels, name)

        def wrapped(*args, **kwargs):
            taken.append(name)
            return real(*args, **kwargs)

        return wrapped

    for name in ("mix_ffn", "dense_2d", "strided_patch_conv", "materialise_small_leaves"):
        monkeypatch.setattr(cpu_kernels, name, tripwire(name))
    assert jax.default_backend() == "cpu"
    config = get_model_config("aggpose_tiny", image_size=(32, 32), kernels="auto")
    abstract = nnx.eval_shape(lambda: AggPose(config, rngs=nnx.Rngs(0), platform=platform))
    graphdef, params, rest = nnx.split(abstract, nnx.Param, ...)
    expected = "cpu" if platform == "cpu" else "xla"
    assert abstract.kernels == expected
    layers = [m for _, m in nnx.iter_graph(abstract) if hasattr(m, "cpu_forms")]
    assert layers and {m.kernels for m in layers} == {expected}
    assert {m.cpu_forms for m in layers} == {platform == "cpu"}

    def forward(p, x):
        return nnx.merge(graphdef, p, rest)(x)

    jax.eval_shape(forward, params, jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32))
    if platform == "cpu":
        assert {"mix_ffn", "dense_2d", "strided_patch_conv", "materialise_small_leaves"} <= set(taken)
    else:
        assert taken == []


def test_layers_take_only_a_resolved_kernels_value():
    with pytest.raises(ValueError, match="a layer takes 'xla' or 'cpu'"):
        MixFFN(4, 12, 6, kernels="auto", rngs=nnx.Rngs(0))
