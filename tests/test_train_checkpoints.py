"""Training checkpoints (aggpose_jax.train.checkpoints): state + Grain iterator round trip, retention, corruption."""

from __future__ import annotations

import os
import warnings

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from aggpose_jax.train.checkpoints import CorruptCheckpointWarning, TrainCheckpointer


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
    step, restored = ckpt.restore_latest(_abstract(_state(0)), fresh)
    assert step == 3
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


def test_corrupt_latest_falls_back_with_warning(tmp_path):
    directory = str(tmp_path / "ckpt")
    ckpt = TrainCheckpointer(directory, keep=3, async_save=False)
    it = _iterator()
    ckpt.save(1, _state(1), it)
    ckpt.save(2, _state(2), it)
    ckpt.close()
    state_dir = os.path.join(directory, "2", "state")
    for root, _, files in os.walk(state_dir):  # damage every data and metadata file of step 2
        for name in files:
            with open(os.path.join(root, name), "wb") as f:
                f.write(b"garbage")

    ckpt = TrainCheckpointer(directory, keep=3)
    with pytest.warns(CorruptCheckpointWarning, match="step 2"):
        step, restored = ckpt.restore_latest(_abstract(_state(0)), _iterator())
    assert step == 1 and _equal(restored, _state(1))
    assert ckpt.all_steps() == [1]
    assert os.listdir(directory + "_corrupt")  # moved aside, not deleted
    ckpt.close()


def test_no_checkpoint_returns_none(tmp_path):
    ckpt = TrainCheckpointer(str(tmp_path / "empty"), keep=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CorruptCheckpointWarning)
        assert ckpt.restore_latest(_abstract(_state(0)), _iterator()) is None
    ckpt.close()
