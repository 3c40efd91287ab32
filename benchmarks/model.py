"""Model benchmark: forward and training-step throughput of AggPose, JAX vs the PyTorch reference, on CPU.

Train step = forward (drop-path on), HRNet's joints-MSE loss, backward, AdamW (lr 1e-3). Both
frameworks get the same number of threads (``--threads``, pinned with sched_setaffinity). JAX compile
seconds are measured ahead of time (trace + lower + compile); PyTorch runs eagerly.

    python benchmarks/model.py                      # AggPose-L and -S, batch 8, 256x192; updates BENCHMARKS.md
    python benchmarks/model.py --quick              # smoke run: aggpose_tiny, batch 2, 1 step, nothing written
    python benchmarks/model.py --flops              # forward GFLOPs per image (XLA cost analysis), L and S
    python benchmarks/model.py --steps 3 --rounds 3 # all rows 3 times in turn: medians, ranges, same-round ratios

Run it on a quiet machine: the full run takes several minutes of both cores.
"""

from __future__ import annotations

import argparse
import datetime
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

START, END = "<!-- model-benchmark:start -->", "<!-- model-benchmark:end -->"
TORCH_LABEL = "PyTorch (reference)"
WARMUP = 2  # PyTorch (oneDNN) needs two calls before its primitives are cached


def _timed(fn: Callable[[], Any], steps: int) -> float:
    """Seconds per call of ``fn`` (blocks on its result), over ``steps`` calls after WARMUP warm-up calls."""
    for _ in range(WARMUP):
        fn()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - start) / steps


def _data(batch: int, image_size: tuple[int, int], joints: int, seed: int = 0) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    h, w = image_size
    images = rng.normal(size=(batch, h, w, 3)).astype(np.float32)
    targets = rng.uniform(size=(batch, h // 4, w // 4, joints)).astype(np.float32)
    weights = np.ones((batch, joints), np.float32)
    return images, targets, weights


def init_params(config: Any, seed: int = 0) -> dict:
    """Random Flax parameters from numpy: kernels N(0, 0.02), LayerNorm scales 1, biases 0 (no JAX init)."""
    from aggpose_jax.params import abstract_params

    rng = np.random.default_rng(seed)

    def init(tree: dict) -> dict:
        out = {}
        for name, value in tree.items():
            if isinstance(value, dict):
                out[name] = init(value)
            elif name == "kernel":
                out[name] = (0.02 * rng.standard_normal(value.shape)).astype(np.float32)
            else:
                out[name] = np.full(value.shape, 1.0 if name == "scale" else 0.0, np.float32)
        return out

    return init(abstract_params(config))


def bench_jax(config: Any, params: dict, batch: int, steps: int) -> dict[str, float]:
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    from aggpose_jax.models.aggpose import AggPose
    from aggpose_jax.params import bind

    model = bind(config, params)
    optimizer = nnx.Optimizer(model, optax.adamw(1e-3), wrt=nnx.Param)
    images, targets, weights = (jnp.asarray(a) for a in _data(batch, config.image_size, config.num_joints))

    graphdef, state = nnx.split((model, optimizer))
    model_def, model_state = nnx.split(model)

    def forward(model_state: Any, x: jax.Array) -> jax.Array:
        return nnx.merge(model_def, model_state)(x, deterministic=True)

    def train_step(state: Any, x: jax.Array, y: jax.Array, w: jax.Array, key: jax.Array) -> tuple[Any, jax.Array]:
        m, opt = nnx.merge(graphdef, state)

        def loss_fn(m: AggPose) -> jax.Array:
            pred = m(x, deterministic=False, rngs=key)
            return 0.5 * jnp.mean(jnp.square((pred - y) * w[:, None, None, :]))

        loss, grads = nnx.value_and_grad(loss_fn)(m)
        opt.update(m, grads)
        return nnx.split((m, opt))[1], loss

    out: dict[str, float] = {}
    start = time.perf_counter()
    fwd = jax.jit(forward).lower(model_state, images).compile()
    out["forward_compile_s"] = time.perf_counter() - start
    out["forward_img_s"] = batch / _timed(lambda: fwd(model_state, images).block_until_ready(), steps)

    key = jax.random.key(0)
    start = time.perf_counter()
    step = jax.jit(train_step, donate_argnums=0).lower(state, images, targets, weights, key).compile()
    out["train_compile_s"] = time.perf_counter() - start
    holder = [state]

    def one_step() -> None:
        holder[0], loss = step(holder[0], images, targets, weights, key)
        loss.block_until_ready()

    out["train_img_s"] = batch / _timed(one_step, steps)
    return out


def xla_flops(config: Any) -> float:
    """Forward FLOPs per image from XLA's cost analysis (blocks unrolled: XLA counts a loop body once)."""
    import dataclasses

    import jax
    import jax.numpy as jnp

    from aggpose_jax.params import merge, split_model

    config = dataclasses.replace(config, unroll_blocks=True, remat=False)
    graphdef, params, other = split_model(config)
    images = jax.ShapeDtypeStruct((1, *config.image_size, 3), jnp.float32)
    compiled = jax.jit(lambda p, x: merge(graphdef, p, other)(x)).lower(params, images).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"])


def bench_torch(config: Any, params: dict, batch: int, steps: int) -> dict[str, float]:
    import torch

    from aggpose_jax.convert.mapping import flax_to_torch
    from benchmarks.torch_aggpose import TorchAggPose

    torch.manual_seed(0)
    model = TorchAggPose(config.to_dict())  # same weights as the JAX model
    model.load_state_dict({k: torch.from_numpy(v) for k, v in flax_to_torch(params, config).items()})
    images, targets, weights = (torch.from_numpy(a) for a in _data(batch, config.image_size, config.num_joints))
    images, targets = images.permute(0, 3, 1, 2).contiguous(), targets.permute(0, 3, 1, 2).contiguous()
    out: dict[str, float] = {}

    model.eval()

    def forward() -> None:
        with torch.no_grad():
            model(images)

    out["forward_img_s"] = batch / _timed(forward, steps)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        pred = model(images)
        loss = 0.5 * torch.mean(torch.square((pred - targets) * weights[:, :, None, None]))
        loss.backward()
        optimizer.step()

    out["train_img_s"] = batch / _timed(train_step, steps)
    return out


def _machine(threads: int) -> str:
    import flax
    import jax
    import optax

    cpu = platform.processor() or "unknown CPU"
    try:
        names = [line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    versions = [
        f"Python {platform.python_version()}",
        f"jax {jax.__version__}",
        f"flax {flax.__version__}",
        f"optax {optax.__version__}",
        f"numpy {np.__version__}",
    ]
    try:
        import torch

        versions.append(f"torch {torch.__version__}")
    except ImportError:
        pass
    return (
        f"{datetime.date.today().isoformat()}, {cpu} ({os.cpu_count()} logical CPUs, {threads} used by each "
        f"framework), {platform.system()} {platform.release()}; {', '.join(versions)}"
    )


def _median_range(values: Sequence[float], digits: int = 2) -> str:
    """``median`` for one value, ``median (min-max)`` for several."""
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def _table(rows: dict[tuple[str, str], list[dict[str, float]]]) -> str:
    """One line per (variant, framework); several rounds give the median and the range."""
    lines = [
        "| variant | framework | forward img/s | train step img/s | forward compile s | train step compile s |",
        "|---|---|---|---|---|---|",
    ]
    for (variant, framework), results in rows.items():
        cells = []
        for key, digits in (("forward_img_s", 2), ("train_img_s", 2), ("forward_compile_s", 1), ("train_compile_s", 1)):
            values = [r[key] for r in results if key in r]
            cells.append(_median_range(values, digits) if values else "—")
        lines.append(f"| {variant} | {framework} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _ratios(rows: dict[tuple[str, str], list[dict[str, float]]]) -> str:
    """JAX / PyTorch throughput within each round, as median (range) over the rounds."""
    lines = []
    for (variant, framework), results in rows.items():
        reference = rows.get((variant, TORCH_LABEL))
        if framework == TORCH_LABEL or not reference:
            continue
        for key, name in (("train_img_s", "train step"), ("forward_img_s", "forward")):
            ratios = [j[key] / t[key] for j, t in zip(results, reference)]
            lines.append(f"- {variant}, {framework} / PyTorch, {name}: {_median_range(ratios)}x")
    return "\n".join(lines)


def _run_one(variant: str, framework: str, mode: str, *, batch: int, steps: int, threads: int) -> int:
    """Time one (variant, framework, mode) in this process; print the result as JSON on the last line."""
    from aggpose_jax.models.aggpose import get_model_config

    params = init_params(get_model_config(variant))
    if framework == "jax":
        form, *options = mode.split("+")
        config = get_model_config(
            variant,
            unroll_blocks=form == "unroll",
            remat="remat" in options,
            kernels="xla" if "xla" in options else "auto",
        )
        result = bench_jax(config, params, batch, steps)
    else:
        import torch

        torch.set_num_threads(threads)
        result = bench_torch(get_model_config(variant), params, batch, steps)
    print(json.dumps(result))
    return 0


def _measure_in_subprocess(variant: str, framework: str, mode: str, args: argparse.Namespace) -> dict[str, float]:
    """:func:`_run_one` in a fresh process: neither framework's threads, allocator state or imports (torch
    brings its own OpenMP runtime) may touch the other's figures."""
    cmd = [
        sys.executable,
        __file__,
        "--one",
        variant,
        framework,
        mode,
        "--batch",
        str(args.batch),
        "--steps",
        str(args.steps),
        "--threads",
        str(args.threads),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-3000:])
        raise SystemExit(f"benchmark of {variant} {framework} {mode} failed (exit {proc.returncode})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="aggpose_l,aggpose_s", help="comma-separated model variants")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5, help="timed steps (after two warm-up steps)")
    parser.add_argument("--threads", type=int, default=2, help="CPU cores for each framework")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="repeat the whole sweep this many times, alternating the rows; report the median "
        "and range of each figure and of the per-round JAX/PyTorch ratios (a shared "
        "machine's speed drifts by +-15%% over minutes)",
    )
    parser.add_argument("--frameworks", default="jax,torch", help="jax, torch or both")
    parser.add_argument(
        "--jax-modes",
        default="scan+remat,scan",
        help="JAX forms to time, comma-separated: 'scan' (one compiled body per stack) or 'unroll' "
        "(Python loop: slow compile), each optionally with '+remat' (recompute block activations in the "
        "backward pass) and '+xla' (kernels='xla': the plain layers instead of the CPU kernels)",
    )
    parser.add_argument(
        "--flops",
        action="store_true",
        help="only print each variant's forward GFLOPs per image (XLA cost analysis), then exit",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: aggpose_tiny, batch 2, 1 step, no write")
    parser.add_argument("--no-write", action="store_true", help="print only; do not update BENCHMARKS.md")
    parser.add_argument("--one", nargs=3, metavar=("VARIANT", "FRAMEWORK", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.variants, args.batch, args.steps, args.no_write = "aggpose_tiny", 2, 1, True
    if hasattr(os, "sched_setaffinity"):
        cores = sorted(os.sched_getaffinity(0))[: args.threads]
        os.sched_setaffinity(0, cores)
    if args.one:
        return _run_one(*args.one, batch=args.batch, steps=args.steps, threads=args.threads)
    frameworks = args.frameworks.split(",")
    if "torch" in frameworks and importlib.util.find_spec("torch") is None:
        print("torch is not installed: benchmarking JAX only", file=sys.stderr)
        frameworks = [f for f in frameworks if f != "torch"]

    from aggpose_jax.models.aggpose import get_model_config

    if args.flops:
        for variant in args.variants.split(","):
            config = get_model_config(variant)
            h, w = config.image_size
            print(f"{variant}: {xla_flops(config) / 1e9:.2f} GFLOPs per {h}x{w} image (forward, XLA cost analysis)")
        return 0
    rows: dict[tuple[str, str], list[dict[str, float]]] = {}
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    modes = args.jax_modes.split(",")
    for mode in modes:
        form, *options = mode.split("+")
        if form not in ("scan", "unroll") or not set(options) <= {"remat", "xla"} or len(set(options)) < len(options):
            parser.error(f"--jax-modes: unknown mode {mode!r}")
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    for round_ in range(args.rounds):
        for variant in args.variants.split(","):
            for framework in frameworks:
                for mode in modes if framework == "jax" else ["eager"]:
                    result = _measure_in_subprocess(variant, framework, mode, args)
                    label = f"JAX ({mode})" if framework == "jax" else TORCH_LABEL
                    print(
                        f"round {round_ + 1}/{args.rounds}, {variant} {label}: "
                        + ", ".join(f"{k}={v:.2f}" for k, v in result.items()),
                        flush=True,
                    )
                    rows.setdefault((variant, label), []).append(result)
    load_after = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    table = _table(rows)
    ratios = _ratios(rows)
    h, w = get_model_config(args.variants.split(",")[0]).image_size
    rounds = f"; {args.rounds} rounds of all rows in turn, each figure the median (min-max)" if args.rounds > 1 else ""
    body = (
        f"CPU, float32, {h}x{w} input, batch "
        f"{args.batch}, {args.steps} timed steps after {WARMUP} warm-up steps{rounds}; train step = forward with "
        f"drop-path, joints-MSE loss, backward, AdamW. JAX kernels 'auto' (the CPU kernels) unless "
        f"'+xla'.\n\nRun of {_machine(args.threads)}; load average {load_before:.2f} before, "
        f"{load_after:.2f} after.\n\n{table}\n\n"
        + (f"Same-round ratios:\n\n{ratios}\n\n" if ratios else "")
        + f"Reproduce: `python benchmarks/model.py --variants {args.variants} --batch {args.batch} --steps "
        f"{args.steps} --threads {args.threads} --jax-modes {args.jax_modes} --rounds {args.rounds}`"
    )
    print()
    print(body)
    if not args.no_write:
        replace_block(ROOT / "BENCHMARKS.md", START, END, body, "Model")
        print(f"\nupdated {ROOT / 'BENCHMARKS.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
