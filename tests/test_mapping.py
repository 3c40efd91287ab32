"""Torch state-dict layout <-> Flax parameters: names, shapes, config inference, errors, round trips."""

import json
from pathlib import Path

import numpy as np
import pytest
from flax import nnx

from aggpose_jax.convert.mapping import (
    CheckpointMismatchError,
    check_state_dict,
    expected_torch_shapes,
    flax_to_torch,
    infer_model_config,
    torch_to_flax,
)
from aggpose_jax.convert.torch_reader import read_state_dict
from aggpose_jax.models import get_model_config
from aggpose_jax.params import bind

FIXTURES = Path(__file__).parent / "fixtures"
BACKBONE = (
    "patch_embed1.",
    "patch_embed2.",
    "patch_embed3.",
    "patch_embed4.",
    "block1.",
    "block2.",
    "block3.",
    "block4.",
    "norm1.",
    "norm2.",
    "norm3.",
    "norm4.",
)


@pytest.fixture(scope="module")
def large_layout():
    data = json.loads((FIXTURES / "aggpose_l_coco_state_dict.json").read_text())
    return {name: tuple(shape) for name, shape in data["tensors"].items()}


@pytest.fixture(scope="module")
def tiny_sd():
    return read_state_dict(FIXTURES / "upstream_tiny17.pth")


def _random_sd(config, seed=0):
    rng = np.random.default_rng(seed)
    return {n: rng.standard_normal(s).astype(np.float32) for n, s in expected_torch_shapes(config).items()}


def test_expected_shapes_equal_the_released_aggpose_l_layout(large_layout):
    expected = expected_torch_shapes(get_model_config("aggpose_l"))
    assert len(expected) == len(large_layout) == 1568
    assert sorted(set(expected) ^ set(large_layout)) == []
    assert {n: s for n, s in expected.items() if large_layout[n] != s} == {}
    assert sum(int(np.prod(s)) for s in expected.values()) == 96_751_825


def test_infer_config_from_shapes_alone(large_layout):
    assert infer_model_config(large_layout) == get_model_config("aggpose_l")
    small = expected_torch_shapes(get_model_config("aggpose_s"))
    assert infer_model_config(small) == get_model_config("aggpose_s")
    infant = dict(large_layout, **{"final_layer.fc2.weight": (21, 64), "final_layer.fc2.bias": (21,)})
    config = infer_model_config(infant, heads=(2, 4, 8, 16), image_size=(384, 288), dtype="bfloat16")
    assert (config.num_joints, config.heads, config.image_size, config.dtype) == (
        21,
        (2, 4, 8, 16),
        (384, 288),
        "bfloat16",
    )
    with pytest.raises(CheckpointMismatchError, match="patch_embed1.proj.weight"):
        infer_model_config({"head.weight": (1000, 512)})


def test_mismatches_are_reported_together(tiny_sd):
    config = get_model_config("aggpose_tiny")
    check_state_dict(tiny_sd, config)  # the fixture fits
    broken = dict(tiny_sd)
    del broken["block3.1.attn.kv.weight"]
    broken["head.weight"] = np.zeros((3, 3), np.float32)
    broken["final_layer.fc2.weight"] = np.zeros((21, 16), np.float32)
    with pytest.raises(CheckpointMismatchError) as info:
        check_state_dict(broken, config)
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert "missing (1)" in message and "block3.1.attn.kv.weight" in message
    assert "unexpected (1)" in message and "head.weight" in message
    assert "mis-shaped (1)" in message and "final_layer.fc2.weight: got (21, 16), expected (17, 16)" in message
    with pytest.raises(CheckpointMismatchError, match="mis-shaped"):
        torch_to_flax(broken, config)


def test_long_lists_are_grouped_and_truncated(large_layout):
    with pytest.raises(CheckpointMismatchError) as info:
        check_state_dict(large_layout, get_model_config("aggpose_s"))  # L tensors into an S model
    message = str(info.value)
    assert "unexpected (720)" in message and "block3.{6-39}.* (680 tensors)" in message
    assert "block2.{4-5}.* (40 tensors)" in message and len(message.splitlines()) < 10
    extra = dict(large_layout, **{f"extra_{i:02d}.weight": (1,) for i in range(30)})
    with pytest.raises(CheckpointMismatchError) as info:
        check_state_dict(extra, get_model_config("aggpose_l"))
    assert "unexpected (30)" in str(info.value) and "... and 10 more" in str(info.value)


def test_round_trip_on_the_fixture(tiny_sd):
    config = get_model_config("aggpose_tiny")
    params = torch_to_flax(tiny_sd, config)
    assert params["block2"]["layers"]["attn"]["kv"]["kernel"].shape == (2, 32, 64)  # stacked, (in, out)
    assert params["patch_embed1"]["proj"]["kernel"].shape == (7, 7, 3, 16)
    assert params["merge_12_1"]["dwconv"]["dwconv"]["kernel"].shape == (3, 3, 1, 16)
    np.testing.assert_array_equal(
        params["block2"]["layers"]["attn"]["kv"]["kernel"][1], tiny_sd["block2.1.attn.kv.weight"].T
    )
    back = flax_to_torch(params, config)
    assert back.keys() == tiny_sd.keys()
    for name, value in tiny_sd.items():
        assert back[name].dtype == np.float32
        np.testing.assert_array_equal(back[name], value, err_msg=name)


def test_partial_update_of_backbone_weights(tiny_sd):
    """What the MiT import does: torch names of the backbone replace those tensors, the rest stay."""
    config = get_model_config("aggpose_tiny")
    before = flax_to_torch(torch_to_flax(_random_sd(config, 1), config), config)
    backbone = {n: v for n, v in tiny_sd.items() if n.startswith(BACKBONE)}
    after = flax_to_torch(torch_to_flax({**before, **backbone}, config), config)
    for name in tiny_sd:
        np.testing.assert_array_equal(after[name], tiny_sd[name] if name in backbone else before[name], err_msg=name)
    with pytest.raises(CheckpointMismatchError, match="missing"):
        check_state_dict(backbone, config)
    with pytest.raises(CheckpointMismatchError, match="mis-shaped"):
        check_state_dict({**before, "norm1.weight": np.zeros(3, np.float32)}, config)


def test_bound_model_reproduces_the_state_dict(tiny_sd):
    config = get_model_config("aggpose_tiny")
    model = bind(config, torch_to_flax(tiny_sd, config))
    back = flax_to_torch(nnx.state(model, nnx.Param), config)
    for name, value in tiny_sd.items():
        np.testing.assert_array_equal(back[name], value, err_msg=name)
