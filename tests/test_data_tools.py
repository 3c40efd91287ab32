"""Data CLIs: the TFDS builder's source fingerprint (refuse / --overwrite / no-op, quiet console),
aggpose-synthetic's non-empty-folder refusal, --overwrite swap and interruption cleanup, and one
stderr line with exit code 2 for every bad path of tfds_builder, synthetic and visualize."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from aggpose_jax.data import synthetic
from aggpose_jax.data.sources import CocoKeypointSource

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = dict(keypoints="coco", seed=1, image_size=(96, 128), val_fraction=0.25)
BUILDER = [sys.executable, "-m", "aggpose_jax.data.tfds_builder"]
SYNTHETIC = [sys.executable, "-m", "aggpose_jax.data.synthetic"]
VISUALIZE = [sys.executable, "-m", "aggpose_jax.data.visualize"]


def run(cmd: list[str], cwd: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("TFDS_DATA_DIR", None)
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def tree(root: str) -> set[str]:
    return {os.path.relpath(os.path.join(d, f), root) for d, _, files in os.walk(root) for f in files}


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Two different small COCO-layout roots, 'a' (6 images) and 'b' (10 images)."""
    base = tmp_path_factory.mktemp("roots")
    out = {}
    for name, n in (("a", 6), ("b", 10)):
        out[name] = str(base / name)
        synthetic.generate_synthetic(out[name], num_images=n, **SMALL)
    return out


def people(root: str) -> dict[str, int]:
    return {
        "train": len(CocoKeypointSource.from_root(root, "train")),
        "validation": len(CocoKeypointSource.from_root(root, "val")),
    }


def assert_quiet(proc: subprocess.CompletedProcess) -> None:
    both = proc.stdout + proc.stderr
    assert "Downloading" not in both and "prepar" not in both.lower(), both
    assert "\x1b[" not in both and "\r" not in both, repr(both)


def assert_one_error_line(proc: subprocess.CompletedProcess, *needles: str) -> None:
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert len(lines) == 1 and "Traceback" not in proc.stderr and ": error: " in lines[0], proc.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


# ----------------------------------------------------------------------------- TFDS builder


def test_tfds_builder_refuses_another_build_rebuilds_with_overwrite_and_noops(roots, tmp_path):
    from aggpose_jax.data.sources import TfdsKeypointSource

    data_dir = str(tmp_path / "tfds")
    version_dir = os.path.join(data_dir, "aggpose_keypoints", "coco", "1.0.0")
    first = run([*BUILDER, roots["a"], "--keypoints", "coco", "--data-dir", data_dir], str(tmp_path))
    assert first.returncode == 0 and first.stderr == "", first.stdout + first.stderr
    assert_quiet(first)
    want_a = people(roots["a"])
    for split, n in want_a.items():
        assert f"{split}: {n} person records" in first.stdout
    with open(os.path.join(version_dir, "aggpose_source.json")) as f:
        assert json.load(f)["fingerprint"]["root"] == os.path.abspath(roots["a"])
    stamp = {f: os.stat(os.path.join(version_dir, f)).st_mtime_ns for f in os.listdir(version_dir)}

    # Same source again: a no-op that says so.
    same = run([*BUILDER, roots["a"], "--data-dir", data_dir], str(tmp_path))
    assert same.returncode == 0 and "up to date" in same.stdout and "nothing written" in same.stdout, same.stdout
    assert {f: os.stat(os.path.join(version_dir, f)).st_mtime_ns for f in os.listdir(version_dir)} == stamp
    assert_quiet(same)

    # Another source: refused, the old build untouched.
    other = run([*BUILDER, roots["b"], "--data-dir", data_dir], str(tmp_path))
    assert_one_error_line(other, version_dir, "root (was", "--overwrite")
    assert {f: os.stat(os.path.join(version_dir, f)).st_mtime_ns for f in os.listdir(version_dir)} == stamp

    # --overwrite: rebuilt from b, the counts are b's, stale shards gone, no staging folder left.
    stale = os.path.join(version_dir, "aggpose_keypoints-train.array_record-00001-of-00002")
    with open(stale, "wb") as f:
        f.write(b"stale")
    rebuilt = run([*BUILDER, roots["b"], "--data-dir", data_dir, "--overwrite"], str(tmp_path))
    assert rebuilt.returncode == 0 and rebuilt.stderr == "", rebuilt.stdout + rebuilt.stderr
    assert_quiet(rebuilt)
    want_b = people(roots["b"])
    assert want_b != want_a
    for split, n in want_b.items():
        assert f"{split}: {n} person records" in rebuilt.stdout
        assert len(TfdsKeypointSource(version_dir, split, keypoints="coco")) == n
    assert not os.path.exists(stale)
    assert os.listdir(data_dir) == ["aggpose_keypoints"]
    with open(os.path.join(version_dir, "aggpose_source.json")) as f:
        assert json.load(f)["fingerprint"]["root"] == os.path.abspath(roots["b"])

    # A build without a fingerprint (made before they were recorded) is another build too.
    os.remove(os.path.join(version_dir, "aggpose_source.json"))
    legacy = run([*BUILDER, roots["b"], "--data-dir", data_dir], str(tmp_path))
    assert_one_error_line(legacy, "no source fingerprint")


def test_tfds_builder_failed_rebuild_keeps_the_old_build(roots, tmp_path, monkeypatch):
    from aggpose_jax.data import tfds_builder

    data_dir = str(tmp_path / "tfds")
    res = tfds_builder.build(roots["a"], data_dir=data_dir)
    assert res.status == "built" and res.counts == people(roots["a"])
    before = {f: os.path.getsize(os.path.join(res.path, f)) for f in os.listdir(res.path)}

    def broken(self, source):
        yield 0, source[0]
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(tfds_builder.AggposeKeypoints, "_generate_examples", broken)
    with pytest.raises(RuntimeError, match="disk on fire"):
        tfds_builder.build(roots["b"], data_dir=data_dir, overwrite=True)
    assert {f: os.path.getsize(os.path.join(res.path, f)) for f in os.listdir(res.path)} == before
    assert tfds_builder.read_fingerprint(res.path)["root"] == os.path.abspath(roots["a"])
    assert os.listdir(data_dir) == ["aggpose_keypoints"]  # no staging folder left


# ----------------------------------------------------------------------------- aggpose-synthetic


def test_synthetic_refuses_a_non_empty_folder_and_overwrite_replaces_it(tmp_path, capsys):
    out = tmp_path / "syn"
    args = [str(out), "--num-images", "4", "--image-size", "96", "128"]
    assert synthetic.main(args) == 0
    stale = out / "train2017" / "999999999999.jpg"
    stale.write_bytes(b"stale")
    before = tree(str(out))
    capsys.readouterr()
    assert synthetic.main([str(out), "--num-images", "3", "--image-size", "96", "128"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "not empty" in err[0] and "--overwrite" in err[0], err
    assert tree(str(out)) == before  # untouched

    assert synthetic.main([str(out), "--num-images", "3", "--image-size", "96", "128", "--overwrite"]) == 0
    fresh = tmp_path / "fresh"
    synthetic.generate_synthetic(str(fresh), num_images=3, seed=0, image_size=(96, 128))
    assert tree(str(out)) == tree(str(fresh)) and not stale.exists()
    assert sorted(os.listdir(tmp_path)) == ["fresh", "syn"]  # no .partial-/.old- siblings
    # An empty folder is fine without --overwrite (e.g. a fresh mkdir).
    empty = tmp_path / "empty"
    empty.mkdir()
    assert synthetic.generate_synthetic(str(empty), num_images=2, seed=0, image_size=(96, 128))["splits"]
    assert (empty / "annotations" / "person_keypoints_val2017.json").is_file()


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_interrupted_generation_leaves_no_temporary_folder(tmp_path, monkeypatch, capsys, error):
    old = tmp_path / "old"
    synthetic.generate_synthetic(str(old), num_images=3, seed=0, image_size=(96, 128))
    old_tree = tree(str(old))
    render, calls = synthetic._render_image, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) % 3 == 0:
            raise error("stop")
        return render(*args, **kwargs)

    monkeypatch.setattr(synthetic, "_render_image", flaky)
    with pytest.raises(error):
        synthetic.generate_synthetic(str(tmp_path / "new"), num_images=5, seed=0, image_size=(96, 128))
    with pytest.raises(error):  # replacing an existing set: the old set stays whole
        synthetic.generate_synthetic(str(old), num_images=5, seed=0, image_size=(96, 128), overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["old"] and tree(str(old)) == old_tree
    if error is KeyboardInterrupt:  # Ctrl-C at the console: one line, exit 130
        capsys.readouterr()
        assert synthetic.main([str(tmp_path / "new"), "--num-images", "5", "--image-size", "96", "128"]) == 130
        assert capsys.readouterr().err.splitlines() == ["aggpose-synthetic: interrupted"]
        assert sorted(os.listdir(tmp_path)) == ["old"]


def test_sigterm_mid_generation_removes_the_temporary_folder(tmp_path):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(
        [*SYNTHETIC, "syn", "--num-images", "3000", "--image-size", "240", "320"],
        cwd=str(tmp_path),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        partial = []
        while time.monotonic() < deadline and proc.poll() is None:
            partial = [d for d in os.listdir(tmp_path) if ".partial-" in d]
            if partial and os.path.isdir(tmp_path / partial[0] / "train2017"):
                if len(os.listdir(tmp_path / partial[0] / "train2017")) >= 3:
                    break
            time.sleep(0.05)
        assert proc.poll() is None and partial, "generation ended before it could be interrupted"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert err.splitlines() == ["aggpose-synthetic: terminated (SIGTERM)"]
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------- bad paths -> exit 2


@pytest.fixture(scope="module")
def bad(tmp_path_factory: pytest.TempPathFactory, roots) -> dict[str, str]:
    base = tmp_path_factory.mktemp("bad")
    (base / "no_annotations").mkdir()
    (base / "a_file").write_text("x")
    (base / "full").mkdir()
    (base / "full" / "keep.txt").write_text("x")
    return {
        "base": str(base),
        "missing": str(base / "missing"),
        "no_ann": str(base / "no_annotations"),
        "file": str(base / "a_file"),
        "full": str(base / "full"),
        "root": roots["a"],
    }


BAD_INPUTS = {
    "tfds: missing root": (BUILDER + ["{missing}", "--data-dir", "{base}/t"], "dataset root"),
    "tfds: missing annotation file": (BUILDER + ["{no_ann}", "--data-dir", "{base}/t"], "annotation file"),
    "tfds: --data-dir is a file": (BUILDER + ["{root}", "--data-dir", "{file}"], "--data-dir"),
    "tfds: unknown keypoint set": (BUILDER + ["{root}", "--data-dir", "{base}/t", "--keypoints", "mpii"], "mpii"),
    "synthetic: non-empty output": (SYNTHETIC + ["{full}", "--num-images", "2"], "not empty"),
    "synthetic: output is a file": (SYNTHETIC + ["{file}", "--num-images", "2"], "not a folder"),
    "synthetic: output under a file": (SYNTHETIC + ["{file}/syn", "--num-images", "2"], "not a folder"),
    "synthetic: --num-images 0": (SYNTHETIC + ["{base}/syn0", "--num-images", "0"], "num_images"),
    "visualize: missing --root": (VISUALIZE + ["--root", "{missing}", "--out", "{base}/g.png"], "--root"),
    "visualize: missing annotation file": (
        VISUALIZE + ["--root", "{no_ann}", "--out", "{base}/g.png"],
        "annotation file",
    ),
    "visualize: --out under a file": (VISUALIZE + ["--root", "{root}", "--out", "{file}/g.png"], "--out"),
    "visualize: --out is a folder": (VISUALIZE + ["--root", "{root}", "--out", "{full}"], "--out"),
    "visualize: --out not an image": (VISUALIZE + ["--root", "{root}", "--out", "{base}/g.txt"], "--out"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_stderr_line_and_exit_2(bad, case):
    cmd, needle = BAD_INPUTS[case]
    proc = run([part.format(**bad) for part in cmd], bad["base"])
    assert_one_error_line(proc, needle)
    assert proc.stdout == ""
    assert sorted(os.listdir(bad["base"])) == ["a_file", "full", "no_annotations"]  # nothing left behind
    assert os.listdir(bad["full"]) == ["keep.txt"]
