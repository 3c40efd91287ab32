"""benchmarks/tpu_compile.py: the real train step compiled ahead of time for a TPU slice (libtpu, no TPU needed).

The compiles run in a child process: libtpu is process-global and slow to start, and the command puts its
host on the CPU platform; nothing here changes the backend or environment of the test process.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(REPO, "benchmarks", "tpu_compile.py")
needs_libtpu = pytest.mark.skipif(
    importlib.util.find_spec("libtpu") is None,
    reason="libtpu is not importable: it cannot compile for a TPU here (pip install '.[test]' installs it)",
)

# A model smaller than configs/default.py's: tiny widths, one block per stage, 64x64 crops; every array of
# at least 1024 elements is split by FSDP.
MICRO_CONFIG = textwrap.dedent(
    """
    from aggpose_jax.config import base_config


    def get_config():
        c = base_config()
        c.model.name = "aggpose_tiny"
        c.model.stage_depths = ((1, 1, 1, 1), (1, 1, 1), (1, 1), (1,))
        c.model.drop_path_rate = 0.0
        c.data.image_size = (64, 64)
        c.data.heatmap_size = (16, 16)
        c.train.batch_size = 8
        c.train.num_steps = 10
        c.train.fsdp_min_size = 1024
        c.eval.batch_size = 8
        return c
    """
)


def _tool(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "XLA_FLAGS")}
    return subprocess.run(
        [sys.executable, TOOL, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


@needs_libtpu
@pytest.mark.slow
def test_small_model_compiles_for_v5e_2x2_data_parallel_and_fsdp(tmp_path):
    config = tmp_path / "micro.py"
    config.write_text(MICRO_CONFIG)
    out = tmp_path / "tpu.json"
    proc = _tool(
        "--config", str(config), "--topologies", "v5e:2x2", "--modes", "dp,fsdp", "--batch_per_chip", "2,4",
        "--noeval", "--noflops", "--out", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {(r["mode"], r["batch_per_chip"]): r for r in json.loads(out.read_text())["rows"]}
    dp, fsdp, fsdp4 = rows["dp", 2], rows["fsdp", 2], rows["fsdp", 4]
    for row in (dp, fsdp):
        assert (row["chips"], row["hosts"], row["global_batch"]) == (4, 1, 8)
        mem = row["memory"]  # read from compiled.memory_analysis() of the per-chip program
        assert mem["argument"] > 0 and mem["temp"] > 0 and mem["code"] > 0 and 0 < mem["needed"] < row["hbm"]
        assert row["fits"] and row["compile_s"] > 0 and row["xla_cost"]["flops"] > 0
    # data-parallel: the gradients are all-reduced, at least the float32 parameters' bytes; nothing gathered
    assert dp["collectives"]["all-reduce"]["count"] >= 1
    assert dp["collectives"]["all-reduce"]["bytes"] >= 4 * 400_000
    assert "all-gather" not in dp["collectives"] and "reduce-scatter" not in dp["collectives"]
    # FSDP: parameters all-gathered, gradients reduced; the sharded state makes the arguments smaller. Only
    # parameters move: the gathered bytes do not grow with the batch (a few KiB of small batch-shaped
    # values aside), and no activation is exchanged
    # (all-to-all, collective-permute: what XLA did when it followed the parameters' shards into activations)
    coll, coll4 = fsdp["collectives"], fsdp4["collectives"]
    assert coll["all-gather"]["count"] >= 1
    assert coll["all-reduce"]["count"] + coll.get("reduce-scatter", {}).get("count", 0) >= 1
    assert coll4["all-gather"]["bytes"] <= 1.01 * coll["all-gather"]["bytes"]  # +22 % before the fix
    assert not {"all-to-all", "collective-permute"} & (set(coll) | set(coll4))
    assert fsdp["memory"]["argument"] < dp["memory"]["argument"]
    assert "| v5e:2x2 | 4 (1) | data-parallel | 2 (8) |" in proc.stdout and "| FSDP |" in proc.stdout


@needs_libtpu
def test_check_refuses_bad_input_with_one_line_and_exit_2(tmp_path):
    config = tmp_path / "micro.py"
    config.write_text(MICRO_CONFIG)
    for args, expected in [
        (["--topology", "v9x:4x4"], "--topology: 'v9x:4x4'"),
        (["--topology", "v5e:2x2", "--config.train.batch_size=6"], "not a multiple of the 4 chips"),
        (["--topology", "v5e:2x2", "--config.train.bach_size=8"], "did you mean 'train.batch_size'"),
        ([], "--check needs --topology"),
    ]:
        proc = _tool("--check", "--config", str(config), *args, timeout=300)
        last = proc.stderr.strip().splitlines()[-1]
        assert proc.returncode == 2 and last.startswith("tpu_compile: error: ") and expected in last, proc.stderr


def test_hlo_collectives_count_loop_bodies_by_trip_count_and_name_fused_reduce_scatters():
    from benchmarks.tpu_compile import hlo_collectives

    hlo = textwrap.dedent(
        """
        HloModule jit_step, is_scheduled=true

        %add (a: f32[], b: f32[]) -> f32[] {
          %a = f32[] parameter(0)
          %b = f32[] parameter(1)
          ROOT %s = f32[] add(%a, %b)
        }

        %body (p: (s32[], f32[8,128])) -> (s32[], f32[8,128]) {
          %p = (s32[], f32[8,128]{1,0}) parameter(0)
          %x = f32[2,128]{1,0:T(8,128)} get-tuple-element(%p), index=1
          %ag = f32[8,128]{1,0:T(8,128)} all-gather(%x), channel_id=1, @MESH4, dimensions={0}
          ROOT %t = (s32[], f32[8,128]{1,0}) tuple(%i, %ag)
        }

        %cond (p: (s32[], f32[8,128])) -> pred[] {
          ROOT %c = pred[] constant(true)
        }

        %all-reduce-scatter.1 (input_0: f32[1024]) -> f32[256] {
          %input_0 = f32[1024]{0} parameter(0)
          %ar = f32[1024]{0} all-reduce(%input_0), channel_id=2, replica_groups=[1,4]<=[4], to_apply=%add
          ROOT %ds = f32[256]{0} dynamic-slice(%ar, %off), dynamic_slice_sizes={256}
        }

        ENTRY %main (x: f32[1024]) -> f32[256] {
          %x = f32[1024]{0} parameter(0)
          %w = (s32[], f32[8,128]{1,0}) while(%t0), condition=%cond, body=%body, @TRIP40
          %g = (f32[4,4]{1,0}, /*index=1*/f32[16,4]{1,0}) all-gather-start(%y), @GROUP4, dimensions={0}
          %gd = f32[16,4]{1,0} all-gather-done(%g)
          %sum = bf16[64]{0} all-reduce(%z), replica_groups={}, to_apply=%add
          ROOT %rs = f32[256]{0} fusion(%x), kind=kOutput, calls=%all-reduce-scatter.1
        }
        """
    )
    hlo = hlo.replace("@MESH4", "replica_groups=mesh['axis_0'=4] {'axis_0'}").replace(
        "@GROUP4", "replica_groups={{0,1,2,3}}"
    )
    hlo = hlo.replace("@TRIP40", 'backend_config={"known_trip_count":{"n":"40"}}')
    got = hlo_collectives(hlo, devices=4)
    assert got["all-gather"]["count"] == 41  # 40 loop iterations + one asynchronous gather
    assert got["all-gather"]["bytes"] == 40 * 8 * 128 * 4 + 16 * 4 * 4
    assert got["all-reduce"] == {"count": 1, "bytes": 128, "wire_bytes": 2 * 3 / 4 * 128}
    assert got["reduce-scatter"] == {"count": 1, "bytes": 4096, "wire_bytes": 3 / 4 * 4096}


def test_hlo_collectives_read_a_scan_trip_count_from_its_condition():
    """XLA:TPU's compiled HLO carries no known_trip_count: a scan's loop (``i < N``, i from 0) counts N times;
    a condition of another form is counted once and reported as unknown."""
    from benchmarks.tpu_compile import hlo_collectives

    hlo = textwrap.dedent(
        """
        %body (p: (s32[], bf16[64])) -> (s32[], bf16[64]) {
          %p = (s32[], bf16[64]{0}) parameter(0)
          %g = bf16[64]{0} get-tuple-element(%p), index=1
          %ar = bf16[64]{0} all-reduce(%g), replica_groups=[1,4]<=[4], to_apply=%add
          ROOT %t = (s32[], bf16[64]{0}) tuple(%i, %ar)
        }

        %scan_cond (p: (s32[], bf16[64])) -> pred[] {
          %n = s32[]{:T(128)} constant(12)
          %p = (s32[]{:T(128)}, bf16[64]{0}) parameter(0)
          %i = s32[]{:T(128)} get-tuple-element(%p), index=0
          ROOT %lt = pred[]{:T(512)} compare(%i, %n), direction=LT
        }

        %other_cond (p: (s32[], bf16[64])) -> pred[] {
          %p = (s32[]{:T(128)}, bf16[64]{0}) parameter(0)
          %i = s32[]{:T(128)} get-tuple-element(%p), index=0
          ROOT %ne = pred[]{:T(512)} compare(%i, %i), direction=NE
        }

        ENTRY %main (x: bf16[64]) -> bf16[64] {
          %w = (s32[], bf16[64]{0}) while(%t0), condition=%scan_cond, body=%body
          %v = (s32[], bf16[64]{0}) while(%t1), condition=%other_cond, body=%body
          ROOT %r = bf16[64]{0} get-tuple-element(%w), index=1
        }
        """
    )
    got = hlo_collectives(hlo, devices=4)
    assert got["all-reduce"]["count"] == 12 + 1 and got["all-reduce"]["bytes"] == 13 * 64 * 2
    assert got["_unknown_trip_counts"] == 1


def test_eval_compiles_for_one_host_of_the_slice():
    from benchmarks.tpu_compile import host_topology

    assert [host_topology(t) for t in ("v5e:16x16", "v4:2x2x4", "v5p:4x4x8", "v6e:8x8")] == [
        "v5e:2x2", "v4:2x2x1", "v5p:2x2x1", "v6e:2x2",
    ]  # fmt: skip


def test_analytic_forward_matches_the_reference_gmacs():
    from aggpose_jax.models.aggpose import get_model_config
    from benchmarks.tpu_compile import analytic_forward_macs

    # ../shared/reference/AGGPOSE.md: 15.56 (L) and 7.29 (S) GMACs at 256x192, measured on the released code
    assert analytic_forward_macs(get_model_config("aggpose_l")) / 1e9 == pytest.approx(15.56, abs=0.005)
    assert analytic_forward_macs(get_model_config("aggpose_s")) / 1e9 == pytest.approx(7.29, abs=0.005)


def test_importing_the_tool_leaves_the_environment_alone():
    before = dict(os.environ)
    import benchmarks.tpu_compile  # noqa: F401

    assert dict(os.environ) == before
