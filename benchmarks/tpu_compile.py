"""The real train and eval steps compiled ahead of time for Cloud TPU topologies, on a host without TPUs.

``libtpu`` (``pip install '.[tpu-aot]'``) describes a TPU slice on any machine
(``jax.experimental.topologies.get_topology_desc``); the main job's own step functions are then lowered and
compiled for its devices: the train step of ``train.loop.make_sharded_step`` (state replicated, or with
``--config.train.fsdp=True`` sharded over the chips) and the eval forward of ``evaluate.job.make_predict_fn``
(``evaluate.job.eval_forward``, on one host's chips), from a config exactly as ``aggpose_jax.main`` takes it
(``config.validate`` against the slice's devices; ``model.kernels='auto'`` resolves to the TPU forms). Nothing
runs: every figure is the compiler's or an estimate.

    python benchmarks/tpu_compile.py --config configs/coco_aggpose_l_256x192.py --config.model.dtype=bfloat16 \\
        --config.model.remat=True --topologies v5e:4x4,v5e:16x16 --modes dp,fsdp --batch_per_chip 32,64,auto \\
        --out /tmp/tpu.json --markdown /tmp/tpu.md        # the table (minutes per compile)
    python benchmarks/tpu_compile.py --check --topology v5e:4x4 --config configs/coco_aggpose_l_256x192.py
        # before creating a slice (launch/tpu_pod.sh): one line; exit 0 fits, 3 does not fit, 2 bad input

Per topology, mode (``dp``: data-parallel, ``fsdp``) and per-chip batch (global batch = per-chip x chips):

* per-chip memory of the compiled SPMD program (``compiled.memory_analysis()``: arguments, outputs,
  temporaries, outputs aliased to donated arguments, generated code; needed = arguments + outputs - aliases +
  temporaries + code) against the chip's HBM (``CHIPS``), and whether it fits (a program the compiler
  refuses for HBM is recorded with the compiler's figures); the largest per-chip batch that fits, by a line
  through the compiled points (``auto`` in ``--batch_per_chip`` compiles that batch, rounded down to a
  multiple of 8, to confirm it);
* FLOPs per image, exact: XLA's cost analysis counts a loop body once, so the FLOPs come from the same step
  lowered with the blocks unrolled (``model.unroll_blocks=True``) at 1 and 2 images on one host device (the
  difference is one image; the rest is the per-step optimizer), for the configured remat (executed FLOPs)
  and without remat (model FLOPs: 3 x forward), the latter checked against 3 x the analytic forward
  (:func:`analytic_forward_macs`, 15.56 GMACs for AggPose-L at 256x192, the reference's figure) within
  ``FLOPS_MARGIN``;
* the collectives of one step, read from the compiled HLO text (kind, count and bytes per chip, while-loop
  bodies counted by their trip counts): data-parallel shows the gradient all-reduce, FSDP all-gathers of
  parameters and reduce-scatters of gradients;
* an ESTIMATE of the step time, not a measurement: the compiler's ``optimal_seconds`` where it is positive,
  and a roofline, the largest of executed FLOPs at the chip's bf16 peak, HBM bytes at its HBM bandwidth (the
  compiled program's bytes accessed, scaled by the loop correction of its FLOPs) and collective bytes on the
  wire (ring algorithms) at its full ICI bandwidth; hence estimated images/s per chip and per pod, an MFU
  bound (model FLOPs over the roofline time at peak), and the input it needs: samples/s per host against the
  data pipeline's measured samples per CPU-second (BENCHMARKS.md, "Data pipeline"), so cores per host;
* compile time (lower + compile, this machine).

Output: ``--out`` JSON (rows are written as they finish; a rerun with the same ``--out`` and config reuses
them), ``--markdown`` (the tables), ``--write_benchmarks`` (the BENCHMARKS.md section "TPU pods, compiled
ahead of time"); ``--report_only`` writes them from ``--out`` without compiling. ``--check``: the train
step for ``--topology`` at the config's own batch; prints one line; exit 0 when it fits, 3 when it does not
(by how much), 2 for bad input, 1 for a failed compile.

libtpu is process-global and slow to start; the command sets, before JAX starts, ``JAX_PLATFORMS=cpu`` (the
host runs as usual; only the compiles target the TPU), ``TPU_ACCELERATOR_TYPE`` and ``TPU_WORKER_HOSTNAMES``
(quiet libtpu's start-up on a host without TPUs) and ``ALLOW_MULTIPLE_LIBTPU_LOAD=1`` (another process
holding libtpu's lock file, e.g. a test worker whose JAX probed for a TPU, would otherwise stop it).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import pathlib
import platform
import re
import sys
import time
from collections.abc import Sequence
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

GIB = 2**30
START, END = "<!-- tpu-compile:start -->", "<!-- tpu-compile:end -->"
HEADING = "TPU pods, compiled ahead of time"
EXIT_FITS, EXIT_FAULT, EXIT_BAD_INPUT, EXIT_DOES_NOT_FIT = 0, 1, 2, 3
FLOPS_MARGIN = 0.10  # XLA's model FLOPs (3 x forward) within 10 % of 3 x the analytic forward (see the docstring)
COCO_TRAIN_PEOPLE = 149_813  # COCO train2017 people with keypoints (the release's training set): schedule only
PIPELINE_SAMPLES_PER_CORE = 329  # BENCHMARKS.md "Data pipeline": Grain, 2 worker processes, per CPU-second
DEFAULT_TOPOLOGIES = ("v5e:4x4", "v5e:16x16", "v5p:4x4x8", "v6e:8x8", "v4:2x2x4")


@dataclasses.dataclass(frozen=True)
class Chip:
    """One TPU generation, per chip: HBM bytes, bf16 peak FLOP/s, HBM and ICI bandwidth in bytes/s."""

    name: str
    hbm: int
    bf16_flops: float
    hbm_bw: float
    ici_bw: float  # bidirectional, all links of one chip
    chip_config: str  # get_topology_desc's chip_config_name (one JAX device per chip)


# Per-chip figures from the Cloud TPU documentation (read 2026-12-05):
#   v4  https://cloud.google.com/tpu/docs/v4  275 TFLOP/s bf16; HBM2 32 GiB, 1200 GB/s. ICI: not in that table;
#       6 links per chip (TPU v4 paper, Jouppi et al. 2023, arXiv:2304.01433) at 45 GB/s each way (jax-ml
#       "How to Scale Your Model", TPU chapter) = 540 GB/s bidirectional. Two TensorCores run as one device
#       ("megacore").
#   v5e https://cloud.google.com/tpu/docs/v5e  197 TFLOP/s bf16; HBM 16 GiB, 819 GB/s; ICI 400 GB/s bidirectional.
#   v5p https://cloud.google.com/tpu/docs/v5p  459 TFLOP/s bf16; HBM 95 GiB, 2765 GB/s; ICI 1200 GB/s bidirectional.
#   v6e https://cloud.google.com/tpu/docs/v6e  918 TFLOP/s bf16; HBM 32 GB (taken as 32 GiB), 1638 GB/s;
#       ICI 800 GB/s bidirectional.
CHIPS: dict[str, Chip] = {
    "v4": Chip("TPU v4", 32 * GIB, 275e12, 1200e9, 540e9, "megacore"),
    "v5e": Chip("TPU v5e", 16 * GIB, 197e12, 819e9, 400e9, "default"),
    "v5p": Chip("TPU v5p", 95 * GIB, 459e12, 2765e9, 1200e9, "default"),
    "v6e": Chip("TPU v6e", 32 * GIB, 918e12, 1638e9, 800e9, "default"),
}
CHIPS_PER_HOST_BOUNDS = (2, 2, 1)  # 4 chips per host: v4, v5p and the multi-host v5e/v6e slices


def prepare_environment() -> None:
    """Before JAX is imported (the command does it first; importing this module changes nothing): the host
    stays on the CPU platform, libtpu starts quietly and despite another process's lock file."""
    for key, value in (
        ("JAX_PLATFORMS", "cpu"),
        ("TPU_ACCELERATOR_TYPE", "v5litepod-4"),
        ("TPU_WORKER_HOSTNAMES", "localhost"),
        ("ALLOW_MULTIPLE_LIBTPU_LOAD", "1"),
        ("TF_CPP_MIN_LOG_LEVEL", "2"),
    ):
        os.environ.setdefault(key, value)


class BadInput(ValueError):
    """Input this tool cannot use (exit 2): an unknown topology, a config that does not validate, ..."""


# ----------------------------------------------------------------------------------------------- topologies


def chip_of(topology: str) -> Chip:
    gen = topology.split(":", 1)[0]
    if ":" not in topology or gen not in CHIPS:
        raise BadInput(f"--topology: {topology!r}: expected GENERATION:SHAPE with a generation in {sorted(CHIPS)}")
    return CHIPS[gen]


_TOPOLOGIES: dict[str, list] = {}


def topology_devices(topology: str) -> list:
    """The JAX devices of a TPU slice (one per chip), described by libtpu; no TPU is needed."""
    chip = chip_of(topology)
    if topology not in _TOPOLOGIES:
        try:
            from jax.experimental import topologies
        except ImportError as err:  # pragma: no cover - jax always has it
            raise BadInput(f"jax.experimental.topologies: {err}") from None
        try:
            desc = topologies.get_topology_desc(
                platform="tpu",
                topology_name=topology,
                chip_config_name=chip.chip_config,
                chips_per_host_bounds=CHIPS_PER_HOST_BOUNDS,
                num_slices=1,
            )
        except Exception as err:  # noqa: BLE001 -- libtpu raises several types
            if "libtpu" in str(err).lower() and "not" in str(err).lower() or isinstance(err, ImportError):
                raise BadInput(f"libtpu is not available ({err}): pip install '.[tpu-aot]'") from None
            raise BadInput(f"--topology: {topology}: {' '.join(str(err).split())}") from None
        _TOPOLOGIES[topology] = sorted(desc.devices, key=lambda d: (d.process_index, d.id))
    return _TOPOLOGIES[topology]


def host_topology(topology: str) -> str:
    """The one-host slice of the same chip (``CHIPS_PER_HOST_BOUNDS``: v5e:2x2, v4:2x2x1, ...). Evaluation
    runs on each host's own chips (a local mesh); libtpu cannot compile for a subset of a larger slice's
    devices (its collective emitter aborts the process), so the eval step is compiled for this slice."""
    gen, shape = topology.split(":", 1)
    dims = shape.split("x")
    host = [str(b) for b in CHIPS_PER_HOST_BOUNDS[: len(dims)]]
    return f"{gen}:{'x'.join(host)}"


def libtpu_version() -> str:
    try:
        from importlib.metadata import version

        return version("libtpu")
    except Exception:  # noqa: BLE001
        return "not installed"


# ----------------------------------------------------------------------------------------------- config


def with_overrides(config: Any, **values: Any) -> Any:
    """A copy of ``config`` (a ConfigDict, possibly locked) with dotted keys (``train__fsdp``) set."""
    out = config.copy_and_resolve_references()
    for key, value in values.items():
        node = out
        *head, last = key.split("__")
        for part in head:
            node = node[part]
        node[last] = value
    return out


def target_run(config: Any, devices: Sequence[Any], platform_name: str | None = None) -> Any:
    """The main job's ``RunConfig`` for ``devices``, with ``model.kernels`` resolved for their platform (or
    ``platform_name``) by ``cpu_kernels.resolve``: the host's backend never decides."""
    from aggpose_jax.config import validate
    from aggpose_jax.models import cpu_kernels

    try:
        run = validate(config, devices=list(devices))
    except ValueError as err:
        raise BadInput(str(err)) from None
    target = platform_name or devices[0].platform
    model = dataclasses.replace(run.model, kernels=cpu_kernels.resolve(config.model.kernels, target))
    return dataclasses.replace(run, model=model, platform=target)


def batch_spec(run: Any, mesh: Any, global_batch: int) -> dict[str, Any]:
    """Abstract training batch as the loader yields it (float32 images, targets, target weights), rows over
    'data'."""
    import jax
    import jax.numpy as jnp

    from aggpose_jax import sharding as shd

    h, w = run.data.image_size
    hh, hw = run.data.heatmap_size
    joints = run.model.num_joints
    rows = shd.batch_sharding(mesh)
    return {
        "image": jax.ShapeDtypeStruct((global_batch, h, w, 3), jnp.float32, sharding=rows),
        "target": jax.ShapeDtypeStruct((global_batch, hh, hw, joints), jnp.float32, sharding=rows),
        "target_weight": jax.ShapeDtypeStruct((global_batch, joints), jnp.float32, sharding=rows),
    }


def train_step(run: Any, mesh: Any, train_set_size: int) -> tuple[Any, Any]:
    """(jitted step, abstract sharded state) exactly as the trainer builds them (``make_sharded_step``)."""
    import jax

    from aggpose_jax.config import TrainSchedule
    from aggpose_jax.train import loop

    # make_sharded_step caches by device ids, and every topology numbers its devices from 0.
    loop._COMPILED.clear()
    try:
        schedule = TrainSchedule.of(run, train_set_size)
    except ValueError as err:
        raise BadInput(str(err)) from None
    _, _, abstract, state_sharding, step_fn = loop.make_sharded_step(run, mesh, schedule)
    state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, state_sharding)
    return step_fn, state


# ----------------------------------------------------------------------------------------------- HLO reading

_DTYPE_BYTES = {
    "pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "s32": 4, "u32": 4, "s64": 8, "u64": 8,
    "f16": 2, "bf16": 2, "f32": 4, "f64": 8, "c64": 8, "c128": 16,
}  # fmt: skip
_SHAPE = re.compile(r"\b(pred|[suf]\d+|bf16|c64|c128|f8e\w+)\[([\d,]*)\]")
_COLLECTIVES = {
    "all-reduce": "all-reduce",
    "all-reduce-start": "all-reduce",
    "all-gather": "all-gather",
    "all-gather-start": "all-gather",
    "reduce-scatter": "reduce-scatter",
    "all-to-all": "all-to-all",
    "collective-permute": "collective-permute",
    "collective-permute-start": "collective-permute",
}
_CALLEES = re.compile(
    r"\b(calls|to_apply|body|condition|true_computation|false_computation|branch_computations)="
    r"(\{[^}]*\}|%?[\w.\-]+)"
)


def _shapes_bytes(text: str) -> int:
    total = 0.0
    for dtype, dims in _SHAPE.findall(text):
        n = math.prod(int(d) for d in dims.split(",") if d) if dims else 1
        total += n * _DTYPE_BYTES.get(dtype, 1 if dtype.startswith("f8") else 4)
    return int(total)


def _top_level(tuple_text: str) -> list[str]:
    """The elements of an HLO tuple type ``(a, b, ...)`` (brackets of every kind nest)."""
    inner, parts, depth, start = tuple_text.strip()[1:-1], [], 0, 0
    for i, ch in enumerate(inner):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(inner[start:i])
            start = i + 1
    parts.append(inner[start:])
    return [p for p in parts if p.strip()]


def _split_type(rest: str) -> tuple[str, str]:
    """(result type, text after it) of an instruction's right-hand side."""
    if rest.startswith("("):
        depth = 0
        for i, ch in enumerate(rest):
            depth += ch == "("
            depth -= ch == ")"
            if depth == 0:
                return rest[: i + 1], rest[i + 1 :]
    head, _, tail = rest.partition(" ")
    return head, " " + tail


def _group_size(attrs: str, devices: int) -> int:
    """Devices in one replica group of a collective (the forms XLA prints: ``mesh['a'=2,'b'=2] {'a'}``,
    ``[groups,size]<=[n]``, ``{{0,1},{2,3}}``); all devices when there are none."""
    hit = re.search(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}", attrs)
    if hit:
        sizes = {k: int(v) for k, v in re.findall(r"'([^']+)'=(\d+)", hit.group(1))}
        return math.prod(sizes.get(a, 1) for a in re.findall(r"'([^']+)'", hit.group(2)))
    hit = re.search(r"replica_groups=\[(\d+),(\d+)\]", attrs)
    if hit:
        return int(hit.group(2))
    hit = re.search(r"replica_groups=\{\{([\d,]*)\}", attrs)
    if hit:
        return len([x for x in hit.group(1).split(",") if x])
    return devices


def _counted_loop_trips(condition: list[str]) -> int | None:
    """Trip count of a while loop whose condition is ``counter < N`` (a scan as JAX lowers it: the counter
    starts at 0 and steps by 1), read from the condition computation's lines: its root compares with
    ``direction=LT`` against its only integer constant. None for any other form."""
    root = [line for line in condition if line.lstrip().startswith("ROOT")]
    constants = [
        int(c) for line in condition for c in re.findall(r"=\s*[su](?:32|64)\[\]\S*\s+constant\((\d+)\)", line)
    ]
    if len(root) == 1 and "compare(" in root[0] and "direction=LT" in root[0] and len(constants) == 1:
        return constants[0]
    return None


def hlo_collectives(hlo_text: str, devices: int) -> dict[str, Any]:
    """Collectives of one execution of a compiled (SPMD, per-device) HLO module: per kind the count, the bytes
    of the arrays moved (all-reduce: the reduced array; all-gather: the gathered result; reduce-scatter: its
    full input; collective-permute: the sent array) and the bytes each chip puts on the wire with ring
    algorithms. XLA:TPU writes a reduce-scatter as a fusion ``all-reduce-scatter`` of an all-reduce and each
    chip's slice: counted as the reduce-scatter it is. While-loop bodies count as many times as their trip
    counts (XLA's known_trip_count, or a scan's ``counter < N`` condition); branches of a conditional each
    count once (an upper bound)."""
    text = re.sub(r"/\*.*?\*/", "", hlo_text)
    comps: dict[str, list[tuple[str, str, str]]] = {}
    bodies: dict[str, list[str]] = {}  # each computation's instruction lines, for the loop conditions
    entry, current = None, None
    for line in text.splitlines():
        if not line.strip():
            continue
        if not line[0].isspace():
            hit = re.match(r"(ENTRY\s+)?%?([\w.\-]+)\s*\(", line)
            if hit and line.rstrip().endswith("{"):
                current = hit.group(2)
                comps[current] = []
                bodies[current] = []
                if hit.group(1):
                    entry = current
            elif line.strip() == "}":
                current = None
            continue
        if current is None:
            continue
        bodies[current].append(line)
        hit = re.match(r"\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(.*)$", line)
        if not hit:
            continue
        rtype, tail = _split_type(hit.group(1))
        op = re.match(r"\s*([\w\-]+)\(", tail)
        if op:
            comps[current].append((op.group(1), rtype, tail))
    callers: dict[str, list[tuple[str, int]]] = {}
    unknown_trips = 0
    for name, instrs in comps.items():
        for opcode, _, tail in instrs:
            trip = 1
            if opcode == "while":
                hit = re.search(r'"known_trip_count":\{"n":"(\d+)"', tail)
                cond = re.search(r"\bcondition=%?([\w.\-]+)", tail)
                counted = _counted_loop_trips(bodies.get(cond.group(1), [])) if cond else None
                if hit:
                    trip = int(hit.group(1))
                elif counted is not None:
                    trip = counted
                else:
                    unknown_trips += 1
            for attr, value in _CALLEES.findall(tail):
                for callee in re.findall(r"%?([\w.\-]+)", value.strip("{}")):
                    factor = trip if attr in ("body", "condition") else 1
                    callers.setdefault(callee, []).append((name, factor))
    memo: dict[str, int] = {}

    def times(name: str) -> int:
        if name == entry:
            return 1
        if name not in memo:
            memo[name] = 0  # a cycle (none in valid HLO) counts nothing
            memo[name] = sum(times(caller) * factor for caller, factor in callers.get(name, []))
        return memo[name]

    out: dict[str, dict[str, float]] = {}
    for name, instrs in comps.items():
        for opcode, rtype, tail in instrs:
            kind = _COLLECTIVES.get(opcode)
            if kind is None:
                continue
            if kind == "all-reduce" and name.startswith("all-reduce-scatter"):
                kind = "reduce-scatter"  # XLA:TPU's reduce-scatter: an all-reduce fused with each chip's slice
            n = times(name)
            if not n:
                continue
            if opcode in ("all-gather-start", "collective-permute-start") and rtype.startswith("("):
                parts = _top_level(rtype)
                size = _shapes_bytes(parts[1] if len(parts) > 1 else rtype)
            else:
                size = _shapes_bytes(rtype)
            group = max(1, _group_size(tail, devices))
            if kind == "all-reduce":
                moved, wire = size, 2 * (group - 1) / group * size
            elif kind == "reduce-scatter" and opcode.startswith("all-reduce"):
                moved, wire = size, (group - 1) / group * size  # the fused all-reduce's result: the full input
            elif kind == "reduce-scatter":
                moved, wire = size * group, (group - 1) * size
            elif kind in ("all-gather", "all-to-all"):
                moved, wire = size, (group - 1) / group * size
            else:
                moved, wire = size, size
            entry_row = out.setdefault(kind, {"count": 0, "bytes": 0, "wire_bytes": 0.0})
            entry_row["count"] += n
            entry_row["bytes"] += n * moved
            entry_row["wire_bytes"] += n * wire
    result: dict[str, Any] = {k: out[k] for k in sorted(out)}
    if unknown_trips:
        result["_unknown_trip_counts"] = unknown_trips
    return result


# ----------------------------------------------------------------------------------------------- compiling


def _memory(compiled: Any) -> dict[str, int]:
    m = compiled.memory_analysis()
    mem = {
        "argument": int(m.argument_size_in_bytes),
        "output": int(m.output_size_in_bytes),
        "alias": int(m.alias_size_in_bytes),
        "temp": int(m.temp_size_in_bytes),
        "code": int(m.generated_code_size_in_bytes),
    }
    mem["needed"] = mem["argument"] + mem["output"] - mem["alias"] + mem["temp"] + mem["code"]
    return mem


def _cost(compiled: Any) -> dict[str, float | None]:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost or {}
    pick = lambda k: float(cost[k]) if k in cost else None  # noqa: E731
    return {
        "flops": pick("flops"),
        "bytes_accessed": pick("bytes accessed"),
        "optimal_seconds": pick("optimal_seconds"),
    }


_OOM = re.compile(r"Used ([\d.]+)([KMGT])? of ([\d.]+)([KMGT])? hbm", re.IGNORECASE)


def _oom(err: BaseException) -> dict[str, Any] | None:
    """The compiler's figures when it refuses a program for HBM (RESOURCE_EXHAUSTED), else None."""
    msg = " ".join(str(err).split())
    if "RESOURCE_EXHAUSTED" not in msg and "Ran out of memory" not in msg:
        return None
    out: dict[str, Any] = {"message": msg[:600]}
    hit = _OOM.search(msg)
    if hit:
        unit = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40, None: 1}
        out["needed"] = int(float(hit.group(1)) * unit[hit.group(2)])
        out["capacity"] = int(float(hit.group(3)) * unit[hit.group(4)])
    return out


def compile_train(
    config: Any, topology: str, mode: str, batch_per_chip: int, *, train_set_size: int, hlo_dir: str | None = None
) -> dict[str, Any]:
    """Lower and compile the train step for ``topology``; the row of its figures (see the module docstring)."""
    from aggpose_jax import sharding as shd

    devices = topology_devices(topology)
    chip = chip_of(topology)
    n = len(devices)
    cfg = with_overrides(config, train__batch_size=batch_per_chip * n, train__fsdp=mode == "fsdp")
    run = target_run(cfg, devices)
    mesh = shd.make_mesh(devices)
    step_fn, state = train_step(run, mesh, train_set_size)
    row = _base_row(topology, devices, chip, "train", mode, batch_per_chip, batch_per_chip * n)
    start = time.perf_counter()
    lowered = step_fn.lower(state, batch_spec(run, mesh, batch_per_chip * n))
    try:
        compiled = lowered.compile()
    except Exception as err:  # noqa: BLE001 -- XlaRuntimeError
        oom = _oom(err)
        if oom is None:
            raise
        row.update(compile_s=time.perf_counter() - start, fits=False, oom=oom)
        if "needed" in oom:
            row["memory"] = {"needed": oom["needed"]}
        return row
    row["compile_s"] = time.perf_counter() - start
    row["memory"] = _memory(compiled)
    row["fits"] = row["memory"]["needed"] <= chip.hbm
    row["xla_cost"] = _cost(compiled)
    text = compiled.as_text()
    row["collectives"] = hlo_collectives(text, n)
    if hlo_dir:
        os.makedirs(hlo_dir, exist_ok=True)
        pathlib.Path(hlo_dir, _hlo_name(topology, mode, batch_per_chip)).write_text(text)
    return row


def _hlo_name(topology: str, mode: str, batch_per_chip: int) -> str:
    return f"train_{topology.replace(':', '_')}_{mode}_{batch_per_chip}.hlo.txt"


def recount(rows: list[dict[str, Any]], hlo_dir: str | None, flops: dict[str, Any] | None, per_core: float) -> None:
    """Rows of an earlier run read again with this version of the tool: the collectives from their saved HLO
    text (``--hlo_dir``) where it is there, and every estimate."""
    for row in rows:
        path = pathlib.Path(hlo_dir or "", _hlo_name(row["topology"], row["mode"], row["batch_per_chip"]))
        if hlo_dir and row["step"] == "train" and path.is_file():
            row["collectives"] = hlo_collectives(path.read_text(), row["chips"])
        if row.get("xla_cost"):
            row["estimate"] = estimate(row, flops, chip_of(row["topology"]), per_core)


def compile_eval(config: Any, topology: str) -> dict[str, Any]:
    """The eval forward as ``evaluate.job.make_predict_fn`` builds it (``evaluate.job.eval_forward``: the flip
    test inside when the config asks, so 2x the batch runs), on one host's chips (a local mesh; compiled for
    :func:`host_topology`), parameters replicated, at the config's eval batch per process (padded to the
    chips) for the whole slice's process count."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from aggpose_jax import sharding as shd
    from aggpose_jax.evaluate.job import eval_forward
    from aggpose_jax.params import split_model

    devices = topology_devices(topology)
    chip = chip_of(topology)
    local = topology_devices(host_topology(topology))
    if len(local) != sum(d.process_index == devices[0].process_index for d in devices):
        raise BadInput(f"--topology: {topology}: its hosts do not hold {len(local)} chips each")
    # The train batch does not enter the eval step; it only has to divide over this slice to validate.
    run = target_run(with_overrides(config, train__batch_size=len(devices)), devices)
    local_mesh = shd.make_mesh(local)
    graphdef, params, other = split_model(run.model)
    rep = NamedSharding(local_mesh, P())
    per_process = run.eval.batch.local_size
    batch = per_process + (-per_process) % len(local)
    abstract = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=rep), (params, other), is_leaf=_is_array_like
    )
    h, w = run.data.image_size
    images = jax.ShapeDtypeStruct((batch, h, w, 3), jnp.float32, sharding=NamedSharding(local_mesh, P(shd.DATA_AXIS)))
    forward = eval_forward(run, graphdef, rep)
    row = _base_row(topology, devices, chip, "eval", "replicated", batch // len(local), batch)
    row["eval_batch_per_process"] = per_process
    row["flip_test"] = bool(run.eval.flip_test)
    start = time.perf_counter()
    compiled = forward.lower(abstract, images).compile()
    row["compile_s"] = time.perf_counter() - start
    row["memory"] = _memory(compiled)
    row["fits"] = row["memory"]["needed"] <= chip.hbm
    row["xla_cost"] = _cost(compiled)
    row["collectives"] = hlo_collectives(compiled.as_text(), len(local))
    return row


def _is_array_like(x: Any) -> bool:
    return hasattr(x, "shape") and hasattr(x, "dtype")


def _base_row(topology: str, devices: list, chip: Chip, step: str, mode: str, per_chip: int, global_batch: int):
    hosts = len({d.process_index for d in devices})
    return {
        "topology": topology,
        "chip": chip.name,
        "chips": len(devices),
        "hosts": hosts,
        "chips_per_host": len(devices) // hosts,
        "hbm": chip.hbm,
        "step": step,
        "mode": mode,
        "batch_per_chip": per_chip,
        "global_batch": global_batch,
    }


# ----------------------------------------------------------------------------------------------- FLOPs


def analytic_forward_macs(model: Any) -> float:
    """Multiply-accumulates of one forward pass, counted from the architecture: every convolution and linear
    layer, and the two attention products (q k^T, attention x v); not the norms, GELUs, softmax and
    additions. AggPose-L at 256x192: 15.556 G (the reference's measurement on the released code: 15.56)."""
    from aggpose_jax.models.aggpose import block_stacks

    h, w = model.image_size
    d = model.dims
    px = [(h // 4) * (w // 4) // 4**s for s in range(4)]  # pixels of streams 1..4

    def mix(n: int, c_in: int, hidden: int, c_out: int) -> float:  # fc1, depthwise 3x3, fc2
        return n * (c_in * hidden + 9 * hidden + hidden * c_out)

    def embed(s: int) -> float:  # 3x3 stride-2 conv from stream s-1 (0-based s) to stream s
        return px[s] * 9 * d[s - 1] * d[s]

    def up(s_in: int, s_out: int) -> float:  # MixFFN at the input stream, then nearest up-sampling
        return mix(px[s_in], d[s_in], d[s_out], d[s_out])

    def block(s: int) -> float:
        n, c, r = px[s], d[s], model.sr_ratios[s]
        m = n / r**2  # keys/values after the r x r reduction
        attn = 2 * n * c * c + 2 * m * c * c + (n * c * c if r > 1 else 0) + 2 * n * m * c
        return attn + mix(n, c, int(c * model.mlp_ratio), c)

    total = px[0] * 49 * 3 * d[0]  # patch_embed1
    total += sum(num * block(stream - 1) for _, stream, _, num in block_stacks(model))
    total += embed(1) + embed(2) + embed(3)  # opening streams 2-4
    total += embed(1) + up(1, 0) + mix(px[0], 2 * d[0], d[0], d[0]) + mix(px[1], 2 * d[1], d[1], d[1])
    total += embed(1) + embed(2) + up(1, 0) + up(2, 1)
    total += mix(px[0], 2 * d[0], d[0], d[0]) + mix(px[1], 3 * d[1], d[1], d[1]) + mix(px[2], 2 * d[2], d[2], d[2])
    total += embed(1) + embed(2) + embed(3) + up(1, 0) + up(2, 1) + up(3, 2)
    total += mix(px[0], 2 * d[0], d[0], d[0]) + mix(px[1], 3 * d[1], d[1], d[1])
    total += mix(px[2], 3 * d[2], d[2], d[2]) + mix(px[3], 2 * d[3], d[3], d[3])
    total += up(1, 0) + up(2, 0) + up(3, 0)
    total += mix(px[0], 4 * d[0], d[0], d[0]) + mix(px[0], d[0], d[0], model.num_joints)
    return float(total)


def count_flops(config: Any, *, train_set_size: int, platform_name: str = "tpu") -> dict[str, Any]:
    """Exact FLOPs per image of the train step (executed, with the configured remat; model, without remat) and
    of the eval forward: XLA's cost analysis of the step lowered with the blocks unrolled on one host device,
    at 1 and 2 images (their difference is one image). The layers are those of ``platform_name``."""
    import jax
    import jax.numpy as jnp

    from aggpose_jax import sharding as shd
    from aggpose_jax.heatmaps import jitted
    from aggpose_jax.params import split_model

    device = jax.devices("cpu")[:1]
    mesh = shd.make_mesh(device)

    def cost(lowered: Any) -> float:
        c = lowered.cost_analysis()
        c = c[0] if isinstance(c, (list, tuple)) else c
        return float(c["flops"])

    def train(remat: bool) -> tuple[float, float]:
        values = []
        for b in (1, 2):
            cfg = with_overrides(config, train__batch_size=b, train__fsdp=False, model__unroll_blocks=True,
                                 model__remat=remat)  # fmt: skip
            run = target_run(cfg, device, platform_name)
            step_fn, state = train_step(run, mesh, train_set_size)
            values.append(cost(step_fn.lower(state, batch_spec(run, mesh, b))))
        return values[1] - values[0], 2 * values[0] - values[1]

    start = time.perf_counter()
    remat = bool(config.model.remat)
    executed, constant = train(remat)
    model_flops = train(False)[0] if remat else executed
    run = target_run(with_overrides(config, model__unroll_blocks=True, train__batch_size=1), device, platform_name)
    graphdef, params, other = split_model(run.model)
    h, w = run.data.image_size
    fwd = []
    for b in (1, 2):
        images = jax.ShapeDtypeStruct((b, h, w, 3), jnp.float32)
        fwd.append(cost(jitted(graphdef).lower((params, other), images)))
    forward = fwd[1] - fwd[0]
    macs = analytic_forward_macs(run.model)
    ratio = model_flops / (3 * 2 * macs)
    return {
        "method": "XLA cost analysis of the step lowered with model.unroll_blocks=True (1 and 2 images, one host "
        "device; the difference is one image)",
        "train_executed_per_image": executed,
        "train_model_per_image": model_flops,
        "train_per_step_constant": constant,
        "eval_forward_per_image": forward,
        "analytic_forward_macs": macs,
        "analytic_train_flops_per_image": 3 * 2 * macs,
        "model_over_analytic": ratio,
        "margin": FLOPS_MARGIN,
        "within_margin": abs(ratio - 1) <= FLOPS_MARGIN,
        "remat": remat,
        "seconds": time.perf_counter() - start,
    }


# ----------------------------------------------------------------------------------------------- estimates


def estimate(row: dict[str, Any], flops: dict[str, Any] | None, chip: Chip, per_core: float) -> dict[str, Any]:
    """Step-time ESTIMATE for a compiled row (see the module docstring): roofline terms, the compiler's own
    figure where positive, images/s per chip and per pod, MFU bound, input needed per host."""
    b = row["batch_per_chip"]
    cost = row.get("xla_cost") or {}
    if flops is None or not cost.get("flops"):
        return {}
    if row["step"] == "train":
        executed = flops["train_executed_per_image"] * b + flops["train_per_step_constant"]
        model = flops["train_model_per_image"] * b
    else:
        # the flip test runs each crop and its mirror image: two forward passes per person
        executed = model = flops["eval_forward_per_image"] * b * (2 if row.get("flip_test") else 1)
    loop_factor = executed / cost["flops"]  # XLA counted each loop body once
    hbm_bytes = (cost.get("bytes_accessed") or 0.0) * loop_factor
    wire = sum(v["wire_bytes"] for k, v in row.get("collectives", {}).items() if not k.startswith("_"))
    terms = {"compute_s": executed / chip.bf16_flops, "hbm_s": hbm_bytes / chip.hbm_bw, "ici_s": wire / chip.ici_bw}
    step_s = max(terms.values())
    optimal = cost.get("optimal_seconds")
    per_chip = b / step_s
    per_host = per_chip * row["chips_per_host"]
    return {
        **terms,
        "bound": max(terms, key=terms.get).removesuffix("_s"),
        "roofline_step_s": step_s,
        "compiler_optimal_s": optimal if optimal is not None and optimal > 0 else None,
        "executed_flops_per_chip": executed,
        "model_flops_per_chip": model,
        "loop_factor": loop_factor,
        "hbm_bytes_per_chip": hbm_bytes,
        "images_per_s_per_chip": per_chip,
        "images_per_s_per_pod": per_chip * row["chips"],
        "mfu_bound": model / (step_s * chip.bf16_flops),
        "samples_per_s_per_host": per_host,
        "cores_per_host": math.ceil(per_host / per_core) if row["step"] == "train" else None,
    }


def largest_fitting(rows: list[dict[str, Any]], hbm: int) -> dict[str, Any]:
    """The largest compiled per-chip batch that fits, and the batch where a line through the compiled points
    (memory needed against batch; the two largest batches with figures) reaches the HBM: a prediction."""
    points = sorted((r["batch_per_chip"], r["memory"]["needed"]) for r in rows if r.get("memory", {}).get("needed"))
    fits = [r["batch_per_chip"] for r in rows if r.get("fits")]
    out: dict[str, Any] = {"largest_compiled_fit": max(fits) if fits else None, "predicted": None}
    distinct = sorted(dict(points).items())
    if len(distinct) >= 2:
        (b0, m0), (b1, m1) = distinct[-2], distinct[-1]
        slope = (m1 - m0) / (b1 - b0)
        if slope > 0:
            out["bytes_per_image"] = slope
            out["fixed_bytes"] = m1 - slope * b1
            out["predicted"] = max(0, int((hbm - out["fixed_bytes"]) // slope))
    return out


# ----------------------------------------------------------------------------------------------- reporting


def _gib(x: float | None) -> str:
    return "-" if x is None else f"{x / GIB:.2f}"


def _collectives_text(coll: dict[str, Any]) -> str:
    parts = [
        f"{k} x{int(v['count'])} ({v['bytes'] / 2**20:,.0f} MiB)" for k, v in coll.items() if not k.startswith("_")
    ]
    return ", ".join(parts) or "none"


def _si(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def markdown(result: dict[str, Any]) -> str:
    meta, flops = result["meta"], result.get("flops")
    lines = [
        f"Compiled {meta['date']} on {meta['machine']}; jax {meta['jax']}, libtpu {meta['libtpu']}. Config "
        f"`{meta['config']}` {' '.join(f'`{o}`' for o in meta['overrides'])}. **Compiler figures and estimates, "
        "not measurements: nothing ran on a TPU.**",
        "",
    ]
    if flops:
        lines += [
            f"FLOPs per image ({flops['method']}): train step executed {flops['train_executed_per_image'] / 1e9:.1f} G"
            f"{' (remat: the blocks run forward twice)' if flops['remat'] else ''}, model (3 x forward, no remat) "
            f"{flops['train_model_per_image'] / 1e9:.1f} G, eval forward {flops['eval_forward_per_image'] / 1e9:.1f} G;"
            f" analytic 3 x forward {flops['analytic_train_flops_per_image'] / 1e9:.1f} G "
            f"(2 x {flops['analytic_forward_macs'] / 1e9:.2f} GMACs x 3): model / analytic = "
            f"{flops['model_over_analytic']:.3f} ({'within' if flops['within_margin'] else 'OUTSIDE'} the "
            f"{flops['margin']:.0%} margin); plus {flops['train_per_step_constant'] / 1e9:.1f} GFLOP per step "
            "(optimizer).",
            "",
        ]
    lines += [
        "| topology | chips (hosts) | mode | batch per chip (global) | per-chip memory GiB: args / out / temp / "
        "aliased / code = needed | HBM GiB | fits | collectives per step (bytes moved) | est. step ms: compute / HBM /"
        " ICI (compiler) | est. img/s per chip / pod | MFU bound | input per host: samples/s (cores) | compile s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        m, e = r.get("memory", {}), r.get("estimate") or {}
        if "argument" in m:
            mem = (f"{_gib(m['argument'])} / {_gib(m['output'])} / {_gib(m['temp'])} / {_gib(m['alias'])} / "
                   f"{_gib(m['code'])} = **{_gib(m['needed'])}**")  # fmt: skip
        else:
            mem = f"compiler: needs {_gib(m.get('needed'))}" if m.get("needed") else "refused by the compiler"
        mode = {"dp": "data-parallel", "fsdp": "FSDP", "replicated": "eval (one host)"}[r["mode"]]
        if r["step"] == "eval" and r.get("flip_test"):
            mode = "eval (one host, flip test)"
        if e:
            opt = f" ({e['compiler_optimal_s'] * 1e3:.0f})" if e.get("compiler_optimal_s") else ""
            est = f"{e['compute_s'] * 1e3:.0f} / {e['hbm_s'] * 1e3:.0f} / {e['ici_s'] * 1e3:.0f}{opt}"
            ips = f"{_si(e['images_per_s_per_chip'])} / {_si(e['images_per_s_per_pod'])}"
            mfu = f"{e['mfu_bound']:.0%}"
            cores = f" ({e['cores_per_host']})" if e.get("cores_per_host") else ""
            inp = f"{e['samples_per_s_per_host']:,.0f}{cores}"
        else:
            est = ips = mfu = inp = "-"
        lines.append(
            f"| {r['topology']} | {r['chips']} ({r['hosts']}) | {mode} | {r['batch_per_chip']} ({r['global_batch']}) "
            f"| {mem} | {_gib(r['hbm'])} | {'yes' if r.get('fits') else '**no**'} | "
            f"{_collectives_text(r.get('collectives', {})) if 'collectives' in r else '-'} | {est} | {ips} | {mfu} "
            f"| {inp} | {r.get('compile_s', 0):.0f} |"
        )
    if result.get("largest"):
        lines += ["", "| topology | mode | largest compiled batch per chip that fits | line through the points: "
                      "GiB per image, fixed GiB, predicted largest |", "|---|---|---|---|"]  # fmt: skip
        for s in result["largest"]:
            pred = (f"{s['bytes_per_image'] / GIB:.3f}, {s['fixed_bytes'] / GIB:.2f}, {s['predicted']}"
                    if s.get("predicted") is not None else "-")  # fmt: skip
            mode = "data-parallel" if s["mode"] == "dp" else "FSDP"
            lines.append(f"| {s['topology']} | {mode} | {s['largest_compiled_fit'] or 'none'} | {pred} |")
    return "\n".join(lines)


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}"


# ----------------------------------------------------------------------------------------------- command line


def _flags() -> Any:
    from absl import flags
    from ml_collections import config_flags

    f = flags.FLAGS
    if "topologies" in f:
        return f
    config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/*.py), as for aggpose_jax.main.")
    flags.DEFINE_list("topologies", list(DEFAULT_TOPOLOGIES), "TPU topologies GENERATION:SHAPE (e.g. v5e:4x4).")
    flags.DEFINE_string("topology", None, "--check: the slice's topology (e.g. v5e:4x4).")
    flags.DEFINE_list("modes", ["dp", "fsdp"], "dp (data-parallel) and/or fsdp (config.train.fsdp).")
    flags.DEFINE_list(
        "batch_per_chip",
        [],
        "Per-chip batches to compile; 'auto': the predicted largest that fits (a multiple of 8) from the points "
        "before it. Default: the config's train.batch_size over the chips.",
    )
    flags.DEFINE_bool("eval", True, "Also compile the eval forward (one per topology).")
    flags.DEFINE_bool("flops", True, "Count the exact FLOPs per image (unrolled lowering on the host).")
    flags.DEFINE_bool("check", False, "One line for a launch script: does the config's batch fit --topology?")
    flags.DEFINE_string("out", None, "JSON output (rows are added as they finish; an existing file is resumed).")
    flags.DEFINE_string("markdown", None, "Markdown tables output.")
    flags.DEFINE_bool("write_benchmarks", False, f"Write the BENCHMARKS.md section '{HEADING}'.")
    flags.DEFINE_bool("report_only", False, "Compile nothing: the tables from the rows already in --out.")
    flags.DEFINE_string("hlo_dir", None, "Write each compiled train step's HLO text here.")
    flags.DEFINE_integer("train_set_size", COCO_TRAIN_PEOPLE, "Training-set size (the LR schedule only).")
    flags.DEFINE_float("pipeline_samples_per_core", PIPELINE_SAMPLES_PER_CORE, "Input pipeline samples/s per core.")
    return f


def _say(line: str, *, err: bool = False) -> None:
    print(line, file=sys.stderr if err else sys.stdout, flush=True)


def _overrides(argv: Sequence[str]) -> list[str]:
    return [a for a in argv if a.startswith("--config.")]


def check(config: Any, topology: str, train_set_size: int) -> int:
    """``--check``: the train step at the config's own batch on ``topology``; one line, exit 0/3."""
    chip = chip_of(topology)
    devices = topology_devices(topology)
    n = len(devices)
    global_batch = int(config.train.batch_size)
    if global_batch % n:
        raise BadInput(f"config.train.batch_size: {global_batch} is not a multiple of the {n} chips of {topology}")
    mode = "fsdp" if config.train.fsdp else "dp"
    row = compile_train(config, topology, mode, global_batch // n, train_set_size=train_set_size)
    what = (f"{topology} ({n} chips, {row['hosts']} hosts): train step at batch {global_batch} "
            f"({global_batch // n} per chip, {'FSDP' if mode == 'fsdp' else 'data-parallel'})")  # fmt: skip
    needed = row.get("memory", {}).get("needed")
    if row["fits"]:
        _say(f"{what} fits: {_gib(needed)} GiB per chip of {_gib(chip.hbm)} GiB HBM (compiled in "
             f"{row['compile_s']:.0f} s)")  # fmt: skip
        return EXIT_FITS
    if needed:
        over = f"needs {_gib(needed)} GiB per chip, {_gib(needed - chip.hbm)} GiB over the {_gib(chip.hbm)} GiB HBM"
        if needed <= chip.hbm:  # refused by the compiler within the nominal HBM (its reserved share)
            cap = row.get("oom", {}).get("capacity")
            over = f"needs {_gib(needed)} GiB per chip, over the {_gib(cap)} GiB the compiler allows"
    else:
        over = f"refused by the compiler for HBM ({row.get('oom', {}).get('message', '')[:200]})"
    per_image = needed / max(1, row["batch_per_chip"]) if needed else None
    hint = f"; at most ~{int(chip.hbm // per_image)} per chip by this figure" if per_image else ""
    _say(f"{what} does not fit: {over}{hint}")
    return EXIT_DOES_NOT_FIT


def _load(path: str | None, meta: dict[str, Any]) -> list[dict[str, Any]]:
    if not path or not os.path.isfile(path):
        return []
    try:
        old = json.loads(pathlib.Path(path).read_text())
    except (OSError, ValueError):
        return []
    keep = ("config", "overrides", "libtpu", "jax")
    if any(old.get("meta", {}).get(k) != meta[k] for k in keep):
        return []
    return list(old.get("rows", []))


def table(config: Any, args: Any, meta: dict[str, Any]) -> dict[str, Any]:
    """Compile every requested point; returns the result dict (also written to ``--out`` as rows finish)."""
    result: dict[str, Any] = {"meta": meta, "chips": {k: dataclasses.asdict(v) for k, v in CHIPS.items()}}
    rows = _load(args.out, meta)
    old = json.loads(pathlib.Path(args.out).read_text()) if rows else {}
    result["flops"] = old.get("flops")
    result["rows"] = rows

    def save() -> None:
        result["largest"] = summary(result["rows"])
        if args.out:
            tmp = f"{args.out}.tmp"
            pathlib.Path(tmp).write_text(json.dumps(result, indent=1))
            os.replace(tmp, args.out)

    if args.flops and not result["flops"]:
        _say("counting FLOPs (unrolled lowering on the host) ...", err=True)
        result["flops"] = count_flops(config, train_set_size=args.train_set_size)
        save()
    recount(result["rows"], args.hlo_dir, result["flops"], args.pipeline_samples_per_core)
    done = {(r["topology"], r["step"], r["mode"], r["batch_per_chip"]) for r in rows}
    for topology in args.topologies:
        chip = chip_of(topology)
        n = len(topology_devices(topology))
        batches = args.batch_per_chip or [str(max(1, int(config.train.batch_size) // n))]
        for mode in args.modes:
            for spec in batches:
                mine = [r for r in result["rows"] if (r["topology"], r["step"], r["mode"]) == (topology, "train", mode)]
                if spec == "auto":
                    pred = largest_fitting(mine, chip.hbm).get("predicted")
                    if not pred:
                        continue
                    b = max(8, pred // 8 * 8)
                else:
                    b = int(spec)
                if (topology, "train", mode, b) in done:
                    continue
                _say(f"compiling the train step: {topology}, {mode}, {b} per chip ...", err=True)
                row = compile_train(config, topology, mode, b, train_set_size=args.train_set_size,
                                    hlo_dir=args.hlo_dir)  # fmt: skip
                row["estimate"] = estimate(row, result["flops"], chip, args.pipeline_samples_per_core)
                result["rows"].append(row)
                done.add((topology, "train", mode, b))
                _say(f"  {_gib(row.get('memory', {}).get('needed'))} GiB per chip, fits: {row['fits']}, "
                     f"{row.get('compile_s', 0):.0f} s", err=True)  # fmt: skip
                save()
        if args.eval and not any(r["topology"] == topology and r["step"] == "eval" for r in result["rows"]):
            _say(f"compiling the eval step: {topology} ...", err=True)
            row = compile_eval(config, topology)
            row["estimate"] = estimate(row, result["flops"], chip, args.pipeline_samples_per_core)
            result["rows"].append(row)
            save()
    order = {t: i for i, t in enumerate(args.topologies)}
    result["rows"].sort(key=lambda r: (order.get(r["topology"], 99), r["step"] != "train", r["mode"],
                                       r["batch_per_chip"]))  # fmt: skip
    save()
    return result


def summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for topology, mode in dict.fromkeys((r["topology"], r["mode"]) for r in rows if r["step"] == "train"):
        mine = [r for r in rows if (r["topology"], r["step"], r["mode"]) == (topology, "train", mode)]
        out.append({"topology": topology, "mode": mode, **largest_fitting(mine, mine[0]["hbm"])})
    return out


def main(argv: Sequence[str]) -> int:
    from aggpose_jax import config as config_lib

    args = _flags()
    if len(argv) > 1:
        raise BadInput(f"unexpected arguments: {' '.join(argv[1:])}")
    path = config_lib.config_path(sys.argv)
    if path is None:
        raise BadInput("--config is required (e.g. --config configs/coco_aggpose_l_256x192.py)")
    config = args.config
    if config is None:
        raise BadInput(f"--config: cannot load {path}")
    for mode in args.modes:
        if mode not in ("dp", "fsdp"):
            raise BadInput(f"--modes: {mode!r}: expected dp and/or fsdp")
    for spec in args.batch_per_chip:
        if spec != "auto" and (not spec.isdigit() or int(spec) < 1):
            raise BadInput(f"--batch_per_chip: {spec!r}: expected positive integers or 'auto'")
    try:
        import libtpu  # noqa: F401
    except ImportError:
        raise BadInput("libtpu is not installed: pip install '.[tpu-aot]' (or libtpu) to compile for TPUs") from None
    if args.check:
        if not args.topology:
            raise BadInput("--check needs --topology (e.g. v5e:4x4)")
        return check(config, args.topology, args.train_set_size)
    topologies = [args.topology] if args.topology else args.topologies
    for t in topologies:
        chip_of(t)
    args.topologies = topologies
    import flax
    import jax

    meta = {
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "flax": flax.__version__,
        "libtpu": libtpu_version(),
        "config": os.path.relpath(path, ROOT) if os.path.abspath(path).startswith(str(ROOT)) else path,
        "overrides": _overrides(sys.argv),
    }
    if args.report_only:
        if not args.out or not os.path.isfile(args.out):
            raise BadInput("--report_only needs --out with the JSON of an earlier run")
        result = json.loads(pathlib.Path(args.out).read_text())
        recount(result.get("rows", []), args.hlo_dir, result.get("flops"), args.pipeline_samples_per_core)
        result["largest"] = summary(result.get("rows", []))
    else:
        result = table(config, args, meta)
    text = markdown(result)
    if args.markdown:
        pathlib.Path(args.markdown).write_text(text + "\n")
    if args.write_benchmarks:
        from benchmarks.report import replace_block

        replace_block(ROOT / "BENCHMARKS.md", START, END, text, HEADING)
    print(text)
    return 0


def _parse(argv: list[str]) -> list[str]:
    from absl import flags

    from aggpose_jax import config as config_lib

    _flags()
    try:
        return flags.FLAGS(argv)
    except Exception as err:  # noqa: BLE001 -- absl/ml_collections raise several types
        message = str(err)
        path = config_lib.config_path(argv)
        if path:
            try:
                message = config_lib.unknown_override(argv, config_lib.load_file(path)) or message
            except Exception as load_err:  # noqa: BLE001
                message = f"--config: cannot load {path}: {type(load_err).__name__}: {load_err}"
        _say(f"tpu_compile: error: {' '.join(message.split())}", err=True)
        sys.exit(EXIT_BAD_INPUT)


def cli() -> None:
    prepare_environment()
    from absl import app

    def run(argv: Sequence[str]) -> None:
        try:
            code = main(argv)
        except BadInput as err:
            _say(f"tpu_compile: error: {' '.join(str(err).split())}", err=True)
            code = EXIT_BAD_INPUT
        except Exception as err:  # noqa: BLE001 -- a failed compile: one line, the reason
            _say(f"tpu_compile: failed: {type(err).__name__}: {' '.join(str(err).split())[:400]}", err=True)
            code = EXIT_FAULT
        sys.exit(code)

    app.run(run, flags_parser=_parse)


if __name__ == "__main__":
    cli()
