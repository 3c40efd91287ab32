"""AggPose model: shapes, parameter counts, dtype policy, drop-path, configuration checks."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from aggpose_jax.models import VARIANTS, AggPose, ModelConfig, get_model_config
from aggpose_jax.models.aggpose import block_stacks, drop_path_rates
from aggpose_jax.models.layers import BlockStack, OverlapPatchEmbed
from aggpose_jax.params import abstract_params, bind, count_params


def random_params(config: ModelConfig, seed: int) -> dict:
    """Well-scaled random parameters (unit-gain kernels, LN scale ~1) so every branch visibly matters.

    Built with numpy on the abstract parameter tree: much faster on CPU than the model's initialisers.
    """
    rng = np.random.default_rng(seed)

    def init(path, leaf):
        names = [getattr(k, "key", k) for k in path]
        shape = leaf.shape[1:] if "layers" in names else leaf.shape  # one block of a scanned stack
        if names[-1] == "scale":
            value = 1 + 0.1 * rng.standard_normal(leaf.shape)
        elif names[-1] == "bias":
            value = 0.1 * rng.standard_normal(leaf.shape)
        else:
            value = rng.standard_normal(leaf.shape) / np.sqrt(np.prod(shape[:-1]))
        return value.astype(np.float32)

    return jax.tree_util.tree_map_with_path(init, abstract_params(config))


def _param_count(config: ModelConfig) -> int:
    return count_params(abstract_params(config))


def _images(shape=(2, 64, 32, 3), seed=0):
    return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


@nnx.jit(static_argnums=2)
def _forward(model, images, deterministic, key=None):
    return model(images, deterministic=deterministic, rngs=key)


@pytest.fixture(scope="module")
def tiny():
    config = get_model_config("aggpose_tiny")
    return bind(config, random_params(config, 0))


def test_initialisers_follow_the_release():
    stack = BlockStack(2, 32, 2, 4.0, 4, (0.0, 0.05), rngs=nnx.Rngs(0))
    layers = stack.layers
    q = np.asarray(layers.attn.q.kernel[...])
    assert q.shape == (2, 32, 32) and 0.018 < q.std() < 0.022 and abs(q.mean()) < 0.002
    assert not np.allclose(q[0], q[1])  # each block has its own draw
    np.testing.assert_array_equal(layers.attn.q.bias[...], 0)
    np.testing.assert_array_equal(layers.norm1.scale[...], 1)
    dw = np.asarray(layers.mlp.dwconv.dwconv.kernel[...])
    assert dw.shape == (2, 3, 3, 1, 128) and abs(dw.std() - np.sqrt(2 / 9)) < 0.05
    embed = OverlapPatchEmbed(3, 16, 7, 4, rngs=nnx.Rngs(0))
    assert abs(float(embed.proj.kernel[...].std()) - np.sqrt(2 / (7 * 7 * 16))) < 0.01
    assert embed.norm.epsilon == 1e-5 and layers.norm1.epsilon == 1e-6 and layers.attn.norm.epsilon == 1e-5


def test_model_from_params_rejects_params_of_another_model(tiny):
    params = nnx.to_pure_dict(nnx.state(tiny, nnx.Param))
    params["final_layer"]["fc2"]["bias"] = np.zeros(21, np.float32)
    with pytest.raises(ValueError, match="final_layer/fc2/bias"):
        bind(tiny.config, params)


def test_parameter_counts_of_the_released_variants():
    assert _param_count(get_model_config("aggpose_l")) == 96_751_825
    s_count = _param_count(get_model_config("aggpose_s"))
    assert s_count == 39_505_105
    assert round(s_count / 1e6, 2) == 39.51
    # joints only change the last layer: 64 * J + J parameters
    assert (
        _param_count(get_model_config("aggpose_l", num_joints=21)) - _param_count(get_model_config("aggpose_l"))
    ) == 4 * 65


def test_output_shape_dtype_and_non_square_inputs(tiny):
    out = _forward(tiny, _images(), True)  # non-square input
    assert out.shape == (2, 16, 8, 17) and out.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(out))) and float(jnp.std(out)) > 1e-3


def test_scanned_stacks_store_one_leading_axis_per_block(tiny):
    params = nnx.state(tiny, nnx.Param)
    config = tiny.config
    for name, stream, _, num in block_stacks(config):
        kernel = params[name]["layers"]["attn"]["q"]["kernel"]
        assert kernel.shape == (num, config.dims[stream - 1], config.dims[stream - 1])
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params))


def test_rejects_images_of_the_wrong_shape(tiny):
    with pytest.raises(ValueError, match="multiples of 32"):
        tiny(jnp.zeros((1, 60, 64, 3)))
    with pytest.raises(ValueError, match=r"\(B, H, W, 3\)"):
        tiny(jnp.zeros((1, 3, 64, 64)))


def test_bfloat16_compute_keeps_float32_params_and_output(tiny):
    config = dataclasses.replace(tiny.config, dtype="bfloat16")
    model = bind(config, nnx.state(tiny, nnx.Param))  # same weights as the float32 model
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)))
    images = _images()
    out16, out32 = _forward(model, images, True), _forward(tiny, images, True)
    assert out16.dtype == jnp.float32 and out16.shape == out32.shape
    rel = float(jnp.linalg.norm(out16 - out32) / jnp.linalg.norm(out32))
    assert rel < 0.05, rel
    assert not np.array_equal(np.asarray(out16), np.asarray(out32))  # really computed in bfloat16


def test_drop_path_only_when_not_deterministic(tiny):
    images = _images()
    ref = _forward(tiny, images, True)
    np.testing.assert_array_equal(_forward(tiny, images, True), ref)
    key_a, key_b = jax.random.key(1), jax.random.key(2)
    out_a = _forward(tiny, images, False, key_a)
    assert not np.allclose(out_a, ref, rtol=1e-4, atol=0)
    np.testing.assert_array_equal(_forward(tiny, images, False, key_a), out_a)  # same key, same masks
    assert not np.allclose(_forward(tiny, images, False, key_b), out_a, rtol=1e-4, atol=0)
    # without an explicit key the model's own dropout stream advances between calls
    own_1, own_2 = _forward(tiny, images, False), _forward(tiny, images, False)
    assert not np.array_equal(own_1, own_2)


def test_drop_path_schedule_follows_the_release():
    rates = drop_path_rates(get_model_config("aggpose_l"))
    ramp = np.linspace(0.0, 0.1, 3 + 6 + 40 + 3)  # over the first stage of every stream
    np.testing.assert_allclose(rates["block1"], ramp[0:3])
    np.testing.assert_allclose(rates["block1_3"], ramp[0:3])
    np.testing.assert_allclose(rates["block2"], ramp[3:9])
    np.testing.assert_allclose(rates["block2_2"], ramp[3:6])
    np.testing.assert_allclose(rates["block3"], ramp[9:49])
    np.testing.assert_allclose(rates["block3_1"], ramp[9:12])
    np.testing.assert_allclose(rates["block4"], ramp[49:52])
    assert rates["block4"][-1] == pytest.approx(0.1)


def test_scanned_stack_matches_blocks_run_one_by_one_and_passes_gradients():
    stack = BlockStack(3, 32, 2, 4.0, 4, (0.0, 0.0, 0.0), rngs=nnx.Rngs(0))
    x = _images((2, 16, 16, 32))
    graphdef, params = nnx.split(stack.layers)

    @jax.jit
    def one_by_one(params, x):
        for i in range(3):
            x = nnx.merge(graphdef, jax.tree.map(lambda a, i=i: a[i], params))(x)
        return x

    np.testing.assert_allclose(stack(x), one_by_one(params, x), rtol=1e-5, atol=1e-5)

    stack_def, stack_params, rest = nnx.split(stack, nnx.Param, ...)
    grads = jax.jit(jax.grad(lambda p: jnp.sum(nnx.merge(stack_def, p, rest)(x) ** 2)))(stack_params)
    for path, grad in nnx.to_flat_state(grads):
        per_block = np.abs(np.asarray(grad.get_value())).reshape(3, -1).max(axis=1)
        assert np.all(per_block > 0), path  # every block's copy of every parameter is used


def test_large_model_lowers_one_loop_per_block_stack():
    """The 40-block stream compiles as a loop body, not 40 copies (keeps the L train step compile short)."""
    config = get_model_config("aggpose_l")
    graphdef, state = nnx.split(nnx.eval_shape(lambda: AggPose(config, rngs=nnx.Rngs(0))))
    images = jax.ShapeDtypeStruct((1, 256, 192, 3), jnp.float32)
    text = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x)).lower(state, images).as_text()
    assert text.count("stablehlo.while") == len(block_stacks(config)) == 10


def test_remat_gives_the_same_gradients():
    x = _images((2, 16, 16, 32))
    grads = []
    for remat in (False, True):
        stack = BlockStack(2, 32, 2, 4.0, 4, (0.0, 0.0), remat=remat, rngs=nnx.Rngs(0))
        graphdef, params, rest = nnx.split(stack, nnx.Param, ...)

        def loss(p, graphdef=graphdef, rest=rest):
            return jnp.sum(nnx.merge(graphdef, p, rest)(x) ** 2)

        grads.append(jax.jit(jax.grad(loss))(params))
    for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)  # remat may reorder float32 sums


def test_drop_path_in_a_stack():
    x = _images((8, 8, 8, 32))
    stack = BlockStack(2, 32, 2, 4.0, 4, (0.0, 0.0), rngs=nnx.Rngs(0))
    np.testing.assert_array_equal(stack(x, jax.random.key(0)), stack(x))  # zero rates: no effect
    dropping = BlockStack(2, 32, 2, 4.0, 4, (0.5, 0.5), rngs=nnx.Rngs(0))
    assert not np.allclose(dropping(x, jax.random.key(0)), dropping(x))
    np.testing.assert_array_equal(dropping(x, jax.random.key(0)), dropping(x, jax.random.key(0)))
    np.testing.assert_allclose(dropping(x), stack(x), rtol=1e-6)  # rates only matter with a key


def test_variants_and_overrides():
    assert set(VARIANTS) >= {"aggpose_l", "aggpose_s", "aggpose_tiny"}
    large = get_model_config("aggpose_l")
    assert large.dims == (64, 128, 320, 512) and large.heads == (1, 2, 5, 8) and large.sr_ratios == (8, 4, 2, 1)
    assert large.stage_depths == ((3, 3, 3, 3), (6, 3, 3), (40, 3), (3,))
    assert get_model_config("aggpose_s").stage_depths == ((3, 3, 3, 3), (4, 3, 3), (6, 3), (3,))
    infant = get_model_config("aggpose_l", num_joints=21, dtype="bfloat16")
    assert infant.num_joints == 21 and infant.compute_dtype == jnp.bfloat16 and infant.heatmap_size == (64, 48)
    with pytest.raises(ValueError, match="unknown variant"):
        get_model_config("aggpose_xl")


def test_config_round_trips_through_json():
    config = get_model_config("aggpose_s", num_joints=21, drop_path_rate=0.2, remat=True)
    data = json.loads(json.dumps(config.to_dict()))
    assert ModelConfig.from_dict(data) == config
    assert data["stage_depths"] == [[3, 3, 3, 3], [4, 3, 3], [6, 3], [3]]
    with pytest.raises(ValueError, match="unknown field"):
        ModelConfig.from_dict({**data, "width": 3})


@pytest.mark.parametrize(
    "field, value",
    [
        ("dims", (64, 128, 320)),
        ("dims", (64, 128.5, 320, 512)),
        ("heads", (3, 2, 5, 8)),
        ("sr_ratios", (8, 4, 0, 1)),
        ("image_size", (250, 192)),
        ("stage_depths", ((3, 3, 3), (6, 3, 3), (40, 3), (3,))),
        ("stage_depths", ((3, 3, 3, 3), (6, 0, 3), (40, 3), (3,))),
        ("stage_depths", None),
        ("mlp_ratio", "four"),
        ("num_joints", 0),
        ("drop_path_rate", 1.5),
        ("dtype", "float16"),
    ],
)
def test_config_validation_names_the_field(field, value):
    with pytest.raises(ValueError, match=rf"ModelConfig\.{field}:"):
        get_model_config("aggpose_l", **{field: value})
