"""PyTorch / safetensors readers: values, wrappers, prefixes, and refusal of bad or malicious files."""

import collections
import zipfile
from pathlib import Path

import numpy as np
import pytest
from torch_writer import Call, Global, TensorView, write_raw_pickle, write_safetensors, write_torch_checkpoint

from aggpose_jax.convert.safetensors_reader import read_safetensors
from aggpose_jax.convert.torch_reader import ALLOWED_GLOBALS, read_state_dict, read_torch_file
from aggpose_jax.model_dir import CheckpointError

FIXTURE = Path(__file__).parent / "fixtures" / "upstream_tiny17.pth"


@pytest.fixture(scope="module")
def fixture_sd():
    return read_state_dict(FIXTURE)


def _strided_reference(storage, offset, shape, stride):
    """Element-by-element gather (independent of numpy's stride tricks)."""
    out = np.empty(shape, storage.dtype)
    for index in np.ndindex(*shape):
        out[index] = storage[offset + sum(i * s for i, s in zip(index, stride))]
    return out


def test_fixture_is_a_plain_float32_state_dict(fixture_sd):
    assert len(fixture_sd) == 416
    assert list(fixture_sd)[:2] == ["patch_embed1.proj.weight", "patch_embed1.proj.bias"]
    assert fixture_sd["patch_embed1.proj.weight"].shape == (16, 3, 7, 7)
    assert fixture_sd["final_layer.fc2.weight"].shape == (17, 16)
    assert all(v.dtype == np.float32 and v.flags.writeable for v in fixture_sd.values())
    # every parameter of the fixture was perturbed: no tensor is constant
    assert all(np.ptp(v) > 0 for v in fixture_sd.values() if v.size > 1)


def test_fixture_values_match_the_raw_storages(fixture_sd):
    # The fixture stores each tensor contiguously in its own storage: compare with the raw bytes.
    with zipfile.ZipFile(FIXTURE) as z:
        raw = np.frombuffer(z.read("upstream_tiny17/data/0"), "<f4")
        final = np.frombuffer(z.read("upstream_tiny17/data/415"), "<f4")
    np.testing.assert_array_equal(fixture_sd["patch_embed1.proj.weight"].reshape(-1), raw)
    np.testing.assert_array_equal(fixture_sd["final_layer.fc2.bias"], final)


@pytest.mark.parametrize("byteorder", ["little", "big"])
def test_dtypes_offsets_strides_and_shared_storages(tmp_path, byteorder):
    rng = np.random.default_rng(0)
    storage = rng.normal(size=60).astype(np.float64)
    views = {
        "t": (3, (4, 5), (1, 7)),
        "slice": (10, (2, 3), (12, 2)),
        "scalar": (5, (), ()),
        "empty": (0, (0, 4), (4, 1)),
        "bcast": (2, (3, 2), (0, 1)),
    }
    obj = {name: TensorView(storage, *geometry) for name, geometry in views.items()}
    plain = {
        "f16": rng.normal(size=(2, 3)).astype(np.float16),
        "i64": np.arange(-3, 3, dtype=np.int64),
        "i8": np.array([-128, 0, 127], np.int8),
        "u8": np.array([0, 255], np.uint8),
        "bool": np.array([True, False, True]),
        "c64": np.array([1 + 2j, -3j], np.complex64),
        "f32": rng.normal(size=(3, 1, 2)).astype(np.float32),
    }
    obj.update(plain)
    path = tmp_path / "c.pth"
    write_torch_checkpoint(path, obj, byteorder=byteorder)
    out = read_torch_file(path)
    for name, (offset, shape, stride) in views.items():
        expected = _strided_reference(storage, offset, shape, stride)
        assert out[name].shape == shape and out[name].dtype == np.float64
        np.testing.assert_array_equal(out[name], expected)
    for name, value in plain.items():
        assert out[name].dtype == value.dtype.newbyteorder("=")
        np.testing.assert_array_equal(out[name], value)
    out["t"][0, 0] = 99.0  # copies, not views of one another
    assert out["slice"].flat[0] != 99.0 or storage[10] == 99.0


def test_training_checkpoint_with_optimizer_and_numpy_scalars(tmp_path, fixture_sd):
    opt = {
        "state": {0: {"step": np.array(3.0, np.float32), "exp_avg": np.ones(4, np.float32)}},
        "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "params": [0], "foreach": None}],
    }
    sd = collections.OrderedDict(("module." + k, v) for k, v in fixture_sd.items())
    ckpt = {
        "epoch": 12,
        "model": "pose_aggpose",
        "state_dict": sd,
        "best_state_dict": dict(fixture_sd),
        "perf": np.float64(0.764),
        "optimizer": opt,
    }
    path = tmp_path / "checkpoint.pth"
    write_torch_checkpoint(path, ckpt)
    obj = read_torch_file(path)
    assert obj["perf"] == np.float64(0.764) and obj["epoch"] == 12 and obj["model"] == "pose_aggpose"
    assert obj["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.999)
    np.testing.assert_array_equal(obj["optimizer"]["state"][0]["exp_avg"], np.ones(4))
    out = read_state_dict(path)
    assert list(out) == list(fixture_sd)
    assert all(np.array_equal(out[k], fixture_sd[k]) for k in fixture_sd)


@pytest.mark.parametrize("wrapper", ["state_dict", "best_state_dict", "model", None])
@pytest.mark.parametrize("prefix", ["", "module."])
def test_wrapped_and_prefixed_state_dicts(tmp_path, fixture_sd, wrapper, prefix):
    sd = {prefix + k: v for k, v in fixture_sd.items()}
    path = tmp_path / "w.pth"
    write_torch_checkpoint(path, sd if wrapper is None else {wrapper: sd, "epoch": 3}, parameters=True)
    out = read_state_dict(path)
    assert list(out) == list(fixture_sd)
    assert all(np.array_equal(out[k], fixture_sd[k]) for k in fixture_sd)


def test_wrapper_precedence_and_explicit_key(tmp_path):
    a, b = {"w": np.zeros(2, np.float32)}, {"w": np.ones(2, np.float32)}
    path = tmp_path / "p.pth"
    write_torch_checkpoint(path, {"best_state_dict": b, "state_dict": a, "model": "name"})
    np.testing.assert_array_equal(read_state_dict(path)["w"], a["w"])
    np.testing.assert_array_equal(read_state_dict(path, key="best_state_dict")["w"], b["w"])
    with pytest.raises(CheckpointError, match=r"p\.pth: no entry 'optimizer'"):
        read_state_dict(path, key="optimizer")


def test_partial_module_prefix_is_kept(tmp_path):
    path = tmp_path / "mixed.pth"
    write_torch_checkpoint(path, {"module.a": np.zeros(1, np.float32), "b": np.zeros(1, np.float32)})
    assert sorted(read_state_dict(path)) == ["b", "module.a"]


def test_no_state_dict_found(tmp_path):
    path = tmp_path / "meta.pth"
    write_torch_checkpoint(path, {"epoch": 3, "model": "aggpose", "perf": 0.5})
    with pytest.raises(CheckpointError, match=r"meta\.pth: no state dict found"):
        read_state_dict(path)
    write_torch_checkpoint(path, {"a": np.zeros(1, np.float32), "lr": 0.1})
    with pytest.raises(CheckpointError, match=r"meta\.pth: no state dict found .*found \['a', 'lr'\]"):
        read_state_dict(path)
    write_torch_checkpoint(path, {"state_dict": {"a": np.zeros(1, np.float32), "lr": 0.1}})
    with pytest.raises(CheckpointError, match=r"meta\.pth: entry 'state_dict': 'lr' is a float, not a tensor"):
        read_state_dict(path, key="state_dict")


def test_refuses_os_system_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    payload = Call(Global("os", "system"), (f"touch {marker}",))
    write_torch_checkpoint(path, {"state_dict": {"w": np.zeros(2, np.float32)}, "x": payload})
    with pytest.raises(CheckpointError) as info:
        read_state_dict(path)
    message = str(info.value)
    assert str(path) in message and "os.system" in message and "\n" not in message
    assert not marker.exists()


@pytest.mark.parametrize(
    "module, name",
    [
        ("builtins", "eval"),
        ("posix", "system"),
        ("subprocess", "Popen"),
        ("torch", "load"),
        ("numpy", "load"),
        ("collections", "deque"),
    ],
)
def test_refuses_every_global_outside_the_allow_list(tmp_path, module, name):
    path = tmp_path / "g.pth"
    write_torch_checkpoint(path, [Call(Global(module, name), ("1",))])
    with pytest.raises(CheckpointError, match=rf"g\.pth: refused .*{module}\.{name}"):
        read_torch_file(path)
    assert f"{module}.{name}" not in ALLOWED_GLOBALS


def test_allowed_globals_with_hostile_arguments_are_rejected(tmp_path):
    path = tmp_path / "h.pth"
    write_torch_checkpoint(path, {"d": Call(Global("numpy", "dtype"), ("O", False, True))})
    with pytest.raises(CheckpointError, match=r"h\.pth: damaged or unsupported pickle.*not a plain numeric"):
        read_torch_file(path)
    write_torch_checkpoint(path, {"e": Call(Global("_codecs", "encode"), ("x", "rot13"))})
    with pytest.raises(CheckpointError, match=r"h\.pth: .*latin1"):
        read_torch_file(path)
    # a tensor reaching past the end of its storage
    write_torch_checkpoint(path, {"t": TensorView(np.zeros(4, np.float32), 2, (3,), (1,))})
    with pytest.raises(CheckpointError, match=r"h\.pth: .*reaches element 5 of a storage of 4"):
        read_torch_file(path)


@pytest.mark.parametrize("target", [b"ctorch\nFloatStorage\n", b"ctorch._utils\n_rebuild_tensor_v2\n"])
def test_allowed_globals_cannot_be_modified_by_a_pickle(tmp_path, fixture_sd, target):
    # GLOBAL target; {'dtype': 'O'}; BUILD; STOP: would change how later files are read
    path = tmp_path / "build.pth"
    write_raw_pickle(path, b"\x80\x02" + target + b"}X\x05\x00\x00\x00dtypeX\x01\x00\x00\x00Osb.")
    with pytest.raises(CheckpointError, match=r"build\.pth: damaged or unsupported pickle.*cannot be modified"):
        read_torch_file(path)
    again = read_state_dict(FIXTURE)
    assert all(np.array_equal(again[k], v) and again[k].dtype == v.dtype for k, v in fixture_sd.items())


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("hello, this is not a checkpoint\n" * 40)
    with pytest.raises(CheckpointError, match=r"notes\.pth: not a PyTorch checkpoint"):
        read_state_dict(path)
    with pytest.raises(CheckpointError, match=r"missing\.pth: no such file"):
        read_state_dict(tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match="is a directory"):
        read_torch_file(tmp_path)
    other = tmp_path / "other.zip"
    with zipfile.ZipFile(other, "w") as z:
        z.writestr("readme.txt", "no pickle here")
    with pytest.raises(CheckpointError, match=r"other\.zip: zip archive with no data\.pkl"):
        read_torch_file(other)


def test_truncated_zip(tmp_path):
    data = FIXTURE.read_bytes()
    path = tmp_path / "cut.pth"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cut\.pth: truncated or damaged zip"):
        read_state_dict(path)


def test_damaged_storage_record(tmp_path, fixture_sd):
    path = tmp_path / "crc.pth"
    write_torch_checkpoint(path, {"w": np.arange(1000, dtype=np.float32)})
    data = bytearray(path.read_bytes())
    start = data.index(np.arange(1000, dtype=np.float32).tobytes()[:64])
    data[start + 100] ^= 0xFF  # flip bits inside the stored tensor: CRC mismatch
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"crc\.pth: record archive/data/0 is damaged"):
        read_torch_file(path)


def test_legacy_format_asks_to_resave(tmp_path):
    path = tmp_path / "old.pth"
    magic = 0x1950A86A20F9469CFC6C
    path.write_bytes(b"\x80\x02\x8a\x0a" + magic.to_bytes(10, "little") + b".\x80\x02K\xe9." + b"\0" * 64)
    with pytest.raises(CheckpointError, match=r"old\.pth: legacy .*re-save"):
        read_state_dict(path)


def test_safetensors_round_trip_and_dispatch(tmp_path):
    tensors = {
        "a": np.arange(6, dtype=np.float32).reshape(2, 3),
        "b": np.array([1, -2], np.int64),
        "h": np.ones((1, 2), np.float16),
        "m": np.array([True, False]),
    }
    path = tmp_path / "w.safetensors"
    write_safetensors(path, tensors, metadata={"format": "pt"})
    for out in (read_safetensors(path), read_state_dict(path)):
        assert list(out) == list(tensors)
        for k, v in tensors.items():
            assert out[k].dtype == v.dtype
            np.testing.assert_array_equal(out[k], v)


def test_bad_safetensors(tmp_path):
    path = tmp_path / "w.safetensors"
    write_safetensors(path, {"a": np.zeros((4, 4), np.float32)})
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:-10])
    with pytest.raises(CheckpointError, match=r"cut\.safetensors: tensor 'a': file is truncated"):
        read_safetensors(tmp_path / "cut.safetensors")
    header_len = int.from_bytes(data[:8], "little")
    bad = data[:8] + data[8 : 8 + header_len].replace(b"[4, 4]", b"[4, 5]") + data[8 + header_len :]
    (tmp_path / "shape.safetensors").write_bytes(bad)
    with pytest.raises(CheckpointError, match=r"shape\.safetensors: tensor 'a': 64 bytes for shape \(4, 5\)"):
        read_safetensors(tmp_path / "shape.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x05\0\0\0\0\0\0\0{junk")
    with pytest.raises(CheckpointError, match=r"junk\.safetensors: safetensors header is not valid JSON"):
        read_safetensors(tmp_path / "junk.safetensors")
