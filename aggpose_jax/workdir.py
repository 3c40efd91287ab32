"""The run's folder: writable, locked to one run, its synthetic data, and the record of the config that made it.

A workdir holds ``config.json`` (the config of its checkpoints; earlier different ones in
``config_history/``), ``checkpoints/``, ``metrics.json``, ``eval/``, ``tb/`` and ``logs/``. A resume is
checked against ``config.json`` before anything is written.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
from collections.abc import Sequence
from typing import Any

import jax

from aggpose_jax.config import DataSettings, RunConfig
from aggpose_jax.data.cli_errors import make_writable_dir
from aggpose_jax.data.synthetic import generate_synthetic
from aggpose_jax.distributed import barrier
from aggpose_jax.logs import log, write_json


def check_writable(workdir: str) -> str:
    """Create ``workdir`` and prove it writable; raises ``ValueError`` naming it otherwise."""
    try:
        return make_writable_dir(workdir)
    except OSError as err:
        raise ValueError(f"--workdir: {os.path.abspath(workdir)} is not writable ({err.strerror or err})") from None


def prepare_data(data: DataSettings) -> None:
    """A synthetic run (``data.root=''`` in the config; ``validate`` resolved it to <workdir>/synthetic):
    generate the set there once (process 0). Changes no setting."""
    if not data.generate_synthetic:
        return
    root = data.root
    ann = os.path.join(root, "annotations", "person_keypoints_val2017.json")
    if jax.process_index() == 0 and not os.path.isfile(ann):
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
        os.replace(tmp, root)  # complete or absent: an interrupted run regenerates
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


def _listing(path: str) -> list[str]:
    return os.listdir(path) if os.path.isdir(path) else []


def has_state(workdir: str) -> bool:
    """Whether ``workdir`` holds training checkpoints, readable or set aside as unreadable."""
    checkpoints = os.path.join(workdir, "checkpoints")
    return any(n.isdigit() for n in _listing(checkpoints)) or bool(_listing(checkpoints + "_unreadable"))


def check_resume(run: RunConfig, workdir: str, *, restart: bool = False) -> bool:
    """Whether the workdir's state must be archived first (``restart`` and there is state). Without
    ``restart``, raises ``WorkdirError`` when the config cannot resume the workdir's checkpoints and logs
    the allowed differences. Reads only."""
    record = os.path.join(workdir, RECORD)
    if not has_state(workdir):
        return False
    if restart:
        return True
    checkpoints = os.path.join(workdir, "checkpoints")
    if not any(n.isdigit() for n in _listing(checkpoints)):
        raise WorkdirError(
            f"--workdir {workdir}: every checkpoint was set aside as unreadable (in {checkpoints}_unreadable/); "
            f"add --restart to archive them and start from step 0"
        )
    if not os.path.isfile(record):
        return False  # checkpoints without a recorded config: their shapes are compared on restore
    try:
        with open(record, encoding="utf-8") as f:
            old = json.load(f)
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
    dest = os.path.join(workdir, ARCHIVE, stamp)
    n = 1
    while os.path.exists(dest):
        n += 1
        dest = os.path.join(workdir, ARCHIVE, f"{stamp}-{n}")
    os.makedirs(dest)
    for name in sorted(os.listdir(workdir)):
        if name in (ARCHIVE, "synthetic", LOCK) or name.startswith("."):
            continue
        os.rename(os.path.join(workdir, name), os.path.join(dest, name))
    return dest


def record_config(run: RunConfig, workdir: str) -> None:
    """Write the run's config to ``workdir/config.json`` (process 0); a different earlier config is kept in
    ``config_history/`` first, never overwritten."""
    if jax.process_index() != 0:
        return
    path = os.path.join(workdir, RECORD)
    new = run.record()
    if os.path.isfile(path):
        try:
            with open(path, encoding="utf-8") as f:
                same = json.load(f) == new
        except (OSError, ValueError):
            same = False
        if same:
            return
        history = os.path.join(workdir, HISTORY)
        os.makedirs(history, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(os.path.getmtime(path)))
        kept = os.path.join(history, f"config-{stamp}.json")
        n = 1
        while os.path.exists(kept):
            n += 1
            kept = os.path.join(history, f"config-{stamp}-{n}.json")
        shutil.copy2(path, kept)
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
    """One run per workdir: ``workdir/.aggpose.lock`` holds {host, pid, since} and a heartbeat (its mtime).

    Taken with O_CREAT|O_EXCL (atomic on local filesystems and NFS); held by process 0 of a job. A lock
    whose process is gone (same host: the pid is dead; another host: no heartbeat for ``STALE_S``) is
    taken over with a warning. A busy workdir raises ``WorkdirError`` naming the holder.
    """

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, LOCK)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _holder(self) -> dict[str, Any] | None:
        try:
            with open(self.path, encoding="utf-8") as f:
                holder = json.load(f)
            holder["age_s"] = time.time() - os.path.getmtime(self.path)
            return holder
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {"host": "?", "pid": -1, "since": "?", "age_s": time.time() - os.path.getmtime(self.path)}

    def _stale(self, holder: dict[str, Any]) -> bool:
        if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int) and holder["pid"] > 0:
            return not _pid_alive(holder["pid"])
        return holder["age_s"] > STALE_S

    def acquire(self) -> None:
        me = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder is None:
                    continue  # released meanwhile
                if not self._stale(holder):
                    raise WorkdirError(
                        f"--workdir {os.path.dirname(self.path)} is in use by pid {holder.get('pid')} on "
                        f"{holder.get('host')} since {holder.get('since')} (lock {self.path})"
                    ) from None
                log.warning(
                    "taking over a stale lock of pid %s on %s (since %s): that run is gone",
                    holder.get("pid"), holder.get("host"), holder.get("since"),
                )  # fmt: skip
                stale = f"{self.path}.stale-{os.getpid()}"
                try:
                    os.rename(self.path, stale)  # atomic: only one taker wins
                    os.remove(stale)
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(me, f)
            self._thread = threading.Thread(target=self._beat, name="aggpose-lock-heartbeat", daemon=True)
            self._thread.start()
            return
        raise WorkdirError(f"--workdir {os.path.dirname(self.path)}: cannot take the lock {self.path}")

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self.path)
            except OSError:
                return

    def release(self) -> None:
        self._stop.set()
        try:
            with open(self.path, encoding="utf-8") as f:
                mine = json.load(f).get("pid") == os.getpid()
            if mine:
                os.remove(self.path)
        except (OSError, ValueError):
            pass

    def __enter__(self) -> WorkdirLock:
        if jax.process_index() == 0:
            self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
