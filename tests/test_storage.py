"""A workdir's files on a local path and on Cloud Storage (a local emulator): the same behaviour through
``aggpose_jax.storage``, and the workdir lock's semantics on both (exclusive create, stale takeover)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import fsspec
import pytest

from aggpose_jax import storage
from aggpose_jax.workdir import LOCK, WorkdirError, WorkdirLock


@pytest.fixture
def gcs(gcs_emulator, monkeypatch):
    for key, value in gcs_emulator.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setitem(fsspec.config.conf, "gcs", {"token": "anon"})  # FSSPEC_GCS_TOKEN is read at import
    storage._gcs.cache_clear()
    yield
    storage._gcs.cache_clear()


@pytest.fixture(params=["local", "gs"])
def base(request, tmp_path) -> str:
    """A fresh folder: a local one, or one under gs://bucket/ on the emulator."""
    if request.param == "local":
        return str(tmp_path / "wd")
    request.getfixturevalue("gcs")
    return f"gs://bucket/{request.node.name.replace('[', '-').rstrip(']')}-{os.getpid()}"


def test_files_folders_and_exclusive_create(base: str) -> None:
    storage.makedirs(base)
    assert storage.listdir(base) == [] and not storage.exists(storage.join(base, "a.json"))
    storage.write_text(storage.join(base, "a.json"), "{}")
    storage.write_text(storage.join(base, "a.json"), '{"b": 1}')  # replaced whole
    assert json.loads(storage.read_text(storage.join(base, "a.json"))) == {"b": 1}
    assert storage.create_new(storage.join(base, "lock"), "first")
    assert not storage.create_new(storage.join(base, "lock"), "second")
    assert storage.read_text(storage.join(base, "lock")) == "first"
    storage.makedirs(storage.join(base, "d", "e"))
    storage.write_text(storage.join(base, "d", "e", "1.txt"), "1")
    storage.write_text(storage.join(base, "d", "2.txt"), "2")
    assert storage.isdir(storage.join(base, "d")) and storage.isfile(storage.join(base, "d", "2.txt"))
    assert storage.listdir(base) == ["a.json", "d", "lock"]
    storage.rename(storage.join(base, "d"), storage.join(base, "archive", "x", "d"))
    assert not storage.exists(storage.join(base, "d"))
    assert storage.listdir(storage.join(base, "archive", "x", "d")) == ["2.txt", "e"]
    assert storage.read_text(storage.join(base, "archive", "x", "d", "e", "1.txt")) == "1"
    _, token = storage.stat(storage.join(base, "lock"))
    storage.touch(storage.join(base, "lock"))
    assert storage.stat(storage.join(base, "lock"))[1] != token  # a heartbeat is a new version
    assert storage.read_text(storage.join(base, "lock")) == "first"
    storage.remove(storage.join(base, "lock"))
    storage.remove(storage.join(base, "lock"))  # a missing file is not an error
    assert not storage.exists(storage.join(base, "lock"))


def test_put_folder(base: str, tmp_path) -> None:
    local = tmp_path / "local"
    (local / "sub").mkdir(parents=True)
    (local / "events").write_bytes(b"\x00\x01")
    (local / "sub" / "stats.json").write_text("{}")
    storage.put_folder(str(local), storage.join(base, "tb"))
    assert storage.listdir(storage.join(base, "tb")) == ["events", "sub"]
    assert storage.read_text(storage.join(base, "tb", "sub", "stats.json")) == "{}"


def _dead_pid() -> int:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # reaped: its pid names no process
    return gone.pid


def test_lock_refuses_a_live_holder_and_takes_over_a_dead_one(base: str, caplog) -> None:
    storage.makedirs(base)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = {"host": socket.gethostname(), "pid": holder.pid, "since": "2026-12-05 09:00:00 UTC"}
        storage.write_text(storage.join(base, LOCK), json.dumps(live))
        with pytest.raises(WorkdirError, match=f"in use by pid {holder.pid} on {socket.gethostname()} since 2026"):
            WorkdirLock(base).acquire()
    finally:
        holder.kill()
        holder.wait()
    dead = {"host": socket.gethostname(), "pid": _dead_pid(), "since": "2026-12-05 09:00:00 UTC"}
    storage.write_text(storage.join(base, LOCK), json.dumps(dead))
    lock = WorkdirLock(base)
    lock.acquire()
    assert sum("stale lock" in r.getMessage() for r in caplog.records) == 1
    assert json.loads(storage.read_text(storage.join(base, LOCK)))["pid"] == os.getpid()
    assert storage.listdir(base) == [LOCK]  # the takeover marker is gone
    lock.release()
    assert not storage.exists(storage.join(base, LOCK))


def test_a_late_taker_never_removes_the_new_holders_lock(base: str) -> None:
    """Two processes judged the same lock stale; the first took it over and now holds a new lock. The
    second, acting on what it read before, must not remove that new lock."""
    storage.makedirs(base)
    dead = {"host": socket.gethostname(), "pid": _dead_pid(), "since": "2026-12-05 09:00:00 UTC"}
    storage.write_text(storage.join(base, LOCK), json.dumps(dead))
    late, first = WorkdirLock(base), WorkdirLock(base)
    seen_by_late = late._holder()
    assert seen_by_late is not None and late._stale(seen_by_late)
    first.acquire()  # takes the stale lock over and holds a new one
    late._take_over(seen_by_late)
    assert json.loads(storage.read_text(storage.join(base, LOCK)))["pid"] == os.getpid()  # still first's
    assert storage.listdir(base) == [LOCK]
    first.release()


def test_a_gs_path_without_gcsfs_is_one_line(tmp_path) -> None:
    code = (
        "import sys; sys.modules['gcsfs'] = None\n"
        "from aggpose_jax import storage\n"
        "try:\n    storage.exists('gs://bucket/x')\nexcept ValueError as err:\n    print(err)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout
    assert out.strip() == "gs:// paths need gcsfs: pip install 'aggpose-jax[gcs]'"


def test_one_listing_cache_with_orbax_paths(gcs) -> None:
    """Orbax reaches gs:// through etils.epath's gcsfs; a folder moved here must be gone for it too (with
    two file-system instances, Orbax tried to delete a checkpoint step that had been set aside)."""
    from etils import epath

    base = f"gs://bucket/shared-cache-{os.getpid()}"
    storage.write_text(storage.join(base, "checkpoints", "6", "state", "a"), "x")
    assert epath.Path(base, "checkpoints", "6").exists()
    assert [p.name for p in epath.Path(base, "checkpoints").iterdir()] == ["6"]  # listed: now cached
    storage.rename(storage.join(base, "checkpoints", "6"), storage.join(base, "checkpoints_unreadable", "6-x"))
    assert not epath.Path(base, "checkpoints", "6").exists()
    assert not epath.Path(base, "checkpoints", "6", "state").exists()


def test_a_gs_workdir_generates_its_synthetic_set_on_each_host() -> None:
    """The input pipeline reads local files: with data.root='' and a gs:// workdir the set goes to a local
    folder standing for <workdir>/synthetic, made by every process that lacks it (same seed, same set)."""
    import tempfile

    from aggpose_jax.config import base_config, validate

    data = validate(base_config(), workdir="gs://bucket/runs/l/").data
    assert data.generate_synthetic and data.synthetic_on_each_host
    assert data.root == os.path.join(tempfile.gettempdir(), "aggpose_jax", "gs", "bucket", "runs", "l", "synthetic")
    local = validate(base_config(), workdir="runs/l").data
    assert local.root == os.path.abspath("runs/l/synthetic") and not local.synthetic_on_each_host


def test_prepare_data_for_a_gs_workdir_generates_locally() -> None:
    import shutil

    from aggpose_jax.config import base_config, validate
    from aggpose_jax.workdir import prepare_data

    config = base_config()
    config.data.synthetic.num_images = 4
    config.data.synthetic.image_size = (96, 128)
    data = validate(config, workdir=f"gs://bucket/prepare-{os.getpid()}").data
    try:
        prepare_data(data)  # no object storage involved: the emulator is not even running here
        ann = os.path.join(data.root, "annotations", "person_keypoints_val2017.json")
        first = os.stat(ann).st_mtime_ns
        prepare_data(data)  # present: kept
        assert os.stat(ann).st_mtime_ns == first
        assert not [n for n in os.listdir(os.path.dirname(data.root)) if ".tmp" in n]
    finally:
        shutil.rmtree(os.path.dirname(data.root), ignore_errors=True)


def test_other_url_schemes_are_one_line() -> None:
    with pytest.raises(ValueError, match=r"^s3://b/x: only local paths and gs:// URLs are supported$"):
        storage.exists("s3://b/x")
