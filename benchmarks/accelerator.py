"""Accelerator benchmark: AggPose-L and -S on one GPU (or TPU) in one run of at most 8 minutes.

Measures, at 256x192 on the first device:

* JAX train step (the trainer's own step, ``train.loop.make_sharded_step``: forward with drop-path,
  joints-MSE loss, backward, AdamW) in images/s with bf16 compute (``ModelConfig.dtype='bfloat16'``,
  float32 parameters) and with float32, each at two per-device batch sizes (default 32 and 64);
* JAX forward pass in images/s at batch 64, bf16 and float32;
* MFU: XLA cost-analysis FLOPs per step over the time per step and the device's stated peak
  (``PEAK_TFLOPS``, dense; float32 rows against the TF32 tensor-core peak on NVIDIA GPUs, where XLA runs
  float32 matmuls and convolutions at DEFAULT precision on TF32, and against the bf16 peak on TPUs; an
  unknown device gets no MFU and says so). The FLOPs come from the lowered step with the blocks unrolled
  (XLA counts a loop body once), computed on the host CPU in a side process;
* memory: the compiled program's ``memory_analysis()`` (arguments + outputs + temporaries - aliased
  donated buffers), and the process's device peak so far (``memory_stats()['peak_bytes_in_use']``);
* compile seconds (trace + lower + compile, ahead of time);
* kernel variants, AggPose-L, bf16, first batch size: ``kernels='cpu'`` (the CPU kernel forms) against
  ``'xla'`` (the plain layers, all other rows), ``attention='cudnn'`` (``jax.nn.dot_product_attention``
  with the cuDNN implementation) and ``'einsum'`` against ``'dot_product'``;
* the PyTorch reference of the same network (``benchmarks/torch_aggpose.py``, the same weights through
  ``convert.mapping.flax_to_torch``) on the same device: eager with bf16 autocast and ``torch.compile``
  with bf16 autocast, train step at the first batch size and forward at the forward batch;
* the input pipeline: samples/s of ``data.pipeline.make_loader`` with 16 worker processes (generated
  640x480 JPEGs), against the images/s the fastest measured train step consumes.

Rows run in priority order under a time budget (``--budget-s``, default 450 s): a row that would not
fit is recorded as skipped with the reason, and so is a row that cannot run here (cuDNN attention off
GPU, PyTorch not installed). JAX rows run in one child process, PyTorch rows in another (each owns the
device in turn), the FLOP counts in a CPU-only child.

    python benchmarks/accelerator.py --out accelerator.json                # on the GPU machine
    python benchmarks/accelerator.py --out accelerator.json --update-benchmarks   # + BENCHMARKS.md section
    python benchmarks/accelerator.py --smoke --out /tmp/smoke.json         # tiny sizes on CPU, < 5 min

Output: ``{"meta": {...}, "rows": [flat records]}``; every row has the fields of ``ROW_FIELDS``
(None where a figure does not apply), ``status`` 'ok' | 'skipped' | 'error' and a ``reason`` for the
latter two.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import importlib.util
import json
import os
import pathlib
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
from benchmarks.report import replace_block  # noqa: E402 -- needs ROOT on sys.path

START, END = "<!-- accelerator-benchmark:start -->", "<!-- accelerator-benchmark:end -->"

# Dense peak TFLOP/s per device: (bf16, float32 as the device runs float32 matmuls). NVIDIA: float32 = TF32
# tensor cores (XLA's DEFAULT precision); TPU: float32 matmuls run as bf16 passes, the bf16 peak. Matched
# by substring of ``device.device_kind``, first match wins.
PEAK_TFLOPS: list[tuple[str, float, float]] = [
    ("H100 PCIe", 756.0, 378.0),
    ("H100", 989.4, 494.7),  # SXM5 ("NVIDIA H100 80GB HBM3")
    ("H200", 989.4, 494.7),
    ("H800", 989.4, 494.7),
    ("A100", 312.0, 156.0),
    ("L4", 121.0, 60.0),
    ("TPU v4", 275.0, 275.0),
    ("TPU v5 lite", 197.0, 197.0),  # v5e
    ("TPU v5e", 197.0, 197.0),
    ("TPU v5p", 459.0, 459.0),
    ("TPU v5", 459.0, 459.0),  # v5p reports "TPU v5"
    ("TPU v6 lite", 918.0, 918.0),  # Trillium (v6e)
]

# --smoke compiles these (kind, batch, dtype) only: XLA:CPU takes 20-90 s per train step of even the tiny model
SMOKE_MEASURED = {("train", 1, "float32"), ("forward", 2, "float32"), ("forward", 2, "bfloat16")}

ROW_FIELDS = (
    "kind",  # train | forward | input_pipeline | pipeline_vs_train
    "framework",  # jax | torch | grain
    "variant",
    "image_size",
    "batch",  # per device
    "dtype",  # bfloat16 | float32
    "kernels",
    "attention",
    "mode",  # jax | torch eager/compile (+autocast) | pipeline
    "status",  # ok | skipped | error
    "reason",
    "images_per_s",
    "step_s",
    "compile_s",
    "flops_per_step",
    "tflops_per_s",
    "peak_tflops",
    "mfu",
    "peak_memory_bytes",
    "device_peak_bytes",
    "device_kind",
    "platform",
)


@dataclasses.dataclass
class Settings:
    variants: tuple[str, ...]
    image_size: tuple[int, int]
    train_batches: tuple[int, int]
    forward_batch: int
    steps: int
    warmup: int
    workers: int
    pipeline_batches: int
    pipeline_batch: int
    torch_compile: bool
    smoke: bool


def settings(args: argparse.Namespace) -> Settings:
    if args.smoke:
        return Settings(("aggpose_tiny",), (64, 64), (1, 2), 2, 2, 1, min(16, os.cpu_count() or 1), 3, 4, False, True)
    batches = tuple(int(b) for b in args.batches.split(","))
    if len(batches) != 2:
        raise SystemExit("--batches: two per-device batch sizes, e.g. 32,64")
    return Settings(
        tuple(args.variants.split(",")),
        tuple(int(v) for v in args.image_size.split(",")),
        batches,  # type: ignore[arg-type]
        args.forward_batch,
        args.steps,
        2,
        args.workers,
        args.pipeline_batches,
        32,
        True,
        False,
    )


def row(**fields: Any) -> dict[str, Any]:
    """A record with every ``ROW_FIELDS`` key (None when not given)."""
    out = {k: None for k in ROW_FIELDS}
    out.update(fields)
    return out


def peak_tflops(device_kind: str) -> tuple[float, float] | None:
    """(bf16, float32) dense peak TFLOP/s of ``device_kind``, None when unknown."""
    for pattern, bf16, fp32 in PEAK_TFLOPS:
        if pattern.lower() in device_kind.lower():
            return bf16, fp32
    return None


def add_mfu(r: dict[str, Any]) -> None:
    """Fill tflops_per_s, peak_tflops and mfu of a measured row from flops_per_step and step_s."""
    if r["status"] != "ok" or not r.get("flops_per_step") or not r.get("step_s"):
        return
    r["tflops_per_s"] = r["flops_per_step"] / r["step_s"] / 1e12
    peaks = peak_tflops(r.get("device_kind") or "")
    if peaks is None:
        r["mfu_note"] = f"unknown device kind {r.get('device_kind')!r}: no stated peak, no MFU"
        return
    r["peak_tflops"] = peaks[0] if r["dtype"] == "bfloat16" else peaks[1]
    r["mfu"] = r["tflops_per_s"] / r["peak_tflops"]


# --------------------------------------------------------------------------------------------- JAX


def _model_config(variant: str, s: Settings, **overrides: Any) -> Any:
    from aggpose_jax.config import base_config

    config = base_config()
    config.model.name = variant
    config.model.kernels = "xla"
    config.data.image_size = s.image_size
    config.data.heatmap_size = (s.image_size[0] // 4, s.image_size[1] // 4)
    for key, value in overrides.items():
        config.model[key] = value
    return config


def _batch(batch: int, s: Settings, joints: int = 17) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(0)
    h, w = s.image_size
    return (
        rng.normal(size=(batch, h, w, 3)).astype(np.float32),
        rng.uniform(size=(batch, h // 4, w // 4, joints)).astype(np.float32),
        np.ones((batch, joints), np.float32),
    )


def _program_memory(compiled: Any) -> int | None:
    try:
        m = compiled.memory_analysis()
        return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes)
    except Exception:  # noqa: BLE001 -- not every backend reports it
        return None


def _device_peak() -> int | None:
    import jax

    stats = jax.local_devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def jax_train(variant: str, batch: int, dtype: str, s: Settings, **model: Any) -> dict[str, Any]:
    import jax

    from aggpose_jax import sharding as shd
    from aggpose_jax.config import TrainSchedule, validate
    from aggpose_jax.train.loop import make_sharded_step
    from aggpose_jax.train.step import new_state
    from benchmarks.model import init_params

    config = _model_config(variant, s, dtype=dtype, **model)
    config.train.batch_size = batch
    mesh = shd.make_mesh(jax.local_devices()[:1])
    run = validate(config, devices=mesh.devices.flat)
    model_cfg = run.model
    tx, _, _, sharding, step = make_sharded_step(run, mesh, TrainSchedule(100, 1000, 0))
    params = jax.device_put(init_params(model_cfg), sharding["params"])
    state = jax.jit(lambda p: new_state(tx, 0, p), out_shardings=sharding)(params)
    images, targets, weights = _batch(batch, s, model_cfg.num_joints)
    data = jax.device_put({"image": images, "target": targets, "target_weight": weights}, shd.batch_sharding(mesh))
    start = time.perf_counter()
    compiled = step.lower(state, data).compile()
    compile_s = time.perf_counter() - start
    for _ in range(s.warmup):
        state, metrics = compiled(state, data)
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(s.steps):
        state, metrics = compiled(state, data)
    jax.block_until_ready(metrics)
    step_s = (time.perf_counter() - start) / s.steps
    if not np.isfinite(float(metrics["loss"])):
        raise FloatingPointError(f"non-finite loss {float(metrics['loss'])}")
    return dict(
        images_per_s=batch / step_s,
        step_s=step_s,
        compile_s=compile_s,
        peak_memory_bytes=_program_memory(compiled),
        device_peak_bytes=_device_peak(),
    )


def jax_forward(variant: str, batch: int, dtype: str, s: Settings, **model: Any) -> dict[str, Any]:
    import jax

    from aggpose_jax.config import model_config
    from aggpose_jax.params import merge, split_model
    from benchmarks.model import init_params

    model_cfg = model_config(_model_config(variant, s, dtype=dtype, **model))
    graphdef, _, other = split_model(model_cfg)
    params = jax.device_put(init_params(model_cfg))
    images = jax.device_put(_batch(batch, s, model_cfg.num_joints)[0])
    forward = jax.jit(lambda p, x: merge(graphdef, p, other)(x, deterministic=True))
    start = time.perf_counter()
    compiled = forward.lower(params, images).compile()
    compile_s = time.perf_counter() - start
    for _ in range(s.warmup):
        out = compiled(params, images)
    jax.block_until_ready(out)
    start = time.perf_counter()
    for _ in range(s.steps):
        out = compiled(params, images)
    jax.block_until_ready(out)
    step_s = (time.perf_counter() - start) / s.steps
    return dict(
        images_per_s=batch / step_s,
        step_s=step_s,
        compile_s=compile_s,
        peak_memory_bytes=_program_memory(compiled),
        device_peak_bytes=_device_peak(),
    )


def jax_tasks(s: Settings) -> list[tuple[dict[str, Any], Callable[[], dict] | None, str | None]]:
    """(row fields, measure function or None, skip reason) in priority order."""
    import jax

    gpu = jax.default_backend() == "gpu"
    b1, b2 = s.train_batches
    out: list[tuple[dict[str, Any], Callable[[], dict] | None, str | None]] = []

    def add(kind: str, variant: str, batch: int, dtype: str, skip: str | None = None, **model: Any) -> None:
        fields = dict(
            kind=kind,
            framework="jax",
            variant=variant,
            batch=batch,
            dtype=dtype,
            kernels=model.get("kernels", "xla"),
            attention=model.get("attention", "dot_product"),
            mode="jit",
        )
        if s.smoke and skip is None and (kind, batch, dtype) not in SMOKE_MEASURED:
            skip = "smoke: only the float32 train step at batch 1 and the forward passes are compiled (XLA:CPU)"
        fn = jax_train if kind == "train" else jax_forward
        out.append((fields, None if skip else functools.partial(fn, variant, batch, dtype, s, **model), skip))

    # priority order: every variant's core rows first, then the second batch size, then the kernel variants
    for variant in s.variants:
        add("train", variant, b1, "bfloat16")
        add("train", variant, b1, "float32")
        add("forward", variant, s.forward_batch, "bfloat16")
    for variant in s.variants:
        add("train", variant, b2, "bfloat16")
        add("train", variant, b2, "float32")
        add("forward", variant, s.forward_batch, "float32")
    lead = s.variants[0]
    no_cudnn = None if gpu else f"attention='cudnn' needs a CUDA GPU (backend: {jax.default_backend()})"
    add("train", lead, b1, "bfloat16", attention="cudnn", skip=no_cudnn)
    add("train", lead, b1, "bfloat16", attention="einsum")
    add("train", lead, b1, "bfloat16", kernels="cpu")
    return out


def run_jax_child(args: argparse.Namespace) -> int:
    """Measure the JAX rows, one JSON line each on stdout, until ``args.deadline``."""
    import jax

    s = settings(args)
    device = jax.local_devices()[0]
    common = dict(
        device_kind=device.device_kind,
        platform=device.platform,
        image_size=f"{s.image_size[0]}x{s.image_size[1]}",
    )
    compile_seen: dict[str, float] = {}
    first_guess = 20.0 if s.smoke else 90.0
    for fields, measure, skip in jax_tasks(s):
        r = row(**fields, **common)
        guess = 2.0 * compile_seen.get(f"{fields['variant']}/{fields['kind']}", first_guess)
        left = args.deadline - time.time()
        if skip:
            r.update(status="skipped", reason=skip)
        elif left < guess:
            r.update(status="skipped", reason=f"time budget: {left:.0f} s left, this row needs ~{guess:.0f} s")
        else:
            try:
                r.update(measure(), status="ok")
                key = f"{fields['variant']}/{fields['kind']}"
                compile_seen[key] = max(compile_seen.get(key, 0.0), r["compile_s"])
            except Exception as err:  # noqa: BLE001 -- e.g. out of memory at the larger batch
                r.update(status="error", reason=f"{type(err).__name__}: {' '.join(str(err).split())[:300]}")
        print(json.dumps(r), flush=True)
    return 0


def run_flops_child(args: argparse.Namespace) -> int:
    """FLOPs per train step (at both batch sizes) and per forward image, from the unrolled lowered programs
    (XLA's HLO cost analysis; nothing is compiled). Prints one JSON object."""
    import jax

    from aggpose_jax import sharding as shd
    from aggpose_jax.config import TrainSchedule, model_config, validate
    from aggpose_jax.params import split_model
    from aggpose_jax.train.loop import make_sharded_step

    s = settings(args)
    out: dict[str, dict[str, Any]] = {}

    def flops(lowered: Any) -> float:
        cost = lowered.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        return float(cost["flops"])

    mesh = shd.make_mesh(jax.devices()[:1])
    for variant in s.variants:
        config = _model_config(variant, s, unroll_blocks=True)
        model_cfg = model_config(config)
        train = {}
        for batch in (1, 2):
            config.train.batch_size = batch
            run = validate(config, devices=mesh.devices.flat)
            _, _, abstract, sharding, step = make_sharded_step(run, mesh, TrainSchedule(100, 1000, 0))
            state = jax.tree.map(lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh), abstract, sharding)
            h, w = s.image_size
            j = model_cfg.num_joints
            data = {
                "image": jax.ShapeDtypeStruct((batch, h, w, 3), np.float32),
                "target": jax.ShapeDtypeStruct((batch, h // 4, w // 4, j), np.float32),
                "target_weight": jax.ShapeDtypeStruct((batch, j), np.float32),
            }
            train[batch] = flops(step.lower(state, data))
        graphdef, abstract_params, other = split_model(model_cfg)
        image = jax.ShapeDtypeStruct((1, *s.image_size, 3), np.float32)
        forward = flops(jax.jit(functools.partial(_apply, graphdef, other)).lower(abstract_params, image))
        # per step = fixed part (optimizer update) + per image part
        out[variant] = {
            "train_fixed": 2 * train[1] - train[2],
            "train_per_image": train[2] - train[1],
            "forward": forward,
        }
    print(json.dumps(out), flush=True)
    return 0


def _apply(graphdef: Any, other: Any, params: Any, images: Any) -> Any:
    from aggpose_jax.params import merge

    return merge(graphdef, params, other)(images)


def attach_flops(rows: list[dict[str, Any]], counts: dict[str, dict[str, float]]) -> None:
    for r in rows:
        c = counts.get(r.get("variant") or "")
        if not c or r["framework"] not in ("jax", "torch") or r["status"] != "ok":
            continue
        if r["kind"] == "train":
            r["flops_per_step"] = c["train_fixed"] + c["train_per_image"] * r["batch"]
        elif r["kind"] == "forward":
            r["flops_per_step"] = c["forward"] * r["batch"]
        add_mfu(r)


# ------------------------------------------------------------------------------------------- PyTorch


def run_torch_child(args: argparse.Namespace) -> int:
    """Measure the PyTorch reference rows (eager + bf16 autocast, torch.compile + bf16 autocast)."""
    import torch

    from aggpose_jax.models.aggpose import get_model_config
    from benchmarks.model import init_params

    s = settings(args)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    kind = torch.cuda.get_device_name(0) if cuda else (platform.processor() or "cpu")
    common = dict(
        framework="torch",
        image_size=f"{s.image_size[0]}x{s.image_size[1]}",
        dtype="bfloat16",
        device_kind=kind,
        platform="gpu" if cuda else "cpu",
    )

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    models = {v: get_model_config(v, image_size=s.image_size) for v in s.variants}
    weights = {v: init_params(c) for v, c in models.items()}
    for compiled in (False, True):  # eager rows of every variant first: torch.compile takes minutes
        for variant in s.variants:
            config, params = models[variant], weights[variant]
            mode = "torch.compile+autocast(bf16)" if compiled else "eager+autocast(bf16)"
            for kind_ in ("train", "forward"):
                batch = s.train_batches[0] if kind_ == "train" else s.forward_batch
                r = row(**common, kind=kind_, variant=variant, batch=batch, mode=mode)
                left = args.deadline - time.time()
                need = (90.0 if compiled else 30.0) if not s.smoke else 10.0
                if compiled and not s.torch_compile:
                    r.update(status="skipped", reason="smoke: torch.compile skipped on CPU (inductor's C++ build)")
                elif left < need:
                    r.update(status="skipped", reason=f"time budget: {left:.0f} s left, this row needs ~{need:.0f} s")
                else:
                    try:
                        r.update(_torch_measure(config, params, kind_, batch, compiled, device, s, sync), status="ok")
                    except Exception as err:  # noqa: BLE001
                        r.update(status="error", reason=f"{type(err).__name__}: {' '.join(str(err).split())[:300]}")
                print(json.dumps(r), flush=True)
                if cuda:
                    torch.cuda.empty_cache()
    return 0


def _torch_measure(config: Any, params: dict, kind: str, batch: int, compiled: bool, device: Any, s: Settings, sync):
    import torch

    from aggpose_jax.convert.mapping import flax_to_torch
    from benchmarks.torch_aggpose import TorchAggPose

    torch.manual_seed(0)
    model = TorchAggPose(config.to_dict())
    model.load_state_dict(
        {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in flax_to_torch(params, config).items()}
    )
    model.to(device)
    images, targets, weights = (torch.from_numpy(a).to(device) for a in _batch(batch, s, config.num_joints))
    images, targets = images.permute(0, 3, 1, 2).contiguous(), targets.permute(0, 3, 1, 2).contiguous()
    run = torch.compile(model) if compiled else model
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    if kind == "train":
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            with autocast:
                pred = run(images)
            loss = 0.5 * torch.mean(torch.square((pred.float() - targets) * weights[:, :, None, None]))
            loss.backward()
            optimizer.step()
    else:
        model.eval()

        def step() -> None:
            with torch.no_grad(), autocast:
                run(images)

    start = time.perf_counter()
    for _ in range(max(2, s.warmup)):  # torch.compile compiles here
        step()
    sync()
    warm_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(s.steps):
        step()
    sync()
    step_s = (time.perf_counter() - start) / s.steps
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else None
    return dict(
        images_per_s=batch / step_s,
        step_s=step_s,
        compile_s=warm_s if compiled else None,
        peak_memory_bytes=peak,
        device_peak_bytes=peak,
    )


# ------------------------------------------------------------------------------------- input pipeline


def pipeline_row(s: Settings) -> dict[str, Any]:
    """Samples/s of the training loader with ``s.workers`` worker processes (batches made in the workers)."""
    from benchmarks.pipeline import grain_loader, synthetic_records

    records = synthetic_records(16 if s.smoke else 96)
    r = row(
        kind="input_pipeline",
        framework="grain",
        mode=f"make_loader(worker_count={s.workers})",
        batch=s.pipeline_batch,
        image_size="256x192",
        dtype="float32",
    )
    rate, _ = grain_loader(records, s.workers, s.pipeline_batches, s.pipeline_batch)
    r.update(status="ok", images_per_s=rate, workers=s.workers, cpu_count=os.cpu_count())
    return r


def pipeline_vs_train(rows: list[dict[str, Any]], pipe: dict[str, Any]) -> list[dict[str, Any]]:
    """Per variant: the fastest measured JAX train step's images/s against the loader's samples/s."""
    out = []
    for variant in dict.fromkeys(r["variant"] for r in rows if r["variant"]):
        train = [r for r in rows if r["variant"] == variant and r["kind"] == "train" and r["framework"] == "jax"]
        ok = [r for r in train if r["status"] == "ok"]
        r = row(kind="pipeline_vs_train", framework="grain", variant=variant, mode=pipe.get("mode"))
        if pipe["status"] != "ok" or not ok:
            r.update(status="skipped", reason="no measured train step or input pipeline")
        else:
            best = max(ok, key=lambda x: x["images_per_s"])
            ratio = pipe["images_per_s"] / best["images_per_s"]
            r.update(
                status="ok",
                images_per_s=pipe["images_per_s"],
                batch=best["batch"],
                dtype=best["dtype"],
                train_images_per_s=best["images_per_s"],
                ratio=ratio,
                bound="device" if ratio >= 1 else "input pipeline",
            )
        out.append(r)
    return out


# ------------------------------------------------------------------------------------------- driver


def _child(kind: str, args: argparse.Namespace, deadline: float, env: dict[str, str]) -> subprocess.Popen:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", kind, "--deadline", str(deadline)]
    cmd += ["--variants", args.variants, "--batches", args.batches, "--image-size", args.image_size]
    cmd += ["--forward-batch", str(args.forward_batch), "--steps", str(args.steps)]
    if args.smoke:
        cmd.append("--smoke")
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)


def _collect(proc: subprocess.Popen, timeout: float, what: str) -> tuple[list[dict], str]:
    """JSON lines of a child (killed at ``timeout``); the tail of its stderr."""
    try:
        out, err = proc.communicate(timeout=max(1.0, timeout))
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        err += f"\n{what}: killed at the time budget"
    rows = []
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                rows.append(json.loads(line))
            except ValueError:
                pass
    if proc.returncode:
        err += f"\n{what}: exit status {proc.returncode}"
    return rows, err[-2000:]


def machine(device_rows: list[dict[str, Any]]) -> dict[str, Any]:
    import jax

    versions = {"python": platform.python_version(), "jax": jax.__version__, "numpy": np.__version__}
    for name in ("flax", "optax", "grain", "torch"):
        if importlib.util.find_spec(name):
            versions[name] = getattr(__import__(name), "__version__", "?")
    kinds = sorted({r["device_kind"] for r in device_rows if r.get("device_kind")})
    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpu_count": os.cpu_count(),
        "devices": kinds,
        "versions": versions,
    }


def markdown(result: dict[str, Any]) -> str:
    def num(v: Any, fmt: str = "{:.1f}") -> str:
        return "—" if v is None else fmt.format(v)

    lines = [
        f"Run of {result['meta']['date']} on {', '.join(result['meta']['devices']) or '?'}; "
        + ", ".join(f"{k} {v}" for k, v in result["meta"]["versions"].items()),
        "",
        "| kind | framework | variant | batch | dtype | kernels / attention / mode | img/s | MFU | peak mem GiB "
        "| compile s | status |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        variant_mode = r["mode"] if r["framework"] != "jax" else f"{r['kernels']} / {r['attention']}"
        status = r["status"] if r["status"] == "ok" else f"{r['status']}: {r['reason']}"
        mem = r.get("device_peak_bytes") if r["framework"] == "torch" else r.get("peak_memory_bytes")
        lines.append(
            f"| {r['kind']} | {r['framework']} | {r['variant'] or ''} | {r['batch'] or ''} | {r['dtype'] or ''} "
            f"| {variant_mode or ''} | {num(r['images_per_s'])} | {num(r['mfu'], '{:.1%}')} "
            f"| {num(None if mem is None else mem / 2**30, '{:.2f}')} | {num(r['compile_s'])} | {status} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write the JSON result here")
    parser.add_argument("--variants", default="aggpose_l,aggpose_s")
    parser.add_argument("--batches", default="32,64", help="two per-device train batch sizes")
    parser.add_argument("--forward-batch", type=int, default=64)
    parser.add_argument("--image-size", default="256,192", help="H,W")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per row (after warm-up steps)")
    parser.add_argument("--workers", type=int, default=16, help="input-pipeline worker processes")
    parser.add_argument("--pipeline-batches", type=int, default=20)
    parser.add_argument("--budget-s", type=float, default=450.0, help="the whole run, seconds")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch reference")
    parser.add_argument("--smoke", action="store_true", help="aggpose_tiny, tiny batches, CPU; a few minutes")
    parser.add_argument("--update-benchmarks", action="store_true", help="rewrite the marked BENCHMARKS.md section")
    parser.add_argument("--child", choices=("jax", "torch", "flops"), help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.smoke:
        args.variants, args.batches, args.image_size, args.forward_batch = "aggpose_tiny", "1,2", "64,64", 2
        args.steps = min(args.steps, 2)
        args.budget_s = min(args.budget_s, 280.0)
    if args.child == "jax":
        return run_jax_child(args)
    if args.child == "torch":
        return run_torch_child(args)
    if args.child == "flops":
        return run_flops_child(args)

    s = settings(args)
    start = time.time()
    deadline = start + args.budget_s
    env = dict(os.environ)
    cpu_env = dict(env, JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="")
    flops_proc = _child("flops", args, deadline, cpu_env)
    torch_ok = not args.no_torch and importlib.util.find_spec("torch") is not None
    reserve = 40.0 + ((20.0 if s.smoke else 150.0) if torch_ok else 0.0)  # input pipeline, then PyTorch
    jax_rows, jax_err = _collect(_child("jax", args, deadline - reserve, env), deadline - reserve - time.time(), "jax")
    if not jax_rows:
        print(jax_err, file=sys.stderr)
    rows = list(jax_rows)
    try:
        pipe = pipeline_row(s) if time.time() < deadline - 15 else None
    except Exception as err:  # noqa: BLE001
        pipe = row(kind="input_pipeline", framework="grain", status="error", reason=f"{type(err).__name__}: {err}")
    if pipe is None:
        pipe = row(kind="input_pipeline", framework="grain", status="skipped", reason="time budget")
    if torch_ok:
        torch_rows, torch_err = _collect(_child("torch", args, deadline - 5, env), deadline - time.time(), "torch")
        if not torch_rows:
            print(torch_err, file=sys.stderr)
        rows += torch_rows
    else:
        why = "--no-torch" if args.no_torch else "PyTorch is not installed (pip install torch)"
        for variant in s.variants:
            for mode in ("eager+autocast(bf16)", "torch.compile+autocast(bf16)"):
                for kind in ("train", "forward"):
                    batch = s.train_batches[0] if kind == "train" else s.forward_batch
                    rows.append(
                        row(kind=kind, framework="torch", variant=variant, batch=batch, dtype="bfloat16", mode=mode)
                        | {"status": "skipped", "reason": why}
                    )
    counts, flops_err = _collect(flops_proc, deadline - time.time(), "flops")
    if counts:
        attach_flops(rows, counts[0])
    else:
        print(flops_err, file=sys.stderr)
    rows += [pipe, *pipeline_vs_train(rows, pipe)]
    result = {"meta": {**machine(rows), "seconds": time.time() - start, "smoke": s.smoke}, "rows": rows}
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps(result, indent=1))
    print(markdown(result))
    if args.update_benchmarks and not s.smoke:
        replace_block(ROOT / "BENCHMARKS.md", START, END, markdown(result), "Accelerator")
    return 0


if __name__ == "__main__":
    sys.exit(main())
