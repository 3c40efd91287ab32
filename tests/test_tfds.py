"""TFDS builder: ArrayRecord shards of the synthetic set give exactly the COCO-JSON source's records,
built and read without TensorFlow (in a fresh subprocess so that sys.modules is clean)."""

import os
import subprocess
import sys
import textwrap

import pytest

from aggpose_jax.data.sources import resolve_tfds_dir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = textwrap.dedent("""
    import os, pickle, sys
    import numpy as np
    root, data_dir = sys.argv[1], sys.argv[2]
    from aggpose_jax.data import tfds_builder
    from aggpose_jax.data.sources import CocoKeypointSource, TfdsKeypointSource

    assert tfds_builder.main([root, "--keypoints", "coco", "--data-dir", data_dir]) == 0
    version_dir = os.path.join(data_dir, "aggpose_keypoints", "coco", "1.0.0")
    shards = [f for f in os.listdir(version_dir) if ".array_record-" in f]
    assert any("-train." in f for f in shards) and any("-validation." in f for f in shards), shards

    for split in ("train", "val"):
        coco = CocoKeypointSource.from_root(root, split, keypoints="coco")
        tf_src = TfdsKeypointSource(split=split, data_dir=data_dir, keypoints="coco")
        assert len(tf_src) == len(coco) > 0, (split, len(tf_src), len(coco))
        for i in range(len(coco)):
            a, b = coco[i], tf_src[i]
            assert a.keys() == b.keys()
            for key in a:
                assert type(a[key]) is type(b[key]), (key, type(a[key]), type(b[key]))
                if isinstance(a[key], np.ndarray):
                    assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape, key
                    np.testing.assert_array_equal(a[key], b[key])
                else:
                    assert a[key] == b[key], (split, i, key)
        # Picklable (Grain workers) and addressable by directory, name and version.
        back = pickle.loads(pickle.dumps(tf_src))
        assert back[len(back) - 1]["image_bytes"] == coco[len(coco) - 1]["image_bytes"]
    by_dir = TfdsKeypointSource(version_dir, "validation", keypoints="coco")
    by_name = TfdsKeypointSource("aggpose_keypoints/coco", "train[:3]", data_dir=data_dir)
    assert len(by_dir) == len(CocoKeypointSource.from_root(root, "val")) and len(by_name) == 3
    try:
        TfdsKeypointSource(version_dir, "train", keypoints="infant")
        raise AssertionError("keypoint set mismatch not detected")
    except ValueError as e:
        assert "expected (21, 3)" in str(e), e
    assert "tensorflow" not in sys.modules, "TensorFlow was imported"
    print("TFDS-OK")
""")


def test_tfds_shards_match_coco_source_without_tensorflow(synthetic_coco_root, tmp_path):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("TFDS_DATA_DIR", None)
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, synthetic_coco_root, str(tmp_path / "tfds")],
        cwd=str(tmp_path),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0 and "TFDS-OK" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_resolve_tfds_dir_errors_and_versions(tmp_path):
    with pytest.raises(FileNotFoundError, match="no prepared TFDS dataset.*tfds_builder"):
        resolve_tfds_dir(None, str(tmp_path), "coco")
    for version in ("1.0.0", "1.10.0", "1.9.0"):
        d = tmp_path / "aggpose_keypoints" / "infant" / version
        d.mkdir(parents=True)
        (d / "dataset_info.json").write_text("{}")
    (tmp_path / "aggpose_keypoints" / "infant" / "2.0.0").mkdir()  # incomplete: no dataset_info.json
    assert resolve_tfds_dir(None, str(tmp_path), "infant").endswith(os.path.join("infant", "1.10.0"))
    assert resolve_tfds_dir(str(d), None, "infant") == str(d)
