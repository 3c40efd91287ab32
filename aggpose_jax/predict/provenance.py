"""Provenance for result files: software versions, the model and checkpoint (hashes), input hashes."""

from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import os
import platform
import sys
from typing import Any

import numpy as np

from aggpose_jax.params import named_leaves

_CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def sha256_tree(directory: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a folder: every file's relative path and bytes, in sorted path order."""
    digest = hashlib.sha256()
    root = os.fspath(directory)
    paths = []
    for dirpath, dirnames, files in os.walk(root):
        dirnames.sort()
        paths += [os.path.join(dirpath, name) for name in files]
    for path in sorted(paths):
        rel = os.path.relpath(path, root).replace(os.sep, "/")
        digest.update(rel.encode() + b"\0")
        with open(path, "rb") as f:
            while block := f.read(_CHUNK):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()


def params_sha256(params: Any) -> str:
    """Hex SHA-256 of the parameters as float32 (names, shapes and values in tree order): the weights'
    identity, whatever file format held them."""
    digest = hashlib.sha256()
    for name, leaf in named_leaves(params):
        arr = np.ascontiguousarray(np.asarray(leaf, np.float32))
        digest.update(f"{name}:{arr.shape}".encode())
        digest.update(arr.tobytes())
    return digest.hexdigest()


def version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def software() -> dict[str, Any]:
    """Versions of this package and what it computes with."""
    import cv2
    import jax

    return {
        "aggpose_jax": version("aggpose-jax"),
        "jax": jax.__version__,
        "jaxlib": version("jaxlib"),
        "flax": version("flax"),
        "numpy": np.__version__,
        "opencv": cv2.__version__,
        "scipy": version("scipy"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "backend": jax.default_backend(),
    }


def now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


__all__ = ["now", "params_sha256", "sha256_file", "sha256_tree", "software", "version"]
