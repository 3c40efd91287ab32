"""The converted upstream fixture model reproduces the original PyTorch code's output."""

import json
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from aggpose_jax.convert.mapping import flax_to_torch, infer_model_config, torch_to_flax
from aggpose_jax.convert.torch_reader import read_state_dict
from aggpose_jax.models import get_model_config
from aggpose_jax.params import bind

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def state_dict():
    return read_state_dict(FIXTURES / "upstream_tiny17.pth")


def test_fixture_config_is_the_tiny_variant(state_dict):
    meta = json.loads((FIXTURES / "upstream_tiny17.json").read_text())
    tiny = get_model_config("aggpose_tiny")
    assert list(tiny.dims) == meta["dims"] and list(tiny.heads) == meta["heads"]
    assert list(tiny.sr_ratios) == meta["sr_ratios"] and tiny.mlp_ratio == meta["mlp_ratio"]
    assert [list(r) for r in tiny.stage_depths] == meta["stage_depths"]
    assert tiny.num_joints == meta["J"] and list(tiny.image_size) == meta["image_size_hw"]
    assert infer_model_config(state_dict) == tiny


def test_converted_fixture_reproduces_upstream_output(state_dict):
    config = infer_model_config(state_dict)
    model = bind(config, torch_to_flax(state_dict, config))
    io = np.load(FIXTURES / "upstream_tiny17_io.npz")
    x = np.transpose(io["x_nchw"], (0, 2, 3, 1))
    y = np.asarray(nnx.jit(lambda m, images: m(images))(model, jax.numpy.asarray(x)))
    y_nchw = np.transpose(y, (0, 3, 1, 2))
    reference = io["y_nchw"]
    assert y_nchw.shape == reference.shape == (2, 17, 64, 48)
    rel = np.linalg.norm(y_nchw - reference) / np.linalg.norm(reference)
    assert rel <= 1e-5, rel
    # and back: the model's parameters are exactly the checkpoint's tensors
    back = flax_to_torch(nnx.state(model, nnx.Param), config)
    assert back.keys() == state_dict.keys()
    for name, value in state_dict.items():
        np.testing.assert_array_equal(back[name], value, err_msg=name)
