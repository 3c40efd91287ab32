"""Multi-process training on one host: N JAX processes x K CPU devices (gloo collectives) against 1 x 8.

The runs (each made once, when a test first needs it; the tiny config of ``train_helpers`` with a global
batch of 8, 6 steps, checkpoints every 3 steps):

    A  1 process x 8 devices, evaluated at the end          the reference
    P  2 processes x 4 devices, SIGTERM to both during step 3  one consistent checkpoint at an agreed step k
    Q  2 x 4 rerun in P's workdir: k -> 6, evaluated       P + Q = a 2-process run with a preemption
    C  1 x 8 resumes a copy of P's step-k checkpoint        N=2 -> M=1
    D  2 x 4 with FSDP resumes A's step-3 checkpoint        N=1 -> M=2, FSDP across processes
    E  launch/local_multiprocess.sh -n 2 -k 4 -- main --mode eval on A's final checkpoint
    F  2 x 4, process 1 SIGKILLed after step 4              the other ends in time; step 3 intact

"Equal" for losses and parameters means within float tolerance (rtol 1e-5, atol 2e-6): another process
layout sums gradients across processes in another order, so bitwise equality is not expected (the
single-process resume of tests/test_train.py is bitwise). Bitwise: F's step-3 checkpoint against P's
(the same layout and program). The data position: the global batches of every run, row by row (each
row tagged with its person), are those of the uninterrupted 1-process run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
from train_helpers import REPO, TESTS, child_env, compile_lock

from aggpose_jax.distributed import free_port, local_process_env

FAULT_TIMEOUT_S = 10  # AGGPOSE_FAULT_TIMEOUT of run F (the default is 60 s)
RTOL, ATOL = 1e-5, 2e-6

_DRIVER = r"""
import json, os, signal, sys, time
spec = json.loads(sys.argv[1])
from aggpose_jax.distributed import maybe_initialize_distributed
maybe_initialize_distributed()
import jax, numpy as np
from aggpose_jax import sharding as shd
from aggpose_jax.data import transforms as T
from aggpose_jax.logs import setup_logging
from aggpose_jax.params import named_leaves
from aggpose_jax.train.loop import Trainer
from train_helpers import tiny_config

setup_logging()
plain = T.TrainTransform.random_map


def tagged(self, element, rng):  # every training row says which person it is: (image id, box)
    out = plain(self, element, rng)
    out["person"] = np.asarray([element["image_id"], *element["bbox"]], np.float64)
    return out


T.TrainTransform.random_map = tagged
config = tiny_config(spec["root"], **spec["train"])
config.model.kernels = "xla"  # the plain layers: a quicker compile than the CPU kernels, and what GPUs run
pid = jax.process_index()
rows, losses = [], {}
trainer = None


def callback(step, batch):
    rows.append(batch["person"].tolist())
    if step == spec.get("sigterm_at"):
        os.kill(os.getpid(), signal.SIGTERM)  # both processes, during the third step
        time.sleep(1.5)
    if step == spec.get("kill_at"):
        trainer.checkpointer.wait()  # both processes: the last checkpoint is complete
        if pid == 1:
            with open(spec["out"] + ".killed", "w") as f:
                f.write(str(time.time()))
            os.kill(os.getpid(), signal.SIGKILL)
    return {k: v for k, v in batch.items() if k != "person"}


trainer = Trainer(config, spec["workdir"], batch_callback=callback)
flush = trainer._flush


def recording(pending):  # every step's metrics pass through here
    losses.update({step: float(m["loss"]) for step, m in pending})
    return flush(pending)


trainer._flush = recording
result = trainer.fit(evaluate=spec.get("evaluate", False))
trainer.close()
out = {"step": result.step, "preempted": result.preempted, "metrics": result.metrics, "rows": rows,
       "losses": [losses[s] for s in sorted(losses)], "processes": jax.process_count(),
       "devices": jax.device_count()}
if spec.get("epoch"):  # this process's rows of the first epoch's global batches (and a little more)
    it = trainer.loader.iterator(0)
    n = len(trainer.train_source)
    out["epoch_rows"] = [next(it)["person"].tolist() for _ in range(-(-n // trainer.global_batch))]
    it.close()
    src = trainer.train_source
    out["people"] = [[float(src[i]["image_id"]), *map(float, src[i]["bbox"])] for i in range(n)]
params = jax.jit(lambda t: t, out_shardings=shd.replicated(trainer.mesh))(trainer.state["params"])
if pid == 0:
    np.savez(spec["out"] + ".npz", **dict(named_leaves(jax.device_get(params))))
with open(f"{spec['out']}.{pid}.json", "w") as f:
    json.dump(out, f)
"""


def _start(spec: dict, devices: int, processes: int = 1, **extra: str) -> list[subprocess.Popen]:
    """The driver as ``processes`` processes x ``devices`` CPU devices (a plain process when 1)."""
    port = free_port()
    procs = []
    for i in range(processes):
        env = child_env(devices)
        if processes > 1:
            env = local_process_env(i, processes, port, local_devices=devices, base=env)
        env.update(extra)
        with open(f"{spec['out']}.log{i}", "w") as log:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-c", _DRIVER, json.dumps(spec)], env=env, cwd=REPO, stdout=log, stderr=log
                )
            )
    return procs


def _wait(procs: list[subprocess.Popen], spec: dict, timeout: float = 400) -> list[int]:
    deadline = time.monotonic() + timeout
    codes = []
    for p in procs:
        try:
            codes.append(p.wait(timeout=max(1.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise AssertionError(f"processes still running after {timeout} s:\n{_logs(spec)}") from None
    return codes


def _logs(spec: dict) -> str:
    folder, stem = os.path.split(spec["out"])
    parts = []
    for name in sorted(os.listdir(folder)):
        if name.startswith(stem + ".log"):
            with open(os.path.join(folder, name)) as f:
                lines = [line for line in f if not line.startswith(("[Gloo]", "    @ "))]
            parts.append(f"--- {name}\n{''.join(lines)[-3000:]}")
    return "\n".join(parts)


def _run(spec: dict, devices: int, processes: int = 1) -> dict:
    """Run the driver to completion: {'out': [record of each process], 'params': final parameters, 'spec'}."""
    with compile_lock():
        codes = _wait(_start(spec, devices, processes), spec)
    assert codes == [0] * processes, f"exit codes {codes}\n{_logs(spec)}"
    outs = []
    for i in range(processes):
        with open(f"{spec['out']}.{i}.json") as f:
            outs.append(json.load(f))
    with np.load(spec["out"] + ".npz") as z:
        params = dict(z)
    return {"out": outs, "params": params, "spec": spec}


def _global_rows(*runs: dict, key: str = "rows") -> list[list]:
    """Per step, the global batch's rows in order (process 0's rows first), over ``runs`` in turn."""
    steps = []
    for run in runs:
        per_process = [o[key] for o in run["out"]]
        steps += [sum((p[s] for p in per_process), []) for s in range(len(per_process[0]))]
    return steps


def _assert_params_close(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=RTOL, atol=ATOL, err_msg=name)


def _step_params(directory: str, step: int) -> dict:
    """The parameters of checkpoint ``step`` under ``directory`` (read from a copy holding only that step)."""
    from aggpose_jax.models.aggpose import get_model_config
    from aggpose_jax.params import abstract_params, named_leaves
    from aggpose_jax.train.checkpoints import restore_params

    copy = f"{directory}_only_{step}"
    if not os.path.isdir(copy):
        shutil.copytree(os.path.join(directory, str(step)), os.path.join(copy, str(step)))
    config = get_model_config("aggpose_tiny", image_size=(64, 64), unroll_blocks=True)
    found, params = restore_params(copy, abstract_params(config))
    assert found == step
    return {k: np.asarray(v) for k, v in named_leaves(params)}


class Runs:
    """The runs of this module, each made once when a test first needs it."""

    def __init__(self, root: str, tmp: str):
        self.root, self.tmp, self.done = root, tmp, {}

    def spec(self, name: str, workdir: str | None = None, **kw) -> dict:
        os.makedirs(os.path.join(self.tmp, name), exist_ok=True)
        train = {"batch_size": 8, **kw.pop("train", {})}  # one row per device
        workdir = workdir or os.path.join(self.tmp, name, "wd")
        return {"root": self.root, "workdir": workdir, "out": os.path.join(self.tmp, name, "out"), "train": train, **kw}

    def get(self, name: str) -> dict:
        if name not in self.done:
            self.done[name] = getattr(self, f"_{name}")()
        return self.done[name]

    def checkpoints(self, name: str) -> str:
        return os.path.join(self.get(name)["spec"]["workdir"], "checkpoints")

    def _A(self) -> dict:
        return _run(self.spec("A", evaluate=True, epoch=True), devices=8)

    def _P(self) -> dict:
        run = _run(self.spec("P", sigterm_at=2, epoch=True), devices=4, processes=2)
        # C starts from P's checkpoints as P left them (Q goes on in P's workdir)
        shutil.copytree(os.path.join(run["spec"]["workdir"], "checkpoints"), os.path.join(self.tmp, "C_checkpoints"))
        return run

    def _Q(self) -> dict:
        spec = self.spec("Q", workdir=self.get("P")["spec"]["workdir"], evaluate=True)
        return _run(spec, devices=4, processes=2)

    def _C(self) -> dict:
        self.get("P")
        spec = self.spec("C")
        shutil.copytree(os.path.join(self.tmp, "C_checkpoints"), os.path.join(spec["workdir"], "checkpoints"))
        return _run(spec, devices=8)

    def _D(self) -> dict:
        spec = self.spec("D", train={"fsdp": True, "fsdp_min_size": 512})
        shutil.copytree(os.path.join(self.checkpoints("A"), "3"), os.path.join(spec["workdir"], "checkpoints", "3"))
        return _run(spec, devices=4, processes=2)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, synthetic_coco_root: str) -> Runs:
    return Runs(synthetic_coco_root, str(tmp_path_factory.mktemp("multiprocess")))


@pytest.mark.long
def test_two_processes_match_one_process_and_shards_are_disjoint_and_cover(runs: Runs) -> None:
    a, p, q = runs.get("A"), runs.get("P"), runs.get("Q")
    assert [o["processes"] for o in p["out"] + q["out"]] == [2] * 4 and p["out"][0]["devices"] == 8
    stop = p["out"][0]["step"]
    assert p["out"][0]["preempted"] and p["out"][1]["preempted"] and p["out"][1]["step"] == stop
    assert 3 <= stop < 6, stop  # SIGTERM during step 3: the processes agreed on one later step
    assert [o["step"] for o in q["out"]] == [6, 6] and not q["out"][0]["preempted"]
    # the same global batches, row by row; per-step losses and final parameters within float tolerance
    assert _global_rows(p, q) == _global_rows(a)
    losses = p["out"][0]["losses"] + q["out"][0]["losses"]
    np.testing.assert_allclose(losses, a["out"][0]["losses"], rtol=RTOL)
    assert q["out"][0]["losses"] == q["out"][1]["losses"]  # every process sees the global loss
    _assert_params_close(q["params"], a["params"])
    # the final evaluation, inside training, in 2 processes: all people gathered, the statistics of 1 process
    one, two = a["out"][0]["metrics"], q["out"][0]["metrics"]
    assert two == q["out"][1]["metrics"] and two["num_people"] == one["num_people"] > 0
    assert two["AP"] == pytest.approx(one["AP"], abs=1e-6) and two["AR"] == pytest.approx(one["AR"], abs=1e-6)
    # shards: within every global batch the processes' rows are different people; over the first epoch the
    # concatenated stream is a permutation of the training set, the one a single process reads
    people = a["out"][0]["people"]
    stream = [row for batch in _global_rows(p, key="epoch_rows") for row in batch]
    assert stream == [row for batch in _global_rows(a, key="epoch_rows") for row in batch]
    assert sorted(map(tuple, stream[: len(people)])) == sorted(map(tuple, people))
    for step in range(len(p["out"][0]["epoch_rows"])):
        mine, theirs = ({tuple(r) for r in o["epoch_rows"][step]} for o in p["out"])
        assert not mine & theirs


@pytest.mark.long
def test_two_process_checkpoint_resumes_in_one_process(runs: Runs) -> None:
    a, p, c = runs.get("A"), runs.get("P"), runs.get("C")
    stop, resumed = p["out"][0]["step"], c["out"][0]
    assert resumed["step"] == 6 and not resumed["preempted"] and resumed["processes"] == 1
    assert _global_rows(c) == _global_rows(a)[stop:]  # the data went on at the saved global sample position
    np.testing.assert_allclose(resumed["losses"], a["out"][0]["losses"][stop:], rtol=RTOL)
    _assert_params_close(c["params"], a["params"])
    with open(c["spec"]["out"] + ".log0") as f:
        assert f"data position of step {stop} re-derived: written by 2 process(es)" in f.read()


@pytest.mark.long
def test_one_process_checkpoint_resumes_in_two_processes_with_fsdp(runs: Runs) -> None:
    a, d = runs.get("A"), runs.get("D")
    assert [o["step"] for o in d["out"]] == [6, 6] and d["out"][0]["processes"] == 2
    assert _global_rows(d) == _global_rows(a)[3:]  # steps 4..6 of the uninterrupted run
    np.testing.assert_allclose(d["out"][0]["losses"], a["out"][0]["losses"][3:], rtol=RTOL)
    _assert_params_close(d["params"], a["params"])


@pytest.mark.long
def test_evaluation_in_two_processes_gives_the_results_and_ap_of_one(runs: Runs, tmp_path) -> None:
    a = runs.get("A")
    one = a["out"][0]["metrics"]
    config_file = tmp_path / "tiny_config.py"
    config_file.write_text(
        f"import sys\nsys.path.insert(0, {TESTS!r})\nfrom train_helpers import tiny_config\n"
        f"def get_config():\n    c = tiny_config({runs.root!r}, batch_size=8)\n"
        "    c.model.kernels = 'xla'\n    return c\n"
    )
    workdir = tmp_path / "eval"
    shutil.copytree(runs.checkpoints("A"), workdir / "checkpoints")
    launch = os.path.join(REPO, "launch", "local_multiprocess.sh")
    main_args = ["--config", str(config_file), "--workdir", str(workdir), "--mode", "eval"]
    env = child_env(4)
    env["PYTHON"] = sys.executable
    with compile_lock():
        proc = subprocess.run(
            [launch, "-n", "2", "-k", "4", "--", *main_args], env=env, cwd=REPO, capture_output=True, text=True
        )
    logs = "".join(p.read_text() for p in sorted((workdir / "logs").glob("process_*.log")))
    assert proc.returncode == 0, proc.stderr[-3000:] + logs[-3000:]
    with open(workdir / "metrics.json") as f:
        two = json.load(f)["latest"]
    assert two["step"] == 6 and two["num_people"] == one["num_people"] > 0
    for key in ("AP", "AP50", "AP75", "AR", "AR50"):
        assert two[key] == pytest.approx(one[key], abs=1e-6), key
    # every result record (image, keypoints, score) as one process wrote it, in the same order (the AP of a
    # 6-step model is near 0, so this is the check with teeth); 4 devices per process compute the heatmaps
    # with other thread blocking than 8, hence a float tolerance
    name = os.path.join("eval", "step_00000006", "keypoints_results.json")
    with open(os.path.join(a["spec"]["workdir"], name)) as f1, open(workdir / name) as f2:
        want, got = json.load(f1), json.load(f2)
    assert [(r["image_id"], r["category_id"]) for r in got] == [(r["image_id"], r["category_id"]) for r in want]
    np.testing.assert_allclose([r["keypoints"] for r in got], [r["keypoints"] for r in want], rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose([r["score"] for r in got], [r["score"] for r in want], rtol=1e-4, atol=1e-7)


@pytest.mark.long
def test_a_killed_process_ends_the_job_in_time_and_leaves_the_last_checkpoint(runs: Runs) -> None:
    runs.get("P")
    spec = runs.spec("F", kill_at=4)
    with compile_lock():
        codes = _wait(_start(spec, devices=4, processes=2, AGGPOSE_FAULT_TIMEOUT=str(FAULT_TIMEOUT_S)), spec)
    ended = time.time()
    with open(spec["out"] + ".killed") as f:
        killed = float(f.read())
    assert codes[1] == -9 and codes[0] != 0, (codes, _logs(spec))
    took = ended - killed
    assert took < FAULT_TIMEOUT_S + 10, took  # heartbeat timeout, detection, abort
    ckpt = os.path.join(spec["workdir"], "checkpoints")
    assert sorted(int(s) for s in os.listdir(ckpt) if s.isdigit()) == [3]
    got, want = _step_params(ckpt, 3), _step_params(runs.checkpoints("P"), 3)
    for name, value in want.items():
        np.testing.assert_array_equal(got[name], value, err_msg=name)


@pytest.mark.long
def test_two_processes_generate_their_own_synthetic_set_and_train(tmp_path) -> None:
    """``data.root=''`` in a 2-process job: process 0 generates the set into the workdir once, the other waits at
    the coordination barrier; both train on it and the run ends with a checkpoint of the last step."""
    config_file = tmp_path / "synthetic_config.py"
    config_file.write_text(
        f"import sys\nsys.path.insert(0, {TESTS!r})\nfrom train_helpers import tiny_config\n"
        "def get_config():\n    c = tiny_config('', batch_size=4, num_steps=2)\n"
        "    c.data.synthetic.num_images = 20\n    c.data.synthetic.image_size = (120, 160)\n"
        "    c.model.kernels = 'xla'\n    return c\n"
    )
    workdir = tmp_path / "wd"
    launch = os.path.join(REPO, "launch", "local_multiprocess.sh")
    env = child_env(1)
    env["PYTHON"] = sys.executable
    main_args = ["--config", str(config_file), "--workdir", str(workdir), "--mode", "train"]
    with compile_lock():
        proc = subprocess.run(
            [launch, "-n", "2", "-k", "1", "--", *main_args], env=env, cwd=REPO, capture_output=True, text=True
        )
    logs = "".join(p.read_text() for p in sorted((workdir / "logs").glob("process_*.log")))
    assert proc.returncode == 0, proc.stderr[-3000:] + logs[-3000:]
    assert logs.count("generating a synthetic") == 1, logs[-3000:]  # process 0 only
    images = 0
    for split in ("train", "val"):
        with open(workdir / "synthetic" / "annotations" / f"person_keypoints_{split}2017.json") as f:
            images += len(json.load(f)["images"])
    assert images == 20
    assert sorted(int(n) for n in os.listdir(workdir / "checkpoints") if n.isdigit())[-1] == 2
    assert "in 2 process(es)" in logs


def test_environment_contract() -> None:
    from aggpose_jax.distributed import DEFAULT_FAULT_TIMEOUT_S, set_host_device_count, spec_from_env

    assert spec_from_env({}) is None
    env = local_process_env(1, 2, 12345, local_devices=4, base={})
    assert env == {
        "AGGPOSE_DISTRIBUTED": "1",
        "AGGPOSE_COORDINATOR": "127.0.0.1:12345",
        "AGGPOSE_NUM_PROCESSES": "2",
        "AGGPOSE_PROCESS_ID": "1",
        "AGGPOSE_LOCAL_DEVICES": "4",
        "JAX_PLATFORMS": "cpu",
    }
    spec = spec_from_env(env)
    assert (spec.coordinator, spec.num_processes, spec.process_id, spec.local_devices, spec.cpu) == (
        "127.0.0.1:12345", 2, 1, 4, True
    )  # fmt: skip
    assert spec.fault_timeout_s == DEFAULT_FAULT_TIMEOUT_S
    assert spec_from_env({**env, "AGGPOSE_FAULT_TIMEOUT": "7"}).fault_timeout_s == 7
    auto = spec_from_env({"AGGPOSE_DISTRIBUTED": "1"})  # TPU VMs, SLURM: JAX finds everything
    assert auto.coordinator is None and auto.num_processes is None and not auto.cpu
    for broken, message in (
        ({"AGGPOSE_PROCESS_ID": ""}, "AGGPOSE_PROCESS_ID: required"),
        ({"AGGPOSE_PROCESS_ID": "2"}, "not below AGGPOSE_NUM_PROCESSES=2"),
        ({"AGGPOSE_NUM_PROCESSES": "two"}, "AGGPOSE_NUM_PROCESSES: expected an integer >= 1"),
        ({"AGGPOSE_COORDINATOR": "localhost"}, "expected HOST:PORT"),
        ({"AGGPOSE_LOCAL_DEVICES": "0"}, "AGGPOSE_LOCAL_DEVICES: expected an integer >= 1"),
    ):
        with pytest.raises(ValueError, match=message):
            spec_from_env({**env, **broken})
    flags = {"XLA_FLAGS": "--xla_force_host_platform_device_count=1 --xla_backend_optimization_level=0"}
    assert set_host_device_count(4, flags) == (
        "--xla_force_host_platform_device_count=4 --xla_backend_optimization_level=0"
    )
