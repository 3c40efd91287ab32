"""aggpose_jax.load / PoseModel.heatmaps against the upstream output; model checkpoint save/load and errors."""

import dataclasses
import json
import os
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx
from torch_writer import write_torch_checkpoint

import aggpose_jax
from aggpose_jax import inference
from aggpose_jax.convert import convert_checkpoint, load_torch_checkpoint
from aggpose_jax.convert.torch_reader import read_state_dict
from aggpose_jax.heatmaps import jitted
from aggpose_jax.model_dir import CheckpointError, load_model, save_model
from aggpose_jax.models.aggpose import get_model_config
from aggpose_jax.params import bind
from aggpose_jax.pose.keypoints import get_keypoint_set

FIXTURES = Path(__file__).resolve().parent / "fixtures"
FIXTURE = FIXTURES / "upstream_tiny17.pth"
TINY = get_model_config("aggpose_tiny")


@pytest.fixture(scope="module")
def io():
    data = np.load(FIXTURES / "upstream_tiny17_io.npz")
    return data["x_nchw"].transpose(0, 2, 3, 1), data["y_nchw"]


@pytest.fixture(scope="module")
def fixture_params():
    return load_torch_checkpoint(FIXTURE)[1]


def _rel_error(model, io):
    x_nhwc, y_nchw = io
    heatmaps = model.heatmaps(x_nhwc)
    assert heatmaps.shape == (2, 64, 48, 17) and heatmaps.dtype == np.float32
    y = np.asarray(heatmaps).transpose(0, 3, 1, 2)
    return float(np.linalg.norm(y - y_nchw) / np.linalg.norm(y_nchw))


@pytest.mark.parametrize(
    "wrapper, prefix", [(None, ""), ("state_dict", "module."), ("best_state_dict", ""), ("model", "module.")]
)
def test_load_pth_reproduces_the_upstream_output(tmp_path, io, wrapper, prefix):
    if wrapper is None and not prefix:
        path = FIXTURE
    else:
        sd = {prefix + k: v for k, v in read_state_dict(FIXTURE).items()}
        path = tmp_path / "wrapped.pth"
        write_torch_checkpoint(path, {wrapper: sd, "epoch": 1})
    model = aggpose_jax.load(path)
    assert isinstance(model, aggpose_jax.PoseModel) and model.config == TINY
    assert _rel_error(model, io) <= 1e-5


def test_flip_test_inside_the_jitted_forward(io):
    """heatmaps.jitted with a flip index (evaluation, prediction) = the mean of the plain forward and the
    flipped-back forward of the mirrored crops, each run alone (the released validate's two passes)."""
    model = aggpose_jax.load(FIXTURE)
    x = np.asarray(io[0], np.float32)
    kset = get_keypoint_set("coco")
    graphdef, state = nnx.split(model.model)
    flipped = np.asarray(jitted(graphdef, tuple(int(j) for j in kset.flip_index))(state, x))
    plain = np.asarray(model.heatmaps(x))
    mirrored = np.asarray(model.heatmaps(np.ascontiguousarray(x[:, :, ::-1])))
    expected = (plain + mirrored[:, :, ::-1][..., kset.flip_index]) * 0.5
    np.testing.assert_allclose(flipped, expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(flipped, plain, atol=1e-4)  # the flip changed something


def test_converted_directory_reproduces_the_upstream_output(tmp_path, io):
    sd = {"module." + k: v for k, v in read_state_dict(FIXTURE).items()}
    write_torch_checkpoint(tmp_path / "ckpt.pth", {"state_dict": sd, "optimizer": {"state": {}}})
    convert_checkpoint(tmp_path / "ckpt.pth", tmp_path / "converted")
    model = aggpose_jax.load(tmp_path / "converted")
    assert model.config == TINY
    assert _rel_error(model, io) <= 1e-5
    assert isinstance(model.params, nnx.State) and isinstance(model.model, inference.AggPose)


def test_load_directory_with_a_config(tmp_path, fixture_params):
    save_model(tmp_path / "m", fixture_params, TINY)
    model = aggpose_jax.load(tmp_path / "m", dataclasses.replace(TINY, dtype="bfloat16", image_size=(128, 96)))
    assert model.config.dtype == "bfloat16" and model.config.image_size == (128, 96)
    with pytest.raises(
        CheckpointError,
        match=r"m: the checkpoint does not match .*heads: checkpoint \(1, 2, 5, 8\), "
        r"config \(1, 2, 4, 8\)",
    ):
        aggpose_jax.load(tmp_path / "m", dataclasses.replace(TINY, heads=(1, 2, 4, 8)))
    with pytest.raises(CheckpointError, match="neither a converted model .* nor a training workdir"):
        aggpose_jax.load(tmp_path)


def test_heatmaps_rejects_channels_first_images(fixture_params):
    model = inference.PoseModel(TINY, bind(TINY, fixture_params))
    with pytest.raises(ValueError, match=r"\(B, H, W, 3\), got \(1, 3, 64, 64\)"):
        model.heatmaps(np.zeros((1, 3, 64, 64), np.float32))


def test_package_exports_load_lazily():
    assert aggpose_jax.load is inference.load
    with pytest.raises(AttributeError):
        aggpose_jax.no_such_thing  # noqa: B018


def test_save_and_load_round_trip(tmp_path, fixture_params):
    model = bind(TINY, fixture_params)
    dest = save_model(tmp_path / "a" / "b", nnx.state(model, nnx.Param), TINY)  # parents are created
    assert dest == str(tmp_path / "a" / "b")
    meta = json.loads((tmp_path / "a" / "b" / "aggpose_model.json").read_text())
    assert meta["format"] == "aggpose-jax-model" and meta["num_params"] == 501_657
    config, params = load_model(dest)
    assert config == TINY
    leaves, tree = jax.tree.flatten(params)
    ref_leaves, ref_tree = jax.tree.flatten(fixture_params)
    assert tree == ref_tree
    assert all(np.array_equal(a, b) and a.dtype == np.float32 for a, b in zip(leaves, ref_leaves))


def test_save_refuses_mismatched_params_and_existing_destinations(tmp_path, fixture_params):
    with pytest.raises(ValueError, match=r"final_layer/fc2/kernel: shape \(16, 17\), expected \(16, 21\)"):
        save_model(tmp_path / "m", fixture_params, dataclasses.replace(TINY, num_joints=21))
    assert not (tmp_path / "m").exists()
    save_model(tmp_path / "m", fixture_params, TINY)
    with pytest.raises(FileExistsError, match="exists and is not empty"):
        save_model(tmp_path / "m", fixture_params, TINY)
    (tmp_path / "file").write_text("keep me")
    with pytest.raises(FileExistsError):
        save_model(tmp_path / "file", fixture_params, TINY)
    assert (tmp_path / "file").read_text() == "keep me"


def test_forced_save_keeps_the_old_checkpoint_when_writing_fails(tmp_path, fixture_params, monkeypatch):
    save_model(tmp_path / "m", fixture_params, TINY)
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    import orbax.checkpoint as ocp

    def broken_save(self, directory, *args, **kwargs):
        os.makedirs(directory)
        (Path(directory) / "partial").write_text("x")
        raise OSError("disk full")

    monkeypatch.setattr(ocp.StandardCheckpointer, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_model(tmp_path / "m", fixture_params, TINY, force=True)
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before
    assert load_model(tmp_path / "m")[0] == TINY


def test_broken_model_directories(tmp_path, fixture_params):
    with pytest.raises(CheckpointError, match=r"nowhere: no such checkpoint directory"):
        load_model(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"empty: not an aggpose-jax model checkpoint \(aggpose_model.json"):
        load_model(tmp_path / "empty")
    good = tmp_path / "good"
    save_model(good, fixture_params, TINY)

    def broken(name, edit):
        target = tmp_path / name
        shutil.copytree(good, target)
        edit(target)
        return target

    meta = json.loads((good / "aggpose_model.json").read_text())
    bad_json = broken("bad_json", lambda d: (d / "aggpose_model.json").write_text('{"format": '))
    with pytest.raises(CheckpointError, match=r"bad_json/aggpose_model.json: unreadable"):
        load_model(bad_json)
    bad_field = broken(
        "bad_field",
        lambda d: (d / "aggpose_model.json").write_text(
            json.dumps({**meta, "config": {**meta["config"], "dims": [16, 32]}})
        ),
    )
    with pytest.raises(CheckpointError, match=r'bad_field/aggpose_model.json: field "config": .*dims'):
        load_model(bad_field)
    bad_format = broken(
        "bad_format", lambda d: (d / "aggpose_model.json").write_text(json.dumps({**meta, "format": "something-else"}))
    )
    with pytest.raises(CheckpointError, match=r'field "format"'):
        load_model(bad_format)
    no_params = broken("no_params", lambda d: shutil.rmtree(d / "params"))
    with pytest.raises(CheckpointError, match=r"no_params/params: parameter checkpoint is missing"):
        load_model(no_params)
    other_config = broken(
        "other_config",
        lambda d: (d / "aggpose_model.json").write_text(
            json.dumps({**meta, "config": {**meta["config"], "num_joints": 21}})
        ),
    )
    with pytest.raises(
        CheckpointError,
        match=r"other_config/params: the stored parameters do not match the config "
        r"in aggpose_model.json \(2 differ, e.g. \['final_layer'\]\['fc2'\]",
    ):
        load_model(other_config)
    damaged = broken(
        "damaged",
        lambda d: [
            f.write_bytes(b"junk") for f in (d / "params").rglob("*") if f.is_file() and f.stat().st_size > 1000
        ],
    )
    with pytest.raises(CheckpointError, match=r"damaged/params: damaged parameter checkpoint"):
        load_model(damaged)
