"""PyTorch checkpoint conversion, the aggpose-convert CLI and the MiT backbone import."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from torch_writer import write_safetensors, write_torch_checkpoint

from aggpose_jax.convert import (
    CheckpointError,
    CheckpointMismatchError,
    convert_checkpoint,
    import_mit_backbone,
    load_torch_checkpoint,
)
from aggpose_jax.convert.cli import main
from aggpose_jax.convert.mapping import expected_torch_shapes, flax_to_torch
from aggpose_jax.convert.torch_reader import read_state_dict
from aggpose_jax.model_dir import load_model
from aggpose_jax.models.aggpose import get_model_config

REPO = Path(__file__).resolve().parent.parent
FIXTURE = REPO / "tests" / "fixtures" / "upstream_tiny17.pth"
TINY = get_model_config("aggpose_tiny")
MIT_NAME = re.compile(r"^(patch_embed[1-4]|block[1-4]|norm[1-4])\.")  # MiT's modules, as AggPose names them


@pytest.fixture(scope="module")
def fixture_sd():
    return read_state_dict(FIXTURE)


@pytest.fixture(scope="module")
def fixture_params():
    return load_torch_checkpoint(FIXTURE)


def _assert_trees_equal(a, b):
    leaves_a, tree_a = jax.tree.flatten(a)
    leaves_b, tree_b = jax.tree.flatten(b)
    assert tree_a == tree_b
    for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _listing(directory: Path) -> dict:
    return {
        str(p.relative_to(directory)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def test_config_is_inferred_and_tensors_land_in_flax_layout(fixture_sd, fixture_params):
    config, params = fixture_params
    assert config == TINY
    np.testing.assert_array_equal(params["final_layer"]["fc2"]["kernel"], fixture_sd["final_layer.fc2.weight"].T)
    np.testing.assert_array_equal(
        params["block2"]["layers"]["attn"]["q"]["kernel"][1], fixture_sd["block2.1.attn.q.weight"].T
    )
    np.testing.assert_array_equal(
        params["patch_embed1"]["proj"]["kernel"], fixture_sd["patch_embed1.proj.weight"].transpose(2, 3, 1, 0)
    )
    assert all(leaf.dtype == np.float32 for leaf in jax.tree.leaves(params))


@pytest.mark.parametrize(
    "wrapper, prefix", [("state_dict", "module."), ("best_state_dict", ""), ("model", "module."), (None, "module.")]
)
def test_wrapped_and_prefixed_copies_convert_identically(tmp_path, fixture_sd, fixture_params, wrapper, prefix):
    sd = {prefix + k: v for k, v in fixture_sd.items()}
    path = tmp_path / "ckpt.pth"
    write_torch_checkpoint(path, sd if wrapper is None else {wrapper: sd, "epoch": 7, "perf": np.float64(0.5)})
    config, params = load_torch_checkpoint(path)
    assert config == fixture_params[0]
    _assert_trees_equal(params, fixture_params[1])


def test_given_config_and_heads(tmp_path, fixture_params):
    config_file = tmp_path / "tiny.json"
    config_file.write_text(json.dumps(TINY.to_dict()))
    assert load_torch_checkpoint(FIXTURE, str(config_file))[0] == TINY
    assert load_torch_checkpoint(FIXTURE, heads=(2, 4, 5, 8))[0].heads == (2, 4, 5, 8)
    assert load_torch_checkpoint(FIXTURE, "aggpose_tiny", heads=(1, 1, 1, 1))[0].heads == (1, 1, 1, 1)
    with pytest.raises(CheckpointMismatchError) as info:
        load_torch_checkpoint(FIXTURE, "aggpose_s")
    message = str(info.value)
    assert message.startswith(str(FIXTURE)) and "\n" not in message
    assert "patch_embed1.proj.weight: got (16, 3, 7, 7), expected (64, 3, 7, 7)" in message
    with pytest.raises(CheckpointMismatchError, match="heads"):
        load_torch_checkpoint(FIXTURE, heads=(3, 2, 5, 8))  # 16 channels do not split into 3 heads
    with pytest.raises(ValueError, match="config 'aggpose_xl': neither a variant"):
        load_torch_checkpoint(FIXTURE, "aggpose_xl")


def test_wrong_shaped_checkpoint_names_the_tensors(tmp_path, fixture_sd, capsys):
    sd = dict(fixture_sd)
    sd["block2.1.attn.kv.weight"] = np.zeros((60, 32), np.float32)
    del sd["norm3.bias"]
    path = tmp_path / "bad.pth"
    write_torch_checkpoint(path, {"state_dict": sd})
    with pytest.raises(CheckpointMismatchError) as info:
        load_torch_checkpoint(path)
    message = str(info.value)
    assert str(path) in message and "norm3.bias" in message
    assert "block2.1.attn.kv.weight: got (60, 32), expected (64, 32)" in message
    dest = tmp_path / "out"
    assert main([str(path), str(dest)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("aggpose-convert: error:") and "block2.1.attn.kv.weight" in err and "\n" not in err
    assert not dest.exists()


def test_cli_end_to_end(tmp_path, fixture_params, capsys):
    dest = tmp_path / "converted"
    assert main([str(FIXTURE), str(dest), "--heads", "1,2,5,8"]) == 0
    out = capsys.readouterr().out
    assert "config: aggpose_tiny" in out and "parameters: 501,657 in 416 tensors" in out
    config, params = load_model(dest)
    assert config == TINY
    _assert_trees_equal(params, fixture_params[1])
    assert sorted(os.listdir(tmp_path)) == ["converted"]  # no temporary directories left behind


def test_cli_module_entry_point_reports_bad_input(tmp_path):
    bad = tmp_path / "notes.pth"
    bad.write_text("not a checkpoint")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(
        [sys.executable, "-m", "aggpose_jax.convert", str(bad), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    expected = f"aggpose-convert: error: {bad}: not a PyTorch checkpoint (not a torch.save zip archive)"
    assert proc.stderr.strip() == expected
    assert not (tmp_path / "out").exists()


def test_refuses_to_overwrite_unless_forced(tmp_path, fixture_sd, capsys):
    dest = tmp_path / "model"
    convert_checkpoint(FIXTURE, dest)
    before = _listing(dest)
    with pytest.raises(FileExistsError, match="destination exists and is not empty"):
        convert_checkpoint(FIXTURE, dest)
    assert main([str(FIXTURE), str(dest)]) == 2
    assert "use force=True (--force)" in capsys.readouterr().err
    assert _listing(dest) == before
    # --force replaces it (here with a checkpoint whose head differs) and leaves nothing else behind
    sd = dict(fixture_sd)
    sd["final_layer.fc2.bias"] = sd["final_layer.fc2.bias"] + 1.0
    src = tmp_path / "other.pth"
    write_torch_checkpoint(src, sd)
    assert main([str(src), str(dest), "--force"]) == 0
    _, params = load_model(dest)
    np.testing.assert_array_equal(params["final_layer"]["fc2"]["bias"], sd["final_layer.fc2.bias"])
    assert sorted(os.listdir(tmp_path)) == ["model", "other.pth"]
    (tmp_path / "empty").mkdir()
    convert_checkpoint(FIXTURE, tmp_path / "empty")  # an empty directory is not refused


# ----------------------------------------------------------------------------------------------- MiT import


def _mit_nvlabs(fixture_sd):
    """MiT-style weights for the tiny backbone: the fixture's backbone tensors + 1, and a classification head."""
    sd = {k: v + 1.0 for k, v in fixture_sd.items() if MIT_NAME.match(k)}
    sd["head.weight"] = np.ones((10, 64), np.float32)
    sd["head.bias"] = np.zeros(10, np.float32)
    return sd


def _to_hf(name):
    """Hugging Face Segformer name(s) of an NVlabs MiT tensor."""
    blocks = [
        (".norm1.", ".layer_norm_1."),
        (".norm2.", ".layer_norm_2."),
        (".attn.q.", ".attention.self.query."),
        (".attn.sr.", ".attention.self.sr."),
        (".attn.norm.", ".attention.self.layer_norm."),
        (".attn.proj.", ".attention.output.dense."),
        (".mlp.fc1.", ".mlp.dense1."),
        (".mlp.fc2.", ".mlp.dense2."),
    ]
    if m := re.match(r"patch_embed(\d)\.(proj|norm)\.(\w+)$", name):
        return f"encoder.patch_embeddings.{int(m[1]) - 1}.{'proj' if m[2] == 'proj' else 'layer_norm'}.{m[3]}"
    if m := re.match(r"norm(\d)\.(\w+)$", name):
        return f"encoder.layer_norm.{int(m[1]) - 1}.{m[2]}"
    m = re.match(r"block(\d)\.(\d+)(\..*)$", name)
    rest = m[3]
    for old, new in blocks:
        rest = rest.replace(old, new)
    return f"encoder.block.{int(m[1]) - 1}.{m[2]}{rest}"


def _mit_hf(nvlabs):
    out = {}
    for name, value in nvlabs.items():
        if name.startswith("head."):
            out["classifier." + name[len("head.") :]] = value
        elif ".attn.kv." in name:
            half = value.shape[0] // 2
            base = "segformer." + _to_hf(name.replace(".attn.kv.", ".attn.q.")).replace(".query.", ".{}.")
            out[base.format("key")], out[base.format("value")] = value[:half], value[half:]
        else:
            out["segformer." + _to_hf(name)] = value
    return out


def test_mit_import_from_nvlabs_names_into_params(tmp_path, fixture_sd, fixture_params):
    nvlabs = _mit_nvlabs(fixture_sd)
    path = tmp_path / "mit_tiny.pth"
    write_torch_checkpoint(path, nvlabs)
    params = jax.tree.map(np.array, fixture_params[1])
    new, report = import_mit_backbone(params, path, TINY)
    _assert_trees_equal(params, fixture_params[1])  # the input is not modified
    after = flax_to_torch(new, TINY)
    for name, value in after.items():
        np.testing.assert_array_equal(value, nvlabs[name] if MIT_NAME.match(name) else fixture_sd[name])
    assert report.source_format == "nvlabs"
    assert sorted(report.loaded) == sorted(n for n in fixture_sd if MIT_NAME.match(n))
    assert sorted(report.fresh) == sorted(n for n in fixture_sd if not MIT_NAME.match(n))
    assert sorted(report.ignored) == ["head.bias", "head.weight"]
    assert "merge_12_1" in report.summary() and "block1_1" in report.summary()


def test_mit_import_from_hugging_face_names(tmp_path, fixture_sd, fixture_params):
    nvlabs = _mit_nvlabs(fixture_sd)
    path = tmp_path / "model.safetensors"
    write_safetensors(path, _mit_hf(nvlabs))
    new, report = import_mit_backbone(fixture_params[1], path, TINY)
    after = flax_to_torch(new, TINY)
    for name, value in after.items():
        np.testing.assert_array_equal(value, nvlabs[name] if MIT_NAME.match(name) else fixture_sd[name])
    assert report.source_format == "huggingface"
    assert sorted(report.fresh) == sorted(n for n in fixture_sd if not MIT_NAME.match(n))
    assert sorted(report.ignored) == ["classifier.bias", "classifier.weight"]


def test_mit_mismatches_name_the_tensors(tmp_path, fixture_sd, fixture_params):
    nvlabs = _mit_nvlabs(fixture_sd)
    nvlabs["block3.1.mlp.fc1.weight"] = np.zeros((100, 40), np.float32)
    nvlabs["block2.2.norm1.weight"] = np.zeros(32, np.float32)  # a deeper MiT than the model
    path = tmp_path / "mit_bad.pth"
    write_torch_checkpoint(path, nvlabs)
    params = jax.tree.map(np.array, fixture_params[1])
    with pytest.raises(CheckpointMismatchError) as info:
        import_mit_backbone(params, path, TINY)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    assert "block3.1.mlp.fc1.weight (100, 40) vs model (160, 40)" in message
    assert "not in the model (1): block2.2.norm1.weight" in message
    _assert_trees_equal(params, fixture_params[1])  # untouched
    hf = _mit_hf(_mit_nvlabs(fixture_sd))
    del hf["segformer.encoder.block.0.0.attention.self.value.weight"]
    write_safetensors(tmp_path / "hf_bad.safetensors", hf)
    with pytest.raises(CheckpointMismatchError, match=r"block1\.0\.attn\.kv\.weight \(incomplete"):
        import_mit_backbone(params, tmp_path / "hf_bad.safetensors", TINY)
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        import_mit_backbone(params, FIXTURE.with_suffix(".json"), TINY)


def test_cli_bad_paths_are_one_line_and_exit_2(tmp_path, capsys):
    assert main([str(tmp_path / "missing.pth"), str(tmp_path / "out")]) == 2
    (tmp_path / "a_file").write_text("x")
    assert main([str(FIXTURE), str(tmp_path / "a_file" / "out")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0] == f"aggpose-convert: error: {tmp_path / 'missing.pth'}: no such file"
    assert lines[-1].startswith("aggpose-convert: error: ") and "a_file" in lines[-1] and "Traceback" not in lines[-1]


def test_cli_mit_writes_an_initialised_model(tmp_path, capsys):
    # A narrow config (every width 16, one block per stage) keeps the real random initialisation cheap.
    config = get_model_config(
        "aggpose_tiny",
        dims=(16, 16, 16, 16),
        heads=(1, 2, 4, 8),
        stage_depths=((1, 1, 1, 1), (1, 1, 1), (1, 1), (1,)),
        num_joints=5,
    )
    config_file = tmp_path / "narrow.json"
    config_file.write_text(json.dumps(config.to_dict()))
    rng = np.random.default_rng(0)
    nvlabs = {
        n: rng.normal(size=s).astype(np.float32) for n, s in expected_torch_shapes(config).items() if MIT_NAME.match(n)
    }
    nvlabs["head.weight"] = np.ones((10, 16), np.float32)
    src = tmp_path / "mit.pth"
    write_torch_checkpoint(src, nvlabs)
    assert main(["--mit", str(src), str(tmp_path / "x")]) == 2
    assert "--mit needs --config" in capsys.readouterr().err
    dest = tmp_path / "from_mit"
    assert main(["--mit", str(src), str(dest), "--config", str(config_file), "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "keep their fresh initialisation" in out and "ignored 1 head tensors" in out
    stored, params = load_model(dest)
    assert stored == config
    fresh = 0
    for name, value in flax_to_torch(params, config).items():
        if MIT_NAME.match(name):
            np.testing.assert_array_equal(value, nvlabs[name])
        elif name.endswith("fc1.weight"):  # freshly initialised: truncated normal, std 0.02
            assert 0.01 < value.std() < 0.03, name
            fresh += 1
    assert fresh == 26  # 6 later-stage blocks, 9 merges, 9 upsamplers, final, final_layer
