"""Helpers shared by the training tests: a tiny, fast configuration and batch fingerprints."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

import numpy as np

TESTS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS)


def tiny_config(root: str, **train: Any):
    """aggpose_tiny at 64x64 on the synthetic set; batch 4; 6 steps; no evaluation; checkpoint every 3 steps."""
    from aggpose_jax.config import base_config

    c = base_config()
    c.model.name = "aggpose_tiny"
    c.model.unroll_blocks = True
    c.model.drop_path_rate = 0.1  # exercises the per-step dropout key
    c.data.root = root
    c.data.image_size = (64, 64)
    c.data.heatmap_size = (16, 16)
    c.data.sigma = 1.0
    c.data.num_workers = 0
    c.optim.lr = 1e-3
    c.optim.schedule = "cosine"
    c.optim.warmup_epochs = 0.5
    c.train.batch_size = 4
    c.train.num_steps = 6
    c.train.log_every_steps = 2
    c.train.checkpoint_every_steps = 3
    c.train.keep_checkpoints = 10
    c.eval.every_steps = 0
    c.eval.every_epochs = 0.0
    c.eval.batch_size = 16
    c.eval.draw_images = 1
    for key, value in train.items():
        c.train[key] = value
    return c


def fingerprint(batch: dict) -> str:
    """Content hash of a training batch (images, targets and weights)."""
    h = hashlib.sha1()
    for key in ("image", "target", "target_weight"):
        h.update(np.ascontiguousarray(batch[key]).tobytes())
    return h.hexdigest()


def child_env(devices: int = 1, *, optimize: bool = True) -> dict[str, str]:
    """Environment for a child interpreter running jax on CPU with ``devices`` forced devices.

    The children share a persistent compilation cache (JAX's public ``JAX_COMPILATION_CACHE_DIR``), so
    the same tiny model is compiled once across test processes. ``optimize=False`` turns XLA's CPU
    backend optimisation off, a setup users do not run: only for tests where it saves minutes.
    """
    env = dict(os.environ)
    flags = [f"--xla_force_host_platform_device_count={devices}"]
    if not optimize:
        flags += ["--xla_backend_optimization_level=0", "--xla_llvm_disable_expensive_passes=true"]
    env["XLA_FLAGS"] = " ".join(flags)
    env["JAX_PLATFORMS"] = "cpu"
    env["JAX_COMPILATION_CACHE_DIR"] = os.path.join(tempfile.gettempdir(), f"aggpose_jax_test_xla_cache_{os.getuid()}")
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.5"
    env["PYTHONPATH"] = os.pathsep.join([REPO, TESTS, env.get("PYTHONPATH", "")])
    return env


@contextlib.contextmanager
def compile_lock() -> Iterator[None]:
    """Serialise children that compile the tiny AggPose across pytest-xdist workers: the first fills
    the shared compilation cache, the others then load from it instead of compiling in parallel."""
    path = child_env()["JAX_COMPILATION_CACHE_DIR"] + ".lock"
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def run_python(code: str, *, devices: int = 1, timeout: int = 600, lock: bool = False) -> str:
    """Run ``code`` in a fresh interpreter (see ``child_env``; ``lock``: under ``compile_lock``);
    returns stdout, fails with the child's output on a non-zero exit."""
    with compile_lock() if lock else contextlib.nullcontext():
        proc = subprocess.run(
            [sys.executable, "-c", code],
            env=child_env(devices),
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    if proc.returncode != 0:
        raise AssertionError(f"child failed (rc={proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc.stdout
