"""Training checkpoints (aggpose_jax.train.checkpoints): state + Grain iterator round trip, retention, corruption."""

from __future__ import annotations

import errno
import logging
import os

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from aggpose_jax.train.checkpoints import CheckpointError, TrainCheckpointer


class _Tiny(nnx.Module):
    """Stand-in model: a Linear and a LayerNorm."""

    def __init__(self, rngs: nnx.Rngs):
        self.fc = nnx.Linear(3, 4, rngs=rngs)
        self.norm = nnx.LayerNorm(4, rngs=rngs)


def _state(seed: int = 0) -> dict:
    params = nnx.to_pure_dict(nnx.state(_Tiny(nnx.Rngs(seed)), nnx.Param))
    tx = optax.adamw(1e-3)
    return dict(
        step=jnp.asarray(seed, jnp.int32),
        params=params,
        opt_state=tx.init(params),
        rng=jax.random.key_data(jax.random.key(seed)),
    )


def _iterator() -> grain.DatasetIterator:
    return iter(grain.MapDataset.range(100).shuffle(seed=3).to_iter_dataset().batch(4))


def _abstract(state: dict) -> dict:
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), state)


def _equal(a: dict, b: dict) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_round_trip_restores_state_and_iterator_position(tmp_path):
    ckpt = TrainCheckpointer(str(tmp_path / "ckpt"), keep=2, async_save=True)
    it = _iterator()
    for _ in range(3):
        next(it)
    state = _state(5)
    ckpt.save(3, state, it)
    expected_next = [next(it) for _ in range(2)]
    ckpt.close()

    ckpt = TrainCheckpointer(str(tmp_path / "ckpt"), keep=2)
    fresh = _iterator()
    result = ckpt.restore_latest(_abstract(_state(0)), fresh)
    step, restored = result.step, result.state
    assert step == 3 and result.set_aside == ()
    assert result.data_position == "data position of step 3: each process's saved iterator state"
    assert _equal(restored, state)
    assert int(restored["step"]) == 5
    for want in expected_next:
        np.testing.assert_array_equal(next(fresh), want)
    ckpt.close()


def test_keeps_last_n_and_best_by_ap(tmp_path):
    ckpt = TrainCheckpointer(str(tmp_path / "ckpt"), keep=2, async_save=False)
    it = _iterator()
    aps = {1: 0.2, 2: 0.9, 3: 0.1, 4: None, 5: 0.3, 6: None}
    for step, ap in aps.items():
        ckpt.save(step, _state(step), it, None if ap is None else {"AP": ap, "AR": 0.5})
    ckpt.wait()
    assert ckpt.all_steps() == [2, 5, 6]  # best (AP 0.9) + last two
    assert ckpt.best_step() == 2
    ckpt.close()
    # after a restart the best checkpoint is still known and kept
    ckpt = TrainCheckpointer(str(tmp_path / "ckpt"), keep=2, async_save=False)
    assert ckpt.best_step() == 2
    ckpt.save(7, _state(7), it)
    ckpt.save(8, _state(8), it, {"AP": 0.5, "AR": 0.5})
    ckpt.wait()
    assert ckpt.all_steps() == [2, 7, 8] and ckpt.best_step() == 2
    ckpt.close()


def test_a_tie_keeps_and_names_the_later_step(tmp_path):
    """Orbax's retention (BestN) and best_step (--which best, metrics.json) agree on a tie; NaN never wins."""
    ckpt = TrainCheckpointer(str(tmp_path / "ckpt"), keep=1, async_save=False)
    it = _iterator()
    for step, ap in {1: 0.7, 2: 0.7, 3: float("nan"), 4: 0.1}.items():
        ckpt.save(step, _state(step), it, {"AP": ap})
    ckpt.wait()
    assert ckpt.all_steps() == [2, 4] and ckpt.best_step() == 2
    ckpt.close()


def _two_checkpoints(directory: str) -> None:
    ckpt = TrainCheckpointer(directory, keep=3, async_save=False)
    it = _iterator()
    ckpt.save(1, _state(1), it)
    ckpt.save(2, _state(2), it)
    ckpt.close()


def _damage(step_dir: str) -> None:
    for root, _, files in os.walk(os.path.join(step_dir, "state")):  # every data and metadata file
        for name in files:
            with open(os.path.join(root, name), "wb") as f:
                f.write(b"garbage")


def test_unreadable_latest_is_set_aside_with_one_short_warning(tmp_path, caplog, capfd):
    directory = str(tmp_path / "checkpoints")
    _two_checkpoints(directory)
    _damage(os.path.join(directory, "2"))
    ckpt = TrainCheckpointer(directory, keep=3)
    with caplog.at_level(logging.WARNING, logger="aggpose_jax"):
        result = ckpt.restore_latest(_abstract(_state(0)), _iterator())
    assert result.step == 1 and _equal(result.state, _state(1))
    assert ckpt.all_steps() == [1]
    (aside,) = os.listdir(directory + "_unreadable")  # renamed, not deleted
    assert result.set_aside == (os.path.join(directory + "_unreadable", aside),)
    assert aside.startswith("2-") and os.listdir(os.path.join(directory + "_unreadable", aside))
    warnings = [r.getMessage() for r in caplog.records if r.name.startswith("aggpose_jax")]
    assert len(warnings) == 1 and "step 2" in warnings[0] and len(warnings[0]) <= 200, warnings
    assert "\n" not in warnings[0]
    err = capfd.readouterr().err
    assert "Traceback" not in err and "tensorstore" not in err.lower(), err[-2000:]
    with open(ckpt.restore_log) as f:
        assert "Traceback" in f.read()  # the details are kept, in the workdir's log
    ckpt.close()


def test_every_checkpoint_unreadable_stops_with_one_line(tmp_path):
    directory = str(tmp_path / "checkpoints")
    _two_checkpoints(directory)
    _damage(os.path.join(directory, "1"))
    _damage(os.path.join(directory, "2"))
    ckpt = TrainCheckpointer(directory, keep=3)
    with pytest.raises(CheckpointError, match=r"none of the 2 checkpoints .* --restart") as info:
        ckpt.restore_latest(_abstract(_state(0)), _iterator())
    assert "\n" not in str(info.value)
    assert sorted(n.split("-")[0] for n in os.listdir(directory + "_unreadable")) == ["1", "2"]
    ckpt.close()


def test_incompatible_checkpoint_is_refused_and_left_in_place(tmp_path):
    directory = str(tmp_path / "checkpoints")
    _two_checkpoints(directory)
    other = _state(0)
    other["params"]["fc"]["kernel"] = jnp.zeros((3, 5))  # another architecture
    ckpt = TrainCheckpointer(directory, keep=3)
    with pytest.raises(CheckpointError, match=r"step 2 .* does not fit the configured model.*fc.*kernel"):
        ckpt.restore_latest(_abstract(other), _iterator())
    assert ckpt.all_steps() == [1, 2] and not os.path.exists(directory + "_unreadable")
    ckpt.close()


def test_a_failed_write_is_one_error_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    """ENOSPC raised where Orbax writes array data, during an asynchronous save."""
    import orbax.checkpoint as ocp

    directory = str(tmp_path / "checkpoints")
    ckpt = TrainCheckpointer(directory, keep=3, async_save=True)
    it = _iterator()
    ckpt.save(1, _state(1), it)
    ckpt.wait()

    async def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ocp.type_handlers.ArrayHandler, "serialize", disk_full)
    with pytest.raises(
        CheckpointError, match=r"writing step 2 .*No space left on device.*the last complete one is step 1"
    ):
        ckpt.save(2, _state(2), it)
        ckpt.wait()
    monkeypatch.undo()
    ckpt.close()
    ckpt = TrainCheckpointer(directory, keep=3)
    assert ckpt.all_steps() == [1]
    result = ckpt.restore_latest(_abstract(_state(0)), _iterator())
    assert result.step == 1 and _equal(result.state, _state(1))
    ckpt.close()


def test_no_checkpoint_returns_none(tmp_path):
    ckpt = TrainCheckpointer(str(tmp_path / "empty"), keep=1)
    assert ckpt.restore_latest(_abstract(_state(0)), _iterator()) is None
    ckpt.close()


def test_unraisable_reports_of_background_io_are_recognised_by_their_traceback(tmp_path):
    """The unraisable hook reads the files of a real traceback (``traceback.walk_tb`` yields frames): a report
    raised from a file under an ``asyncio`` folder goes to the restore log, another is left to Python."""
    import sys
    import types

    from aggpose_jax.train import checkpoints

    def raised_in(filename: str) -> BaseException:
        code = compile("raise OSError('I/O operation on closed file')", filename, "exec")
        try:
            exec(code, {})
        except OSError as e:
            return e
        raise AssertionError("not raised")

    def report(err: BaseException) -> types.SimpleNamespace:
        return types.SimpleNamespace(
            exc_type=type(err), exc_value=err, exc_traceback=err.__traceback__, err_msg=None, object=None
        )

    background = raised_in(os.path.join(os.sep, "lib", "python3", "asyncio", "base_events.py"))
    ours = raised_in(os.path.join(os.sep, "home", "user", "analysis.py"))
    assert checkpoints._from_background_io(report(background))
    assert not checkpoints._from_background_io(report(ours))

    log = tmp_path / "restore.log"
    previous_hook, previous_path = sys.unraisablehook, checkpoints._BACKGROUND_LOG.path
    seen = []
    sys.unraisablehook = seen.append
    try:
        checkpoints._route_background_output(str(log))
        sys.unraisablehook(report(background))
        sys.unraisablehook(report(ours))
    finally:
        sys.unraisablehook, checkpoints._BACKGROUND_LOG.path = previous_hook, previous_path
    assert "I/O operation on closed file" in log.read_text()
    assert [r.exc_value for r in seen] == [ours]
