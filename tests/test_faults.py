"""Fault injection on the main job (tiny config, 6 steps, checkpoints at 3 and 6): every fault keeps the run's
state and record, the console stays short and free of tracebacks, and resuming ends bitwise equal to a run
that was never interrupted.

Console budget: at most 40 lines on stderr for any scenario (a clean 6-step run prints 7-9), no traceback, no
asyncio text; it also holds with the machine under load (a CPU hog beside the damaged-checkpoint resume).
The scenarios that train (kill -9, SIGTERM, a stop signal to the whole process group with Grain input
workers running, damaged checkpoints, ENOSPC, more steps) are marked ``long``: each runs the main job once
or twice, about 45 s a run on 2 cores; ``.ci/run`` runs them after the quick suite
(``python -m pytest -q -m long tests/test_faults.py``). The refusals and the lock takeover (changed
architecture, busy workdir, stale lock) take seconds after the shared reference run and run with the
default command.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from train_helpers import REPO, TESTS, child_env, compile_lock

LINE_BUDGET = 40
RUNNER = os.path.join(TESTS, "fault_runner.py")


def _config_file(tmp_path: Path, root: str) -> Path:
    path = tmp_path / "tiny_config.py"
    path.write_text(
        f"import sys\nsys.path.insert(0, {TESTS!r})\nfrom train_helpers import tiny_config\n"
        f"def get_config():\n    return tiny_config({root!r})\n"
    )
    return path


def _run(
    config: Path, workdir: Path | str, *extra: str, fault: str = "", timeout: int = 300, env: dict | None = None
) -> subprocess.CompletedProcess:
    env = {**child_env(), **(env or {})}
    env["AGGPOSE_FAULT"] = fault
    cmd = [sys.executable, RUNNER, "--config", str(config), "--workdir", str(workdir), "--mode", "train", *extra]
    return subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def _check_console(proc: subprocess.CompletedProcess) -> list[str]:
    lines = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert len(lines) <= LINE_BUDGET, f"{len(lines)} lines:\n" + "\n".join(lines[:60])
    for noise in (
        "Task exception was never retrieved",
        "Event loop is closed",
        "I/O operation on closed file",
        "unraisablehook",
        "asyncio",
        "TensorStore",
        "tensorstore",
    ):
        assert noise not in proc.stderr, proc.stderr[-3000:]
    print(f"console: exit {proc.returncode}, {len(lines)} lines on stderr")  # for the report (pytest -rA)
    return lines


def _abstract_params(workdir: Path) -> dict:
    from ml_collections import ConfigDict

    from aggpose_jax.config import model_config
    from aggpose_jax.params import abstract_params

    with open(workdir / "config.json") as f:
        return abstract_params(model_config(ConfigDict(json.load(f))))


def _final_params(workdir: Path) -> list[np.ndarray]:
    import jax
    from ml_collections import ConfigDict

    from aggpose_jax.config import model_config
    from aggpose_jax.params import abstract_params
    from aggpose_jax.train.checkpoints import restore_params

    with open(workdir / "config.json") as f:
        cfg = model_config(ConfigDict(json.load(f)))
    step, params = restore_params(str(workdir / "checkpoints"), abstract_params(cfg))
    assert step == 6
    return [np.asarray(a) for a in jax.tree.leaves(params)]


def _assert_same(a: list[np.ndarray], b: list[np.ndarray]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)  # bitwise


@pytest.fixture(scope="module")
def setup(tmp_path_factory, synthetic_coco_root):
    """The config file and an uninterrupted reference run (its final parameters)."""
    base = tmp_path_factory.mktemp("faults")
    config = _config_file(base, synthetic_coco_root)
    with compile_lock():
        proc = _run(config, base / "reference")
    assert proc.returncode == 0, proc.stderr[-3000:]
    _check_console(proc)
    return config, _final_params(base / "reference"), base / "reference"


@pytest.mark.long
@pytest.mark.parametrize(
    "fault, left",
    [("kill_at_step=2", []), ("kill_at_step=4", ["3"]), ("kill_during_save=3", None)],
    ids=["before-first-checkpoint", "between-checkpoints", "during-async-save"],
)
def test_kill_9_then_resume_is_bitwise_equal(setup, tmp_path, fault, left):
    config, reference, _ = setup
    workdir = tmp_path / "wd"
    killed = _run(config, workdir, fault=fault)
    assert killed.returncode == -signal.SIGKILL
    steps = (
        sorted(n for n in os.listdir(workdir / "checkpoints") if n.isdigit())
        if (workdir / "checkpoints").exists()
        else []
    )
    if left is not None:
        assert steps == left
    assert (workdir / "config.json").is_file()
    resumed = _run(config, workdir)  # the stale lock of the killed run is taken over
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    lines = _check_console(resumed)
    assert any("stale lock" in line for line in lines), lines
    _assert_same(_final_params(workdir), reference)


@pytest.mark.long
def test_sigterm_saves_and_the_rerun_completes_bitwise_equal(setup, tmp_path):
    config, reference, _ = setup
    workdir = tmp_path / "wd"
    env = child_env()
    cmd = [sys.executable, RUNNER, "--config", str(config), "--workdir", str(workdir), "--mode", "train"]
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stderr=subprocess.PIPE, text=True)
    lines = []
    for line in proc.stderr:  # wait for the first progress line, then preempt
        lines.append(line)
        if "step 2/6" in line:
            proc.send_signal(signal.SIGTERM)
            break
    rest = proc.stderr.read()
    assert proc.wait(timeout=120) == 0, "".join(lines) + rest
    assert "preempted" in rest or "stop requested" in rest, rest
    assert sorted(n for n in os.listdir(workdir / "checkpoints") if n.isdigit()) != []
    resumed = _run(config, workdir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _check_console(resumed)
    _assert_same(_final_params(workdir), reference)


def _group(pgid: int) -> dict[int, str]:
    """pid -> command line of every live process in process group ``pgid`` (zombies excluded)."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            found[int(entry)] = cmdline
    return found


@pytest.mark.long
@pytest.mark.parametrize("speed", ["fast-steps", "slow-steps"])
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_a_stop_signal_to_the_process_group_with_input_workers_saves_once_and_exits_quietly(
    setup, tmp_path, signum, speed
):
    """As ``timeout``, SLURM, systemd and Ctrl-C send it: to the main process and its 2 Grain workers at once.
    The workers leave stopping to the main process: one checkpoint, exit 0 (README "Faults"), a quiet
    console, and no process of the group left running."""
    config, _, _ = setup
    workdir = tmp_path / "wd"
    env = child_env()
    env["AGGPOSE_FAULT"] = "slow_steps=2" if speed == "slow-steps" else ""
    cmd = [sys.executable, RUNNER, "--config", str(config), "--workdir", str(workdir), "--mode", "train"]
    cmd += ["--config.data.num_workers=2", "--config.train.num_steps=400", "--config.train.checkpoint_every_steps=0"]
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stderr=subprocess.PIPE, text=True, start_new_session=True)
    pgid = proc.pid  # its own session: the signal reaches this run only
    try:
        lines = []
        for line in proc.stderr:  # batches have come from the workers: preempt the whole group
            lines.append(line)
            if "step 2/400" in line:
                break
        workers = [pid for pid, cmdline in _group(pgid).items() if "spawn_main" in cmdline]
        assert len(workers) == 2, (_group(pgid), "".join(lines))
        os.killpg(pgid, signum)
        rest = proc.stderr.read()
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(pgid, signal.SIGKILL)
            proc.wait()
    console = subprocess.CompletedProcess(cmd, code, "", "".join(lines) + rest)
    assert code == 0, console.stderr[-3000:]
    out = _check_console(console)
    for noise in ("KeyboardInterrupt", "leaked shared_memory", "terminated unexpectedly", "resource_tracker"):
        assert noise not in console.stderr, console.stderr[-3000:]
    saved = [line for line in out if "stop requested" in line]
    assert len(saved) == 1 and f"signal {int(signum)}" in saved[0], out
    steps = sorted(n for n in os.listdir(workdir / "checkpoints") if n.isdigit())
    assert len(steps) == 1 and f"saved step {steps[0]} " in saved[0], (steps, saved)
    deadline = time.monotonic() + 30
    while _group(pgid) and time.monotonic() < deadline:  # orphaned workers would be re-parented, not gone
        time.sleep(0.5)
    assert _group(pgid) == {}, _group(pgid)


def _copy_reference(setup, tmp_path: Path) -> Path:
    workdir = tmp_path / "wd"
    shutil.copytree(setup[2], workdir)
    return workdir


def _array_files(step_dir: Path) -> list[Path]:
    return [p for p in (step_dir / "state").rglob("*") if p.is_file() and "d" in p.parent.name and p.stat().st_size]


@contextlib.contextmanager
def _cpu_hog(processes: int = 2) -> Iterator[None]:
    """Busy-loop processes (one per core of CI's 2) running for the duration of the block."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(processes)]
    try:
        yield
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


@pytest.mark.long
@pytest.mark.parametrize(
    "damage", ["truncated-array", "truncated-array-under-load", "deleted-metadata", "empty-step-folder"]
)
def test_damaged_latest_checkpoint_is_set_aside_and_training_resumes(setup, tmp_path, damage):
    """Under load: the restore's failed attempts leave Orbax's background threads writing late; the console
    budget holds all the same (``train/checkpoints.py``: nothing process-wide is swapped in Python)."""
    config, reference, _ = setup
    workdir = _copy_reference(setup, tmp_path)
    latest = workdir / "checkpoints" / "6"
    if damage.startswith("truncated-array"):
        files = _array_files(latest)
        assert files
        for p in files:
            with open(p, "r+b") as f:
                f.truncate(p.stat().st_size // 2)
    elif damage == "deleted-metadata":
        for p in latest.rglob("*"):
            if p.is_file() and "metadata" in p.name.lower():
                p.unlink()
    else:
        shutil.rmtree(latest)
        latest.mkdir()
    with _cpu_hog() if damage.endswith("under-load") else contextlib.nullcontext():
        proc = _run(config, workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = _check_console(proc)
    if damage != "empty-step-folder" or (workdir / "checkpoints_unreadable").exists():
        warned = [line for line in lines if "unreadable" in line]
        assert len(warned) == 1 and len(warned[0].split(" WARNING ", 1)[-1]) <= 200, lines
        assert [n.split("-")[0] for n in os.listdir(workdir / "checkpoints_unreadable")] == ["6"]
    _assert_same(_final_params(workdir), reference)  # retrained 3 -> 6, same numbers


@pytest.mark.long
def test_every_checkpoint_unreadable_stops_non_zero(setup, tmp_path):
    config, _, _ = setup
    workdir = _copy_reference(setup, tmp_path)
    for step in ("3", "6"):
        for p in _array_files(workdir / "checkpoints" / step):
            p.write_bytes(b"")
    before = (workdir / "config.json").read_text()
    proc = _run(config, workdir)
    assert proc.returncode == 1
    lines = _check_console(proc)
    assert lines[-1].startswith("error: none of the 2 checkpoints") and "--restart" in lines[-1], lines
    assert (workdir / "config.json").read_text() == before
    assert sorted(n.split("-")[0] for n in os.listdir(workdir / "checkpoints_unreadable")) == ["3", "6"]
    again = _run(config, workdir)  # nothing readable is left: still no silent start from step 0
    assert again.returncode == 2 and "--restart" in _check_console(again)[-1], again.stderr[-2000:]
    restarted = _run(config, workdir, "--restart")  # starting over happens on request only
    assert restarted.returncode == 0, restarted.stderr[-3000:]
    (archived,) = os.listdir(workdir / "archive")
    assert {"checkpoints_unreadable", "config.json"} <= set(os.listdir(workdir / "archive" / archived))


def test_changed_architecture_is_refused_before_anything_is_written(setup, tmp_path):
    config, _, _ = setup
    workdir = _copy_reference(setup, tmp_path)
    snapshot = {p: p.stat().st_mtime_ns for p in workdir.rglob("*")}
    proc = _run(config, workdir, "--config.model.dims=(16,32,40,72)")
    assert proc.returncode == 2
    lines = _check_console(proc)
    assert "model.dims" in lines[-1] and "--restart" in lines[-1] and "new --workdir" in lines[-1], lines
    after = {p: p.stat().st_mtime_ns for p in workdir.rglob("*") if p.name != ".aggpose.lock"}
    assert after == {p: t for p, t in snapshot.items() if p.name != ".aggpose.lock"}  # nothing written


@pytest.mark.long
def test_more_steps_is_allowed_and_logged(setup, tmp_path):
    config, _, _ = setup
    workdir = _copy_reference(setup, tmp_path)
    proc = _run(config, workdir, "--config.train.num_steps=9")
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = _check_console(proc)
    assert any("changed settings: train.num_steps" in line for line in lines), lines
    assert "9" in sorted(os.listdir(workdir / "checkpoints"))
    history = os.listdir(workdir / "config_history")
    assert len(history) == 1  # the earlier config kept beside the new one
    with open(workdir / "config_history" / history[0]) as f:
        assert json.load(f)["train"]["num_steps"] == 6


def test_a_second_run_on_a_busy_workdir_exits_within_seconds(setup, tmp_path):
    config, _, _ = setup
    workdir = _copy_reference(setup, tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        (workdir / ".aggpose.lock").write_text(
            json.dumps({"host": socket.gethostname(), "pid": holder.pid, "since": "2026-12-01 09:00:00 UTC"})
        )
        start = time.monotonic()
        proc = _run(config, workdir)
        assert time.monotonic() - start < 60
        assert proc.returncode == 2
        lines = _check_console(proc)
        assert f"in use by pid {holder.pid} on {socket.gethostname()} since 2026-12-01 09:00:00" in lines[-1], lines
    finally:
        holder.kill()
        holder.wait()


def test_a_stale_lock_is_taken_over_with_a_warning(setup, tmp_path):
    config, _, _ = setup
    workdir = _copy_reference(setup, tmp_path)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # reaped: its pid names no process
    lock = {"host": socket.gethostname(), "pid": gone.pid, "since": "2026-12-01 09:00:00 UTC"}
    (workdir / ".aggpose.lock").write_text(json.dumps(lock))
    proc = _run(config, workdir)  # the finished reference run: nothing to train
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = _check_console(proc)
    stale = [line for line in lines if "stale lock" in line]
    assert len(stale) == 1 and f"pid {gone.pid}" in stale[0], lines
    assert any("run already complete: step 6 of 6" in line for line in lines), lines
    assert not (workdir / ".aggpose.lock").exists()  # released at the end


@pytest.mark.long
def test_disk_full_during_a_save_stops_with_one_line_and_keeps_the_previous_checkpoint(setup, tmp_path):
    config, _, _ = setup
    workdir = tmp_path / "wd"
    proc = _run(config, workdir, fault="enospc_at_save=6")
    assert proc.returncode == 1
    lines = _check_console(proc)
    assert "No space left on device" in lines[-1] and "step 3" in lines[-1], lines
    import jax

    from aggpose_jax.train.checkpoints import restore_params

    steps = sorted(int(n) for n in os.listdir(workdir / "checkpoints") if n.isdigit())
    assert steps == [3]  # the previous checkpoint, intact and readable
    step, params = restore_params(str(workdir / "checkpoints"), _abstract_params(workdir))
    assert step == 3 and all(np.isfinite(np.asarray(a)).all() for a in jax.tree.leaves(params))


def _gcs_tool(env: dict[str, str], *args: str) -> str:
    cmd = [sys.executable, os.path.join(TESTS, "gcs_tool.py"), *args]
    proc = subprocess.run(cmd, env={**child_env(), **env}, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.long
def test_a_gs_workdir_on_a_cloud_storage_emulator_kill_busy_resume(setup, gcs_emulator, tmp_path):
    """A workdir on Cloud Storage (README "Cloud Storage"): a run killed after its first checkpoint leaves
    it committed on gs://; a second run while a live run holds the lock is refused and writes nothing; the
    rerun takes the stale lock over, resumes, evaluates, and ends bitwise equal to the local reference run,
    with its records (config, metrics, evaluation files, TensorBoard events) on gs:// and the lock gone;
    then the latest checkpoint damaged on the bucket is set aside and the run retrained from step 3."""
    config, reference, _ = setup
    env = gcs_emulator
    url = f"gs://bucket/faults-{os.getpid()}/run"
    killed = _run(config, url, fault="kill_at_step=4", env=env)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    objects = json.loads(_gcs_tool(env, "objects", url))
    assert "checkpoints/3/commit_success.txt" in objects and "config.json" in objects, sorted(objects)
    assert not any(name.startswith("checkpoints/6") for name in objects)
    assert ".aggpose.lock" in objects  # the killed run's, now stale

    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    try:
        live = {"host": socket.gethostname(), "pid": holder.pid, "since": "2026-12-05 09:00:00 UTC"}
        _gcs_tool(env, "write", f"{url}/.aggpose.lock", json.dumps(live))
        before = json.loads(_gcs_tool(env, "objects", url))
        busy = _run(config, url, env=env)
        assert busy.returncode == 2, busy.stderr[-3000:]
        lines = _check_console(busy)
        assert f"--workdir {url} is in use by pid {holder.pid} on {socket.gethostname()}" in lines[-1], lines
        assert json.loads(_gcs_tool(env, "objects", url)) == before  # nothing written, nothing removed
    finally:
        holder.kill()
        holder.wait()

    resumed = _run(config, url, "--mode=train_and_eval", env=env)  # the holder is gone: its lock is stale
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    lines = _check_console(resumed)
    assert any("stale lock" in line for line in lines), lines
    assert any("from step 3" in line for line in lines), lines
    objects = json.loads(_gcs_tool(env, "objects", url))
    for name in ("checkpoints/6/commit_success.txt", "metrics.json", "eval/step_00000006/stats.json"):
        assert name in objects, sorted(objects)
    assert any(name.startswith("tb/events.out.tfevents") for name in objects), sorted(objects)
    assert ".aggpose.lock" not in objects
    _gcs_tool(env, "params", url, str(tmp_path / "params.npz"))
    with np.load(tmp_path / "params.npz") as saved:
        assert int(saved["step"]) == 6
        _assert_same([saved[f"arr_{i}"] for i in range(len(reference))], reference)

    # The latest checkpoint damaged on the bucket: set aside (copied, then deleted), retrained from step 3.
    _gcs_tool(env, "truncate-arrays", f"{url}/checkpoints/6")
    again = _run(config, url, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    lines = _check_console(again)
    assert any("checkpoint step 6 is unreadable" in line for line in lines), lines
    objects = json.loads(_gcs_tool(env, "objects", url))
    assert any(name.startswith("checkpoints_unreadable/6-") for name in objects), sorted(objects)
    _gcs_tool(env, "params", url, str(tmp_path / "params.npz"))
    with np.load(tmp_path / "params.npz") as saved:
        _assert_same([saved[f"arr_{i}"] for i in range(len(reference))], reference)
