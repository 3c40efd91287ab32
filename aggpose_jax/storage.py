"""Where a run's files live: a local path, or a Cloud Storage URL (``gs://bucket/path``).

Local paths go through ``os``; ``gs://`` URLs through gcsfs (the optional extra ``gcs``), the client that
Orbax's path layer (``etils.epath``) also uses for checkpoints, so one set of credentials serves both.

Object storage has no directories and no rename. What that changes here:

- ``rename`` of a ``gs://`` folder copies every object and then deletes the source: not atomic. It is
  used only to set aside or archive state (an interrupted move leaves both copies, never neither).
- ``write_text`` is atomic either way: a temporary file and ``os.replace`` locally; an object upload
  is all-or-nothing on Cloud Storage.
- ``create_new`` is exclusive either way: ``O_CREAT | O_EXCL`` locally; on Cloud Storage an upload with
  the precondition ``ifGenerationMatch=0``, which the service applies atomically (one of two racing
  creators gets HTTP 412).
"""

from __future__ import annotations

import functools
import os
import posixpath
import shutil
import tempfile
from typing import Any


def is_url(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is an object-storage URL (``gs://...``) rather than a local path."""
    return "://" in os.fspath(path)


def absolute(path: str | os.PathLike[str]) -> str:
    """A local path made absolute; a URL unchanged (trailing slashes dropped)."""
    path = os.fspath(path)
    return path.rstrip("/") if is_url(path) else os.path.abspath(path)


def join(base: str, *names: str) -> str:
    return posixpath.join(base, *names) if is_url(base) else os.path.join(base, *names)


def dirname(path: str) -> str:
    return posixpath.dirname(path.rstrip("/")) if is_url(path) else os.path.dirname(path)


def local_folder(path: str) -> str:
    """``path`` itself when local; for a URL, a local folder standing for it on this host (under the temporary
    directory, the same each call), for writers that need files."""
    if not is_url(path):
        return path
    return os.path.join(tempfile.gettempdir(), "aggpose_jax", *path.replace("://", "/").strip("/").split("/"))


@functools.cache
def _gcs() -> Any:
    """The gcsfs file system (imported here: an optional dependency, needed for ``gs://`` paths only)."""
    # gcsfs >= 2026 probes each bucket over gRPC for its experimental zonal/HNS support unless this is off;
    # nothing here needs those features, and the probe can stall for a minute where gRPC is not reachable.
    os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
    try:
        import gcsfs
    except ImportError:
        raise ValueError("gs:// paths need gcsfs: pip install 'aggpose-jax[gcs]'") from None
    # The arguments etils.epath (Orbax's paths) creates its gcsfs with: fsspec then hands both the same
    # instance, so one listing cache sees every change (with two, Orbax found a step that was moved away).
    return gcsfs.GCSFileSystem(finalize_on_close=True)


def _key(url: str) -> str:
    if not url.startswith("gs://"):
        raise ValueError(f"{url}: only local paths and gs:// URLs are supported")
    return url.split("://", 1)[1]


def exists(path: str) -> bool:
    return _gcs().exists(_key(path)) if is_url(path) else os.path.exists(path)


def isdir(path: str) -> bool:
    return _gcs().isdir(_key(path)) if is_url(path) else os.path.isdir(path)


def isfile(path: str) -> bool:
    return _gcs().isfile(_key(path)) if is_url(path) else os.path.isfile(path)


def listdir(path: str) -> list[str]:
    """The names in folder ``path``, sorted; [] when it does not exist."""
    if not is_url(path):
        return sorted(os.listdir(path)) if os.path.isdir(path) else []
    fs = _gcs()
    fs.invalidate_cache(_key(path))
    try:
        entries = fs.ls(_key(path), detail=False)
    except FileNotFoundError:
        return []
    return sorted({posixpath.basename(e.rstrip("/")) for e in entries} - {""})


def makedirs(path: str) -> None:
    """Create folder ``path`` with its parents (nothing to do on object storage, where folders are prefixes)."""
    if not is_url(path):
        os.makedirs(path, exist_ok=True)


def read_text(path: str) -> str:
    if not is_url(path):
        with open(path, encoding="utf-8") as f:
            return f.read()
    fs = _gcs()
    fs.invalidate_cache(_key(path))
    return fs.cat_file(_key(path)).decode("utf-8")


def write_text(path: str, text: str) -> None:
    """Write ``text`` to ``path`` atomically: readers see the old content or the new, never a part."""
    if is_url(path):
        _gcs().pipe_file(_key(path), text.encode("utf-8"))
        return
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def create_new(path: str, text: str) -> bool:
    """Create ``path`` holding ``text`` only if it does not exist (atomically); False if it exists."""
    if is_url(path):
        try:
            _gcs().pipe_file(_key(path), text.encode("utf-8"), mode="create")
        except FileExistsError:
            return False
        return True
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    return True


def stat(path: str) -> tuple[float, Any]:
    """(modification time as a UNIX time, a token that changes with every write) of file ``path``."""
    if not is_url(path):
        st = os.stat(path)
        return st.st_mtime, (st.st_ino, st.st_mtime_ns)
    fs = _gcs()
    fs.invalidate_cache(_key(path))
    info = fs.info(_key(path))
    return fs.modified(_key(path)).timestamp(), info.get("generation")


def touch(path: str) -> None:
    """Refresh the modification time of existing file ``path`` (a heartbeat); rewrites an object."""
    if is_url(path):
        _gcs().pipe_file(_key(path), _gcs().cat_file(_key(path)))
    else:
        os.utime(path)


def remove(path: str) -> None:
    """Delete file ``path``; a missing one is not an error."""
    try:
        if is_url(path):
            _gcs().rm_file(_key(path))
        else:
            os.remove(path)
    except FileNotFoundError:
        pass


def rename(src: str, dest: str) -> None:
    """Move file or folder ``src`` to ``dest`` (its parent is created). Atomic locally; on object storage a
    copy of every object followed by the deletion of the source."""
    if not is_url(src):
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        os.rename(src, dest)
        return
    fs = _gcs()
    fs.invalidate_cache(_key(src))
    if fs.isdir(_key(src)):
        fs.copy(_key(src).rstrip("/") + "/", _key(dest), recursive=True)
        fs.rm(_key(src), recursive=True)
    else:
        fs.copy(_key(src), _key(dest))
        fs.rm_file(_key(src))
    fs.invalidate_cache()  # every listing: those of the folders below src too


def put_folder(local: str, dest: str) -> None:
    """Copy the files of local folder ``local`` to folder ``dest`` (a URL or a local path), replacing
    files of the same name."""
    if not is_url(dest):
        shutil.copytree(local, dest, dirs_exist_ok=True)
        return
    fs = _gcs()
    for folder, _, files in os.walk(local):
        for name in files:
            rel = os.path.relpath(os.path.join(folder, name), local).replace(os.sep, "/")
            fs.put_file(os.path.join(folder, name), _key(join(dest, rel)))
    fs.invalidate_cache(_key(dest))


def copy_file(src: str, dest: str) -> None:
    if is_url(src) or is_url(dest):
        write_text(dest, read_text(src))
    else:
        shutil.copy2(src, dest)


__all__ = [
    "absolute",
    "copy_file",
    "create_new",
    "dirname",
    "exists",
    "is_url",
    "isdir",
    "isfile",
    "join",
    "listdir",
    "local_folder",
    "makedirs",
    "put_folder",
    "read_text",
    "remove",
    "rename",
    "stat",
    "touch",
    "write_text",
]
