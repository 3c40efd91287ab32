"""The run's folder: writable, locked to one run, its synthetic data, and the record of the config that made it.

A workdir holds ``config.json`` (the config of its checkpoints; earlier different ones in
``config_history/``), ``checkpoints/``, ``metrics.json``, ``eval/``, ``tb/`` and ``logs/``. A resume is
checked against ``config.json`` before anything is written. It is a local path or a Cloud Storage URL
(``gs://bucket/runs/l``): every file here goes through ``storage`` (what object storage changes is said
there and in ``WorkdirLock``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import threading
import time
from collections.abc import Sequence
from typing import Any

import jax

from aggpose_jax import storage
from aggpose_jax.config import DataSettings, RunConfig
from aggpose_jax.data.cli_errors import make_writable_dir
from aggpose_jax.data.synthetic import generate_synthetic
from aggpose_jax.distributed import barrier
from aggpose_jax.logs import log, write_json


def check_writable(workdir: str) -> str:
    """Create ``workdir`` and prove it writable (its absolute path, or the URL); raises ``ValueError``
    naming it otherwise."""
    try:
        if not storage.is_url(workdir):
            return make_writable_dir(workdir)
        url = storage.absolute(workdir)
        probe = storage.join(url, f".aggpose-write-test-{os.getpid()}")
        storage.write_text(probe, "")
        storage.remove(probe)
        return url
    except OSError as err:
        raise ValueError(f"--workdir: {storage.absolute(workdir)} is not writable ({err.strerror or err})") from None


def prepare_data(data: DataSettings) -> None:
    """A synthetic run (``data.root=''`` in the config; ``validate`` resolved it to <workdir>/synthetic):
    generate the set there once (process 0), or, for a ``gs://`` workdir, in a local folder by every
    process that does not find it (the same set: it is made from the seed). Changes no setting."""
    if not data.generate_synthetic:
        return
    root = data.root
    ann = os.path.join(root, "annotations", "person_keypoints_val2017.json")
    if (jax.process_index() == 0 or data.synthetic_on_each_host) and not os.path.isfile(ann):
        syn = data.synthetic
        log.info("generating a synthetic %s dataset (%d images) in %s", data.keypoints, syn.num_images, root)
        tmp = f"{root}.tmp{os.getpid()}"
        generate_synthetic(
            tmp,
            keypoints=data.keypoints,
            num_images=syn.num_images,
            seed=syn.seed,
            image_size=syn.image_size,
            val_fraction=syn.val_fraction,
        )
        try:
            os.replace(tmp, root)  # complete or absent: an interrupted run regenerates
        except OSError:  # another process of this host was first (the same set): keep its copy
            if not os.path.isfile(ann):
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    barrier("synthetic_data")  # a coordination barrier: generating may take longer than gloo's 30 s


# ---------------------------------------------------------------------------------------------- resume

RECORD = "config.json"
HISTORY = "config_history"
ARCHIVE = "archive"
# Config keys whose change alters parameter or optimizer-state shapes, or what the saved data-iterator
# position indexes: a resume with another value is refused.
INCOMPATIBLE = (
    "model.name", "model.dims", "model.heads", "model.sr_ratios", "model.stage_depths", "model.mlp_ratio",
    "data.keypoints", "data.root", "data.source", "data.tfds_name", "data.tfds_data_dir", "data.num_workers",
    "data.synthetic", "train.batch_size", "seed", "optim.name", "optim.decay_mask", "optim.grad_accum_steps",
    "freeze",
)  # fmt: skip
# Keys that only say how long to train and what to evaluate or log: changed silently but logged.
SAFE = ("train.num_steps", "train.num_epochs", "train.log_every_steps", "train.checkpoint_every_steps",
        "train.keep_checkpoints", "train.async_checkpoints", "eval.", "init_checkpoint", "init.")  # fmt: skip


class WorkdirError(ValueError):
    """The workdir cannot be used as asked (one line naming the workdir and the way on)."""


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flat(value, f"{name}."))
        else:
            out[name] = value
    return out


def _matches(key: str, patterns: Sequence[str]) -> bool:
    return any(key == p or key.startswith(p if p.endswith(".") else p + ".") for p in patterns)


def compare_configs(old: dict, new: dict) -> tuple[list[str], list[str], list[str]]:
    """(incompatible, other, safe) dotted keys whose values differ between two recorded configs."""
    a, b = _flat(old), _flat(new)
    changed = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    # Clipping on or off changes the optimizer chain (its state); another positive norm does not.
    clip = [k for k in changed if k == "optim.grad_clip_norm" and ((a.get(k) or 0) > 0) != ((b.get(k) or 0) > 0)]
    incompatible = [k for k in changed if _matches(k, INCOMPATIBLE)] + clip
    safe = [k for k in changed if _matches(k, SAFE)]
    other = [k for k in changed if k not in incompatible and k not in safe]
    return incompatible, other, safe


def has_state(workdir: str) -> bool:
    """Whether ``workdir`` holds training checkpoints, readable or set aside as unreadable."""
    checkpoints = storage.join(workdir, "checkpoints")
    listing = storage.listdir
    return any(n.isdigit() for n in listing(checkpoints)) or bool(listing(checkpoints + "_unreadable"))


def check_resume(run: RunConfig, workdir: str, *, restart: bool = False) -> bool:
    """Whether the workdir's state must be archived first (``restart`` and there is state). Without
    ``restart``, raises ``WorkdirError`` when the config cannot resume the workdir's checkpoints and logs
    the allowed differences. Reads only."""
    record = storage.join(workdir, RECORD)
    if not has_state(workdir):
        return False
    if restart:
        return True
    checkpoints = storage.join(workdir, "checkpoints")
    if not any(n.isdigit() for n in storage.listdir(checkpoints)):
        raise WorkdirError(
            f"--workdir {workdir}: every checkpoint was set aside as unreadable (in {checkpoints}_unreadable/); "
            f"add --restart to archive them and start from step 0"
        )
    if not storage.isfile(record):
        return False  # checkpoints without a recorded config: their shapes are compared on restore
    try:
        old = json.loads(storage.read_text(record))
    except (OSError, ValueError) as err:
        raise WorkdirError(f"{record}: unreadable ({err}); cannot check that the checkpoints fit this config") from None
    new = run.record()
    incompatible, other, safe = compare_configs(old, new)
    if incompatible:
        a, b = _flat(old), _flat(new)
        diffs = ", ".join(f"{k} {a.get(k)!r} -> {b.get(k)!r}" for k in incompatible[:4])
        more = f" (+{len(incompatible) - 4} more)" if len(incompatible) > 4 else ""
        raise WorkdirError(
            f"--workdir {workdir}: its checkpoints were made with another config ({diffs}{more}); "
            f"use a new --workdir, or add --restart to archive the old state and start from step 0"
        )
    if safe:
        log.info("resuming with changed settings: %s", ", ".join(safe))
    if other:
        log.warning("resuming with changed settings that may change results: %s", ", ".join(other))
    return False


def archive(workdir: str) -> str:
    """Move the workdir's state and records (checkpoints, configs, metrics, evaluations, logs) into
    ``archive/<UTC time>/``; nothing is deleted. Returns the archive folder."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    taken = set(storage.listdir(storage.join(workdir, ARCHIVE)))
    name, n = stamp, 1
    while name in taken:
        n += 1
        name = f"{stamp}-{n}"
    dest = storage.join(workdir, ARCHIVE, name)
    storage.makedirs(dest)
    for name in storage.listdir(workdir):
        if name in (ARCHIVE, "synthetic", LOCK) or name.startswith("."):
            continue
        storage.rename(storage.join(workdir, name), storage.join(dest, name))
    return dest


def record_config(run: RunConfig, workdir: str) -> None:
    """Write the run's config to ``workdir/config.json`` (process 0); a different earlier config is kept in
    ``config_history/`` first, never overwritten."""
    if jax.process_index() != 0:
        return
    path = storage.join(workdir, RECORD)
    new = run.record()
    if storage.isfile(path):
        try:
            same = json.loads(storage.read_text(path)) == new
        except (OSError, ValueError):
            same = False
        if same:
            return
        history = storage.join(workdir, HISTORY)
        storage.makedirs(history)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(storage.stat(path)[0]))
        taken = set(storage.listdir(history))
        name, n = f"config-{stamp}.json", 1
        while name in taken:
            n += 1
            name = f"config-{stamp}-{n}.json"
        storage.copy_file(path, storage.join(history, name))
    write_json(path, new)


# ------------------------------------------------------------------------------------------------ lock

LOCK = ".aggpose.lock"
HEARTBEAT_S = 30.0
STALE_S = 300.0  # a lock of another host whose heartbeat is older than this is taken over


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class WorkdirLock:
    """One run per workdir: ``workdir/.aggpose.lock`` holds {host, pid, since} and a heartbeat (its
    modification time, refreshed every ``HEARTBEAT_S``); held by process 0 of a job.

    Taking it is an exclusive create: ``O_CREAT | O_EXCL`` on a local or NFS path, an upload with the
    precondition "no such object yet" on Cloud Storage; of two runs that start together one gets it, the
    other raises ``WorkdirError`` naming the holder. A lock whose run is gone (same host: its pid is dead;
    another host: no heartbeat for ``STALE_S``) is taken over with a warning; of several takers only the
    one that first creates ``<lock>.takeover-<version>`` for the version of the lock it judged stale
    removes it, so a takeover never removes a live lock. On Cloud Storage the heartbeat rewrites the object
    (a write every 30 s) and its age is read from the object's update time.
    """

    def __init__(self, workdir: str):
        self.path = storage.join(workdir, LOCK)
        self.workdir = workdir
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _holder(self) -> dict[str, Any] | None:
        try:
            mtime, token = storage.stat(self.path)
            text = storage.read_text(self.path)
        except FileNotFoundError:
            return None
        try:
            holder = json.loads(text)
            if not isinstance(holder, dict):
                raise ValueError("not an object")
        except ValueError:
            holder = {"host": "?", "pid": -1, "since": "?"}
        return {**holder, "age_s": time.time() - mtime, "token": token}

    def _stale(self, holder: dict[str, Any]) -> bool:
        if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int) and holder["pid"] > 0:
            return not _pid_alive(holder["pid"])
        return holder["age_s"] > STALE_S

    def _take_over(self, holder: dict[str, Any]) -> None:
        """Remove the stale lock ``holder`` if this process wins the takeover of that version of it."""
        version = hashlib.sha256(str(holder["token"]).encode()).hexdigest()[:16]  # the same in every process
        marker = f"{self.path}.takeover-{version}"
        if not storage.create_new(marker, socket.gethostname()):
            return  # another process takes this version over
        try:
            current = self._holder()
            if current is not None and current["token"] == holder["token"]:
                log.warning(
                    "taking over a stale lock of pid %s on %s (since %s): that run is gone",
                    holder.get("pid"), holder.get("host"), holder.get("since"),
                )  # fmt: skip
                storage.remove(self.path)
        finally:
            storage.remove(marker)

    def acquire(self) -> None:
        me = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
        for _ in range(5):
            if storage.create_new(self.path, json.dumps(me)):
                self._thread = threading.Thread(target=self._beat, name="aggpose-lock-heartbeat", daemon=True)
                self._thread.start()
                return
            holder = self._holder()
            if holder is None:
                continue  # released meanwhile
            if not self._stale(holder):
                raise WorkdirError(
                    f"--workdir {self.workdir} is in use by pid {holder.get('pid')} on "
                    f"{holder.get('host')} since {holder.get('since')} (lock {self.path})"
                )
            self._take_over(holder)
        raise WorkdirError(f"--workdir {self.workdir}: cannot take the lock {self.path}")

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                storage.touch(self.path)
            except OSError:
                return

    def release(self) -> None:
        self._stop.set()
        try:
            holder = json.loads(storage.read_text(self.path))
            if holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
                storage.remove(self.path)
        except (OSError, ValueError):
            pass

    def __enter__(self) -> WorkdirLock:
        if jax.process_index() == 0:
            self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
