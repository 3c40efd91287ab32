"""The typed run config: ``config.validate`` builds it once (frozen, every derived value), nothing changes it."""

from __future__ import annotations

import dataclasses
import json
import os
from types import SimpleNamespace

import pytest

from aggpose_jax.config import RunConfig, TrainSchedule, base_config, validate
from aggpose_jax.convert.mapping import CheckpointMismatchError
from aggpose_jax.data.pipeline import BatchSplit
from aggpose_jax.errors import AggposeError, CheckpointError, InputError, TrainCheckpointError, one_line
from aggpose_jax.inference import PoseModel
from aggpose_jax.model_source import checkpoint_kind
from aggpose_jax.models import cpu_kernels
from aggpose_jax.models.aggpose import get_model_config
from aggpose_jax.params import bind, init_params
from aggpose_jax.pose.keypoints import keypoint_set_for

FIVE_JOINTS = dataclasses.replace(get_model_config("aggpose_tiny"), num_joints=5)


def _devices(processes: int, per_process: int) -> list[SimpleNamespace]:
    return [
        SimpleNamespace(process_index=p, id=p * per_process + i) for p in range(processes) for i in range(per_process)
    ]


def _config(**changes):
    c = base_config()
    c.model.name = "aggpose_tiny"
    for key, value in changes.items():
        section, name = key.split("__")
        c[section][name] = value
    return c


def test_validate_returns_a_frozen_run_config_with_every_derived_value(tmp_path):
    config = _config(train__batch_size=16, eval__batch_size=8, data__use_gt_bbox=False, eval__oks_nms_thre=-1.0)
    before = config.to_dict()
    run = validate(config, workdir=str(tmp_path), devices=_devices(2, 4))
    assert config.to_dict() == before  # the ConfigDict is not changed
    assert isinstance(run, RunConfig)
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.seed = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.train.batch = None  # type: ignore[misc]
    assert (run.process_count, run.device_count) == (2, 8)
    assert run.train.batch.global_size == 16 and run.train.batch.local_size == 8
    assert run.eval.batch.global_size == 8 and run.eval.batch.local_size == 4  # one rule for both
    synthetic = os.path.join(str(tmp_path), "synthetic")
    assert run.data.root == synthetic and run.data.generate_synthetic
    assert run.data.detections_file == os.path.join(synthetic, "person_detections_val2017.json")
    assert run.eval.ann_file == os.path.join(synthetic, "annotations", "person_keypoints_val2017.json")
    assert run.eval.oks_nms_thre is None and run.eval.image_dir is None
    assert run.data.heatmap_size == (64, 48) and run.data.keypoint_set.num_joints == run.model.num_joints == 17
    assert run.data.aug.rotation_factor == 45.0  # data/transforms.AugmentConfig's default, the one owner
    recorded = run.record()
    assert recorded["data"]["root"] == synthetic
    assert {k: v for k, v in recorded["train"].items()} == dict(config.train.to_dict())


def test_kernels_are_resolved_once_for_the_run_platform():
    run = validate(_config(model__kernels="auto", train__batch_size=4), devices=_devices(1, 1))
    assert run.model.kernels == cpu_kernels.resolve("auto", run.platform) in ("cpu", "xla")
    assert validate(_config(model__kernels="xla", train__batch_size=4), devices=_devices(1, 1)).model.kernels == "xla"
    assert cpu_kernels.resolve("auto", "cpu") == "cpu" and cpu_kernels.resolve("auto", "tpu") == "xla"
    assert cpu_kernels.resolve("cpu", "gpu") == "cpu"
    with pytest.raises(ValueError, match="config.model.kernels: must be one of"):
        validate(_config(model__kernels="fast"), devices=_devices(1, 1))


def test_batch_that_does_not_split_names_the_field():
    with pytest.raises(ValueError, match=r"config.train.batch_size: .*\(12\).*device count \(8\)"):
        validate(_config(train__batch_size=12), devices=_devices(2, 4))
    with pytest.raises(ValueError, match=r"config.eval.batch_size: .*\(3\).*process count \(2\)"):
        validate(_config(train__batch_size=8, eval__batch_size=3), devices=_devices(2, 4))
    assert BatchSplit.of(8, 2, 1, 4) == BatchSplit(8, 2, 1)


def test_train_schedule_from_the_training_set_size():
    run = validate(_config(train__batch_size=4, train__num_epochs=2.5, eval__every_epochs=1.0), devices=_devices(1, 1))
    assert TrainSchedule.of(run, 42) == TrainSchedule(steps_per_epoch=10, total_steps=25, eval_every=10)
    with pytest.raises(ValueError, match=r"config.train.batch_size: 4 is larger than the training set \(3 people\)"):
        TrainSchedule.of(run, 3)


def test_joint_count_to_keypoint_set_has_one_owner():
    assert keypoint_set_for(17).name == "coco" and keypoint_set_for(21).name == "infant"
    assert keypoint_set_for(21, "infant").num_joints == 21
    with pytest.raises(ValueError, match=r"m\.pth: the model predicts 5 joints; name its keypoint set"):
        keypoint_set_for(5, where="m.pth")
    with pytest.raises(ValueError, match="predicts 17 joints but keypoint set 'infant' has 21"):
        keypoint_set_for(17, "infant")
    # The Python API's Predictor asks the same owner: a 5-joint model is refused, not labelled COCO.
    model = PoseModel(FIVE_JOINTS, bind(FIVE_JOINTS, init_params(FIVE_JOINTS, 0)))
    with pytest.raises(ValueError, match="Predictor: the model predicts 5 joints; name its keypoint set"):
        model.predictor()
    with pytest.raises(ValueError, match="predicts 5 joints but keypoint set 'coco' has 17"):
        model.predictor("coco")


def test_one_line_is_the_one_formatter():
    listing = "2 tensors do not fit:\n  missing (1):\n    a.weight\n  mis-shaped (1):\n    b.bias  (3,) vs (4,)"
    assert one_line(listing) == "2 tensors do not fit: missing (1): a.weight; mis-shaped (1): b.bias (3,) vs (4,)"
    assert one_line(FileNotFoundError(2, "No such file or directory", "/x/y.json")) == (
        "No such file or directory: /x/y.json"
    )
    assert one_line(KeyError()) == "KeyError"
    long = "/very/long/path/" * 30 + "end.json is unreadable"
    short = one_line(long, limit=80)
    assert len(short) == 80 and short.startswith("/very/long/") and short.endswith("end.json is unreadable")
    assert "..." in short and one_line("fits", limit=80) == "fits"
    assert issubclass(CheckpointMismatchError, CheckpointError)  # the converter's errors are in the hierarchy


def test_one_error_hierarchy_and_one_checkpoint_kind_dispatch(tmp_path):
    from aggpose_jax import model_dir
    from aggpose_jax.train import checkpoints

    assert model_dir.CheckpointError is CheckpointError and checkpoints.CheckpointError is TrainCheckpointError
    assert issubclass(CheckpointError, InputError) and issubclass(CheckpointError, ValueError)
    assert InputError.exit_code == 2 and TrainCheckpointError.exit_code == 1
    assert issubclass(TrainCheckpointError, AggposeError)
    (tmp_path / "w" / "checkpoints").mkdir(parents=True)
    (tmp_path / "f.pth").write_bytes(b"")
    assert checkpoint_kind(tmp_path / "w") == "workdir" and checkpoint_kind(tmp_path / "f.pth") == "file"
    with pytest.raises(CheckpointError, match="neither a converted model"):
        checkpoint_kind(tmp_path)
    with pytest.raises(CheckpointError, match="nowhere: no such file or directory"):
        checkpoint_kind(tmp_path / "nowhere")


def test_best_step_has_one_rule_for_checkpoints_and_metrics_json(tmp_path):
    from aggpose_jax.evaluate.job import record_metrics
    from aggpose_jax.train.checkpoints import best_step

    history = [(2, {"AP": 0.5}), (4, {"AP": 0.7}), (6, {"AP": 0.7}), (8, {"AP": float("nan")}), (10, {"AR": 0.9})]
    assert best_step(history) == 6  # the later step on a tie; NaN and missing AP never win
    assert best_step([(3, None), (5, {})]) is None
    for step, metrics in history:
        record_metrics(str(tmp_path), step, metrics, f"eval/{step}")
    recorded = json.loads((tmp_path / "metrics.json").read_text())
    assert recorded["best"]["step"] == 6 and recorded["latest"]["step"] == 10


@pytest.mark.parametrize(
    "module",
    [
        "aggpose_jax.convert.cli",
        "aggpose_jax.data.synthetic",
        "aggpose_jax.data.tfds_builder",
        "aggpose_jax.data.visualize",
        "aggpose_jax.predict.cli",
        "aggpose_jax.predict.export",
        "aggpose_jax.gma.cli",
    ],
)
def test_every_console_command_reports_a_bad_flag_in_one_line(module, capsys):
    import importlib

    main = importlib.import_module(module).main
    try:
        code = main(["--no-such-flag"])
    except SystemExit as stop:
        code = stop.code
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and ": error: " in err and err.endswith(" (see --help)\n"), err
