"""The command line (python -m aggpose_jax.main): config errors, workdir checks, eval of the converted fixture."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from train_helpers import REPO, TESTS, child_env, compile_lock

FIXTURE = os.path.join(REPO, "tests", "fixtures", "upstream_tiny17.pth")
DEFAULT = os.path.join(REPO, "configs", "default.py")


def _main(*args: str, timeout: int = 600, lock: bool = False, **env: str) -> subprocess.CompletedProcess:
    with compile_lock() if lock else contextlib.nullcontext():
        return subprocess.run(
            [sys.executable, "-m", "aggpose_jax.main", *args],
            env={**child_env(), **env},
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
        )


@pytest.mark.parametrize(
    "override, expected",
    [
        ("--config.optim.lrr=0.1", "unknown config key 'optim.lrr'; did you mean 'optim.lr'?"),
        ("--config.nosuch.key=1", "unknown config key 'nosuch'"),
        ("--config.optim.lr=fast", "--config.optim.lr"),
        ("--config.optim.decay_epochs=abc", "config.optim.decay_epochs: expected a tuple of numbers"),
        ("--config.train.batch_size=1.5", "--config.train.batch_size"),
        ("--config.optim.schedule=linear", "config.optim.schedule: must be one of ['multistep', 'cosine', 'constant']"),
        ("--config.data.keypoints=horse", "config.data.keypoints"),
    ],
)
def test_bad_config_names_the_key_and_writes_nothing(tmp_path, override, expected):
    workdir = tmp_path / "wd"
    proc = _main("--config", DEFAULT, "--workdir", str(workdir), override, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and expected in last, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not workdir.exists()


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--mode", "eval"], "config.init_checkpoint: empty and no training checkpoint in"),
        (["--config.init_checkpoint=/no/such.pth"], "config.init_checkpoint: /no/such.pth: no such file or directory"),
        (["--config.data.root=/no/such/coco"], "config.data.root: /no/such/coco: no such file or directory"),
    ],
    ids=["eval-without-checkpoint", "missing-init-checkpoint", "missing-data-root"],
)
def test_missing_inputs_are_one_line_before_anything_is_written(tmp_path, args, expected):
    workdir = tmp_path / "wd"
    proc = _main("--config", DEFAULT, "--workdir", str(workdir), *args, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [f"error: {expected}" + proc.stderr.strip().split(expected, 1)[1]]
    assert not workdir.exists()


def test_broken_launch_environment_is_one_line_before_anything_is_written(tmp_path):
    workdir = tmp_path / "wd"
    env = dict(AGGPOSE_DISTRIBUTED="1", AGGPOSE_COORDINATOR="localhost:1234", AGGPOSE_PROCESS_ID="0")
    proc = _main("--config", DEFAULT, "--workdir", str(workdir), timeout=120, AGGPOSE_NUM_PROCESSES="two", **env)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == ["error: AGGPOSE_NUM_PROCESSES: expected an integer >= 1, got 'two'"]
    assert not workdir.exists()


def test_unwritable_workdir_fails_before_training(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    proc = _main("--config", DEFAULT, "--workdir", str(blocker / "wd"), timeout=120)
    assert proc.returncode == 2
    assert f"--workdir: {blocker / 'wd'} is not writable" in proc.stderr
    assert "Traceback" not in proc.stderr and "training" not in proc.stderr


def test_eval_of_converted_upstream_fixture_writes_metrics(tmp_path, synthetic_coco_root):
    workdir = tmp_path / "eval"
    proc = _main(
        "--config",
        DEFAULT,
        "--workdir",
        str(workdir),
        "--mode",
        "eval",
        f"--config.init_checkpoint={FIXTURE}",
        f"--config.data.root={synthetic_coco_root}",
        "--config.data.image_size=(64,64)",
        "--config.data.heatmap_size=(16,16)",
        "--config.eval.batch_size=16",
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    with open(workdir / "metrics.json") as f:
        metrics = json.load(f)
    latest = metrics["latest"]
    assert 0.0 <= latest["AP"] <= 1.0 and latest["num_people"] > 0
    out_dir = latest["out_dir"]
    assert os.path.isfile(os.path.join(out_dir, "stats.json"))
    assert os.path.isfile(os.path.join(out_dir, "keypoints_results.json"))
    assert os.path.isfile(os.path.join(out_dir, "predictions.png"))


def test_train_and_eval_writes_checkpoints_metrics_and_tensorboard(tmp_path, synthetic_coco_root):
    config_file = tmp_path / "tiny_config.py"  # the tiny training config of the Trainer tests
    config_file.write_text(
        f"import sys\nsys.path.insert(0, {TESTS!r})\nfrom train_helpers import tiny_config\n"
        f"def get_config():\n    return tiny_config({synthetic_coco_root!r})\n"
    )
    workdir = tmp_path / "run"
    args = [
        "--config",
        str(config_file),
        "--workdir",
        str(workdir),
        "--config.train.log_every_steps=3",
        "--config.eval.every_steps=3",
    ]
    proc = _main(*args, lock=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "step 6/6 | loss" in proc.stderr and "img/s | ETA" in proc.stderr
    with open(workdir / "metrics.json") as f:
        metrics = json.load(f)
    assert [e["step"] for e in metrics["evaluations"]] == [3, 6] and metrics["latest"]["step"] == 6
    assert metrics["best"]["AP"] == max(e["AP"] for e in metrics["evaluations"])
    for step in (3, 6):
        assert os.path.isfile(workdir / "eval" / f"step_{step:08d}" / "predictions.png")
    assert "AP" in proc.stderr
    assert sorted(os.listdir(workdir / "checkpoints"), key=int) == ["3", "6"]
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(workdir / "tb"))
    with open(workdir / "config.json") as f:
        assert json.load(f)["eval"]["every_steps"] == 3
    # Running again resumes at the end: nothing is left to train and the run still succeeds.
    again = _main(*args)
    assert again.returncode == 0, again.stderr[-4000:]
    assert "from step 6" in again.stderr
    # --mode eval restores the latest training checkpoint's parameters alone: a data root holding only
    # the val split (no train annotations) is enough.
    val_only = tmp_path / "val_only"
    (val_only / "annotations").mkdir(parents=True)
    ann = "person_keypoints_val2017.json"
    (val_only / "annotations" / ann).write_bytes((Path(synthetic_coco_root) / "annotations" / ann).read_bytes())
    (val_only / "val2017").symlink_to(Path(synthetic_coco_root) / "val2017")
    evaluated = _main(*args, "--mode", "eval", f"--config.data.root={val_only}")
    assert evaluated.returncode == 0, evaluated.stderr[-4000:]
    with open(workdir / "metrics.json") as f:
        latest = json.load(f)["latest"]
    assert latest["step"] == 6 and latest["out_dir"].endswith("step_00000006")
