"""Multi-process start-up: the environment contract of ``launch/`` -> ``jax.distributed.initialize()``.

``maybe_initialize_distributed()`` must run before anything touches a device (``main.py`` calls it
first). It reads, for process ``i`` of ``N`` (``launch/local_multiprocess.sh`` sets them):

    AGGPOSE_DISTRIBUTED=1                    ask for a multi-process job
    AGGPOSE_COORDINATOR=HOST:PORT            coordinator (process 0 serves it)
    AGGPOSE_NUM_PROCESSES=N                  processes in the job
    AGGPOSE_PROCESS_ID=i                     this process, 0..N-1
    AGGPOSE_LOCAL_DEVICES=K                  CPU only: K forced host devices per process
    AGGPOSE_FAULT_TIMEOUT=S                  optional, seconds (default 60): see below

CPU mode (``AGGPOSE_LOCAL_DEVICES`` set, or ``JAX_PLATFORMS=cpu``): ``XLA_FLAGS`` gets
``--xla_force_host_platform_device_count=K`` (replacing any count already there) and the CPU
collectives between processes run over gloo (TCP). GPU mode: the launcher sets
``CUDA_VISIBLE_DEVICES``, nothing else is needed. With ``AGGPOSE_DISTRIBUTED=1`` alone (Cloud TPU
VMs, SLURM) or ``JAX_COORDINATOR_ADDRESS``, JAX discovers the coordinator and the process ids.

Faults: the coordination service declares a process dead when its heartbeats stop for
``AGGPOSE_FAULT_TIMEOUT`` seconds and then terminates every other process (SIGABRT, a non-zero
status); a process that raises waits at most as long at its exit barrier for the others before it
aborts too. So when one process dies (crash, SIGKILL, OOM) the others exit non-zero within
``AGGPOSE_FAULT_TIMEOUT`` + a few seconds instead of hanging in a collective; a peer whose sockets
close (e.g. process 0 killed) usually makes the others fail at once. SIGTERM is caught by JAX's
preemption notifier in multi-process jobs; the trainer then saves one checkpoint at a step all
processes agree on (``train/loop.py``).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass

DEFAULT_FAULT_TIMEOUT_S = 60
INIT_TIMEOUT_S = 300  # how long processes wait for each other at start-up
_TRUE = ("1", "true", "yes")


@dataclass(frozen=True)
class DistributedSpec:
    """What the environment asks for. ``coordinator`` None: JAX auto-detects (TPU VMs, SLURM)."""

    coordinator: str | None
    num_processes: int | None
    process_id: int | None
    local_devices: int | None  # CPU devices per process (CPU mode), None: the platform's devices
    cpu: bool
    fault_timeout_s: int


def _int_var(env: Mapping[str, str], name: str, minimum: int) -> int | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {raw!r}")
    return value


def spec_from_env(env: Mapping[str, str] | None = None) -> DistributedSpec | None:
    """The multi-process request in ``env`` (default ``os.environ``); None for a single-process run.

    Raises ``ValueError`` naming the variable when the contract is broken (e.g. a coordinator without
    a process id).
    """
    env = os.environ if env is None else env
    want = env.get("AGGPOSE_DISTRIBUTED", "").strip().lower() in _TRUE
    coordinator = env.get("AGGPOSE_COORDINATOR", "").strip() or None
    if not (want or coordinator or env.get("JAX_COORDINATOR_ADDRESS")):
        return None
    num = _int_var(env, "AGGPOSE_NUM_PROCESSES", 1)
    pid = _int_var(env, "AGGPOSE_PROCESS_ID", 0)
    local = _int_var(env, "AGGPOSE_LOCAL_DEVICES", 1)
    timeout = _int_var(env, "AGGPOSE_FAULT_TIMEOUT", 1) or DEFAULT_FAULT_TIMEOUT_S
    if coordinator is not None:
        if not re.fullmatch(r"\S+:\d{1,5}", coordinator):
            raise ValueError(f"AGGPOSE_COORDINATOR: expected HOST:PORT, got {coordinator!r}")
        for name, value in (("AGGPOSE_NUM_PROCESSES", num), ("AGGPOSE_PROCESS_ID", pid)):
            if value is None:
                raise ValueError(f"{name}: required with AGGPOSE_COORDINATOR={coordinator}")
        assert num is not None and pid is not None
        if pid >= num:
            raise ValueError(f"AGGPOSE_PROCESS_ID: {pid} is not below AGGPOSE_NUM_PROCESSES={num}")
    platforms = env.get("JAX_PLATFORMS", "").strip().lower()
    cpu = local is not None or platforms == "cpu"
    return DistributedSpec(coordinator, num, pid, local, cpu, timeout)


def set_host_device_count(count: int, env: MutableMapping[str, str] | None = None) -> str:
    """Put ``--xla_force_host_platform_device_count=count`` into ``env['XLA_FLAGS']`` (replacing one
    already there, keeping the other flags); returns the new value."""
    env = os.environ if env is None else env
    flags = re.sub(r"--xla_force_host_platform_device_count=\S*", "", env.get("XLA_FLAGS", "")).split()
    env["XLA_FLAGS"] = " ".join([f"--xla_force_host_platform_device_count={int(count)}", *flags])
    return env["XLA_FLAGS"]


class _WarningsUnlessProcess0(logging.Filter):
    """Processes other than 0 log warnings and errors only (process 0 tells the story once)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return True
        import jax

        return jax.process_index() == 0


def is_initialized() -> bool:
    from jax._src import distributed

    return distributed.global_state.client is not None


BARRIER_TIMEOUT_S = 3600
_barriers: dict[str, int] = {}


def barrier(name: str, timeout_s: float = BARRIER_TIMEOUT_S) -> None:
    """Every process waits here for the others (a coordination-service barrier: no device collective).

    Use it before the first run of a program with collectives when the processes may arrive far apart
    (one compiled while another loaded from a cache, process 0 scored an evaluation): the CPU (gloo)
    collectives give up when the peers of a new communicator are more than 30 s apart. A dead process
    still ends the wait within the fault timeout. No-op in a single-process run.
    """
    if not is_initialized():
        return
    import jax
    from jax._src import distributed

    if jax.process_count() == 1:
        return
    _barriers[name] = _barriers.get(name, 0) + 1  # every process passes the same barriers in the same order
    distributed.global_state.client.wait_at_barrier(f"aggpose/{name}/{_barriers[name]}", int(timeout_s * 1000))


def maybe_initialize_distributed(env: Mapping[str, str] | None = None) -> bool:
    """Start the JAX distributed runtime when the environment asks for it (see the module docstring).

    Returns True in a multi-process job (also when it was already started), False otherwise. Must run
    before any JAX backend exists; raises ``RuntimeError`` otherwise, ``ValueError`` on a bad contract.
    """
    spec = spec_from_env(env)
    if spec is None:
        return False
    if is_initialized():
        return True
    import jax
    from jax._src import xla_bridge

    if xla_bridge.backends_are_initialized():
        raise RuntimeError(
            "maybe_initialize_distributed: a JAX backend already exists; call it before anything touches devices"
        )
    if spec.local_devices is not None:
        set_host_device_count(spec.local_devices)
        jax.config.update("jax_num_cpu_devices", spec.local_devices)
    if spec.cpu:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    timeouts = dict(
        initialization_timeout=INIT_TIMEOUT_S,
        heartbeat_timeout_seconds=spec.fault_timeout_s,
        shutdown_timeout_seconds=spec.fault_timeout_s,
    )
    if spec.coordinator is not None:
        jax.distributed.initialize(
            coordinator_address=spec.coordinator,
            num_processes=spec.num_processes,
            process_id=spec.process_id,
            **timeouts,
        )
    else:  # TPU VMs, SLURM: the cluster tells JAX who is who
        jax.distributed.initialize(**timeouts)
    logger = logging.getLogger("aggpose_jax")  # the logger and its handlers (records of child loggers)
    for target in (logger, *logger.handlers):
        if not any(isinstance(f, _WarningsUnlessProcess0) for f in target.filters):
            target.addFilter(_WarningsUnlessProcess0())
    return True


def local_process_env(
    process_id: int,
    num_processes: int,
    port: int,
    *,
    local_devices: int | None = None,
    fault_timeout_s: int | None = None,
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment of process ``process_id`` of a job on this host (what ``launch/local_multiprocess.sh``
    sets): ``local_devices`` given = CPU mode with that many devices per process."""
    env = dict(os.environ if base is None else base)
    env.update(
        AGGPOSE_DISTRIBUTED="1",
        AGGPOSE_COORDINATOR=f"127.0.0.1:{int(port)}",
        AGGPOSE_NUM_PROCESSES=str(int(num_processes)),
        AGGPOSE_PROCESS_ID=str(int(process_id)),
    )
    if local_devices is not None:
        env.update(AGGPOSE_LOCAL_DEVICES=str(int(local_devices)), JAX_PLATFORMS="cpu")
    if fault_timeout_s is not None:
        env["AGGPOSE_FAULT_TIMEOUT"] = str(int(fault_timeout_s))
    return env


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (for a local coordinator)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


__all__ = [
    "BARRIER_TIMEOUT_S",
    "DEFAULT_FAULT_TIMEOUT_S",
    "barrier",
    "DistributedSpec",
    "free_port",
    "is_initialized",
    "local_process_env",
    "maybe_initialize_distributed",
    "set_host_device_count",
    "spec_from_env",
]
