"""aggpose-export: a jax.export artifact (symbolic batch) that reproduces the model's heatmaps, loaded with
jax.export.deserialize alone."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

import aggpose_jax
from aggpose_jax.predict import export

MODEL = Path(__file__).resolve().parent / "fixtures" / "synthetic_tiny17"


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # A CPU-only artifact (the 'auto' = CPU layer forms; compiles in half the time of the portable
    # default --platforms cpu,cuda,tpu, which uses the plain 'xla' layers).
    out = tmp_path_factory.mktemp("export") / "tiny"
    assert export.main([str(MODEL), str(out), "--platforms", "cpu"]) == 0
    return out


def test_artifact_reproduces_the_model(exported: Path, tmp_path: Path) -> None:
    assert sorted(p.name for p in exported.iterdir()) == [export.ARTIFACT, export.META, export.SCRIPT]
    loaded = jax.export.deserialize(bytearray((exported / export.ARTIFACT).read_bytes()))
    assert str(loaded.in_avals[0].shape[0]) == "b" and loaded.in_avals[0].shape[1:] == (128, 96, 3)  # symbolic batch
    assert tuple(loaded.platforms) == ("cpu",)
    meta = json.loads((exported / export.META).read_text())
    assert meta["input_size"] == [128, 96] and meta["joint_names"][0] == "nose" and len(meta["flip_index"]) == 17
    assert len(meta["model"]["checkpoint_sha256"]) == 64 and meta["flip_test_inside"] is False

    # The written snippet, run with the package blocked: it loads with jax.export.deserialize alone.
    x = np.random.default_rng(0).normal(0.0, 1.0, (3, 128, 96, 3)).astype(np.float32)
    np.save(tmp_path / "crops.npy", x)
    script = exported / export.SCRIPT
    assert "aggpose_jax" not in script.read_text()
    code = "import runpy, sys; sys.modules['aggpose_jax'] = None; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0])"
    args = [sys.executable, "-c", code, str(script), str(tmp_path / "crops.npy"), str(tmp_path / "out.npy")]
    done = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "(3, 32, 24, 17)" in done.stdout
    got = np.load(tmp_path / "out.npy")
    want = np.asarray(aggpose_jax.load(MODEL).heatmaps(x))
    assert got.shape == want.shape == (3, 32, 24, 17)
    rel = float(np.linalg.norm(got - want) / np.linalg.norm(want))
    print(f"export relative L2 error {rel:.2e}")
    assert rel <= 1e-5


def test_export_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert export.main([str(tmp_path / "missing"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("aggpose-export: error: ") and "missing" in err[0]


def test_artifact_with_the_flip_test_inside(tmp_path: Path) -> None:
    """--flip: the flip test (crops and mirror images interleaved, symbolic batch b -> 2b) inside the
    artifact equals the jitted forward with the flip test that prediction runs."""
    from flax import nnx

    from aggpose_jax.heatmaps import jitted
    from aggpose_jax.pose.keypoints import get_keypoint_set

    meta = export.export_model(MODEL, tmp_path / "flip", flip=True, platforms=("cpu",))
    assert meta["flip_test_inside"] is True
    loaded = jax.export.deserialize(bytearray((tmp_path / "flip" / export.ARTIFACT).read_bytes()))
    x = np.random.default_rng(1).normal(0.0, 1.0, (3, 128, 96, 3)).astype(np.float32)
    got = np.asarray(loaded.call(x))
    model = aggpose_jax.load(MODEL)
    graphdef, state = nnx.split(model.model)
    flip = tuple(int(j) for j in get_keypoint_set("coco").flip_index)
    want = np.asarray(jitted(graphdef, flip)(state, x))
    assert got.shape == want.shape == (3, 32, 24, 17)
    assert float(np.linalg.norm(got - want) / np.linalg.norm(want)) <= 1e-5
    assert not np.allclose(got, np.asarray(model.heatmaps(x)), atol=1e-4)  # the flip test changed the maps
