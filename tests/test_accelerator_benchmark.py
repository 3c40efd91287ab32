"""benchmarks/accelerator.py --smoke: every row has every field, positive figures when measured, a reason when not."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from train_helpers import REPO, child_env, compile_lock

sys.path.insert(0, REPO)
from benchmarks.accelerator import ROW_FIELDS, add_mfu, peak_tflops, row  # noqa: E402


def test_smoke_run_writes_complete_rows(tmp_path):
    out = tmp_path / "smoke.json"
    with compile_lock():
        proc = subprocess.run(
            [sys.executable, os.path.join(REPO, "benchmarks", "accelerator.py"), "--smoke", "--out", str(out)],
            env=child_env(1),
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=420,
        )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert result["meta"]["smoke"] and result["meta"]["versions"]["jax"]
    for r in rows:
        assert set(ROW_FIELDS) <= set(r), sorted(set(ROW_FIELDS) - set(r))
        assert r["status"] in ("ok", "skipped", "error"), r
        if r["status"] == "ok":
            assert r["images_per_s"] > 0, r
        else:
            assert r["reason"], r
    ok = [r for r in rows if r["status"] == "ok"]
    kinds = {(r["framework"], r["kind"], r["dtype"], r["batch"]) for r in ok}
    # what --smoke compiles (XLA:CPU compile time): a float32 train step, bf16 and float32 forward passes
    assert {
        ("jax", "train", "float32", 1),
        ("jax", "forward", "float32", 2),
        ("jax", "forward", "bfloat16", 2),
    } <= kinds
    train = [r for r in ok if r["framework"] == "jax" and r["kind"] == "train"]
    assert all(r["compile_s"] > 0 and r["flops_per_step"] > 0 and r["peak_memory_bytes"] > 0 for r in train)
    # the CPU has no stated peak: no MFU, and the row says why
    assert all(r["mfu"] is None and "no stated peak" in r["mfu_note"] for r in train)
    jax_train = [r for r in rows if r["framework"] == "jax" and r["kind"] == "train"]
    assert {(r["dtype"], r["batch"]) for r in jax_train} >= {("bfloat16", 1), ("bfloat16", 2), ("float32", 2)}
    variants = {(r["kernels"], r["attention"]) for r in jax_train}
    assert {("xla", "dot_product"), ("cpu", "dot_product"), ("xla", "einsum"), ("xla", "cudnn")} <= variants
    cudnn = next(r for r in rows if r["attention"] == "cudnn")
    assert cudnn["status"] == "skipped" and "CUDA GPU" in cudnn["reason"]
    torch_rows = [r for r in rows if r["framework"] == "torch"]
    assert len(torch_rows) == 4 and all(r["status"] in ("ok", "skipped") for r in torch_rows)
    pipe = next(r for r in rows if r["kind"] == "input_pipeline")
    assert pipe["status"] == "ok" and pipe["workers"] >= 1
    versus = next(r for r in rows if r["kind"] == "pipeline_vs_train")
    assert versus["status"] == "ok" and versus["ratio"] > 0 and versus["bound"] in ("device", "input pipeline")


def test_mfu_uses_the_stated_peak_of_the_device_kind():
    assert peak_tflops("NVIDIA H100 80GB HBM3") == (989.4, 494.7)
    assert peak_tflops("NVIDIA H100 PCIe") == (756.0, 378.0)
    assert peak_tflops("TPU v5 lite") == (197.0, 197.0)
    assert peak_tflops("cpu") is None
    r = row(status="ok", kind="train", dtype="bfloat16", device_kind="NVIDIA H200", flops_per_step=2e12, step_s=0.01)
    add_mfu(r)
    assert abs(r["tflops_per_s"] - 200.0) < 1e-9 and abs(r["mfu"] - 200.0 / 989.4) < 1e-12
    r = row(
        status="ok", kind="train", dtype="float32", device_kind="NVIDIA A100-SXM4-80GB", flops_per_step=1e12, step_s=0.1
    )
    add_mfu(r)
    assert r["peak_tflops"] == 156.0 and abs(r["mfu"] - 10.0 / 156.0) < 1e-12
