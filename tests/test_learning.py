"""Training learns: a small config trained from scratch must reach a stated AP on the synthetic val set.

The Quickstart config (``configs/default.py``: aggpose_tiny, batch 16, lr 5e-3 cosine, synthetic COCO-17)
shrunk to 96x64 input (24x16 heatmaps, sigma 1.5), 300 generated images and 600 steps, run as a user runs
it (``python -m aggpose_jax.main``, default XLA optimisation), then evaluated (GT boxes, flip test, DARK).

Measured on this project's 2-vCPU machine (jax 0.10.2), 2026-12-05, val set of 153 people:

* 600 steps (this test): seed 1 AP 0.360, seed 0 AP 0.368 (twice: the same number
  through this test, 9.8 minutes); 10-14 minutes each with both cores
  busy with other agents' work (not measured on a quiet machine).
* 300 steps, for the spread: seeds 0, 1, 2 AP 0.219, 0.022, 0.117 -- at half the budget a run may still
  sit on the all-zero-heatmap plateau, so the test trains 600.

The threshold is about half the lowest 600-step AP measured. A run that has not learned scores near 0
(the 300-step seed-1 run, still on the plateau: 0.022); the same 600 steps with ``optim.lr=1e-9``
(0 is refused by validation) gave AP 0.0000, so a learning-rate bug fails this test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from train_helpers import REPO

MIN_AP = 0.18

OVERRIDES = (
    "--config.seed=0",
    "--config.train.num_steps=600",
    "--config.data.image_size=(96,64)",
    "--config.data.heatmap_size=(24,16)",
    "--config.data.sigma=1.5",
    "--config.data.synthetic.num_images=300",
    "--config.train.checkpoint_every_steps=100000",
    "--config.eval.draw_images=0",
)


@pytest.mark.long
def test_small_config_learns_to_a_stated_ap(tmp_path):
    workdir = tmp_path / "run"
    args = [sys.executable, "-m", "aggpose_jax.main", "--config", os.path.join(REPO, "configs", "default.py")]
    proc = subprocess.run(
        [*args, "--workdir", str(workdir), *OVERRIDES],
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    with open(workdir / "metrics.json", encoding="utf-8") as f:
        latest = json.load(f)["latest"]
    print(f"AP {latest['AP']:.4f} (AP50 {latest['AP50']:.4f}) after {latest['step']} steps")
    assert latest["step"] == 600 and latest["num_people"] > 100
    assert latest["AP"] >= MIN_AP, f"AP {latest['AP']:.4f} < {MIN_AP}: training did not learn"
