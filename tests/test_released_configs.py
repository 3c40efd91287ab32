"""The three released configs load, validate and build their model (abstractly, no weights, no training).

Recipe values are those of the original release's experiment files (experiments/coco/aggpose/
aggpose_L_256x192_adamw_lr1e-3.yaml, experiments/infantpose/aggpose/aggpose_L_256x192.yaml) as the
config files' docstrings state them; parameter counts are from ../shared/reference/AGGPOSE.md
(AggPose-L 96,751,825 for 17 joints = the released COCO checkpoint; AggPose-S 39.51 M) and the
21-joint output layer (64 * 21 + 21 instead of 64 * 17 + 17).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from train_helpers import REPO

from aggpose_jax import config as config_lib
from aggpose_jax.params import abstract_params, count_params

CONFIGS = os.path.join(REPO, "configs")

# name -> (model, keypoints, joints, lr, decay epochs, epochs, OKS-NMS threshold, parameters)
RELEASED = {
    "coco_aggpose_l_256x192.py": ("aggpose_l", "coco", 17, 1e-3, (170.0, 200.0, 240.0), 250.0, 0.9, 96_751_825),
    "coco_aggpose_s_256x192.py": ("aggpose_s", "coco", 17, 1e-3, (170.0, 200.0, 240.0), 250.0, 0.9, 39_505_105),
    "infant_aggpose_l_256x192.py": ("aggpose_l", "infant", 21, 1e-4, (50.0, 80.0), 100.0, None, 96_751_825 + 4 * 65),
}


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_released_config_validates_and_builds_its_model(name, tmp_path):
    model, keypoints, joints, lr, decay_epochs, epochs, nms, num_params = RELEASED[name]
    path = os.path.join(CONFIGS, name)
    config = config_lib.load_file(path)
    run = config_lib.validate(config, config_lib.load_file(path), workdir=str(tmp_path))

    assert run.model_name == model
    assert run.model.num_joints == joints and run.model.image_size == (256, 192)
    d = run.data
    assert (d.keypoints, d.keypoint_set.num_joints) == (keypoints, joints)
    assert d.image_size == (256, 192) and d.heatmap_size == (64, 48) and d.sigma == 2.0
    assert d.use_gt_bbox and d.affine_convention == "aggpose"
    aug = d.aug  # the release's augmentation: scale 0.35, rotation 45 (p 0.6), flip, half-body 0.3
    assert (aug.scale_factor, aug.rotation_factor, aug.rotation_prob, aug.flip, aug.half_body_prob) == (
        0.35,
        45.0,
        0.6,
        True,
        0.3,
    )
    o = run.optim
    assert (o.name, o.lr, o.schedule, o.decay_epochs, o.decay_factor, o.warmup_epochs) == (
        "adamw",
        lr,
        "multistep",
        decay_epochs,
        0.1,
        0.0,
    )
    assert run.train.batch.global_size == 128 and run.train.num_epochs == epochs  # 32 per GPU x 4
    assert run.eval.flip_test and run.eval.decode == "dark" and not run.eval.shift_heatmap
    assert run.eval.oks_nms_thre == nms and run.eval.in_vis_thre == 0.2
    assert count_params(abstract_params(run.model)) == num_params


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_released_config_through_the_command_line(name, tmp_path):
    """``python -m aggpose_jax.main --config configs/<name>``: loaded and checked; stops at the missing data root."""
    workdir = tmp_path / "wd"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "aggpose_jax.main",
            "--config",
            os.path.join(CONFIGS, name),
            "--workdir",
            str(workdir),
            "--config.data.root=/no/such/data",
        ],
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines() == ["error: config.data.root: /no/such/data: no such file or directory"]
    assert not workdir.exists()
