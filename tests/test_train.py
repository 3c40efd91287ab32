"""Training: loss, optimizer (decay mask, freezing, schedule, accumulation), sharded step, resume, NaN stop."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from train_helpers import run_python

from aggpose_jax.config import base_config
from aggpose_jax.models.aggpose import get_model_config
from aggpose_jax.params import named_leaves, split_model
from aggpose_jax.train.optimizer import decay_mask, make_optimizer, make_schedule
from aggpose_jax.train.step import joints_mse_loss


def _tiny_params() -> dict:
    """Part of the real AggPose parameter tree (a patch embedding, a scanned block stack, the head)."""
    _, abstract, _ = split_model(get_model_config("aggpose_tiny", image_size=(64, 64)))
    part = {k: abstract[k] for k in ("patch_embed1", "block1", "final_layer")}
    rng = np.random.default_rng(0)
    return jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s.shape), jnp.float32), part)


def _optim(**kw) -> ml_collections.ConfigDict:
    opt = base_config().optim
    opt.update(kw)
    return opt


def test_joints_mse_loss_matches_per_joint_definition():
    rng = np.random.default_rng(1)
    pred, target = rng.normal(size=(2, 2, 8, 6, 5)).astype(np.float32)
    weight = rng.integers(0, 2, size=(2, 5)).astype(np.float32)
    # HRNet JointsMSELoss(use_target_weight): mean over joints of 0.5 * MSE(pred_j * w_j, target_j * w_j)
    per_joint = [
        0.5 * np.mean((pred[..., j] * weight[:, None, None, j] - target[..., j] * weight[:, None, None, j]) ** 2)
        for j in range(5)
    ]
    got = joints_mse_loss(jnp.asarray(pred), jnp.asarray(target), jnp.asarray(weight))
    np.testing.assert_allclose(float(got), np.mean(per_joint), rtol=1e-6)
    assert float(joints_mse_loss(jnp.asarray(pred), jnp.asarray(target), jnp.zeros((2, 5)))) == 0.0


def test_weight_decay_mask_by_name_excludes_norms_and_biases():
    params = _tiny_params()
    mask = dict(named_leaves(decay_mask(params, "kernels")))
    shapes = {k: v.shape for k, v in named_leaves(params)}
    # scanned stacks: biases and LayerNorm scales are 2-D, kernels 3-D/5-D
    assert len(shapes["block1/layers/attn/q/bias"]) == 2 and not mask["block1/layers/attn/q/bias"]
    assert len(shapes["block1/layers/norm1/scale"]) == 2 and not mask["block1/layers/norm1/scale"]
    assert mask["block1/layers/attn/q/kernel"] and mask["patch_embed1/proj/kernel"]
    assert not mask["patch_embed1/norm/scale"] and not mask["final_layer/fc2/bias"]
    assert all(v == k.endswith("/kernel") for k, v in mask.items())
    assert all(dict(named_leaves(decay_mask(params, "all"))).values())

    # Behaviour: with zero gradients only decayed parameters move.
    tx, _ = make_optimizer(_optim(weight_decay=0.1, lr=0.1), params, total_updates=10, updates_per_epoch=5)
    updates, _ = jax.jit(tx.update)(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
    moved = {k: bool(np.any(np.asarray(u) != 0)) for k, u in named_leaves(updates)}
    assert moved == mask


def test_freeze_leaves_matching_params_unchanged():
    params = _tiny_params()
    freeze = ("^patch_embed1/", "block1/layers/attn/")
    tx, _ = make_optimizer(
        _optim(weight_decay=0.05, grad_clip_norm=1.0), params, total_updates=10, updates_per_epoch=5, freeze=freeze
    )
    state = tx.init(params)
    new = params
    grads = jax.tree.map(lambda p: jnp.ones_like(p), params)

    @jax.jit
    def step(state, params):
        updates, state = tx.update(grads, state, params)
        return state, optax.apply_updates(params, updates)

    for _ in range(2):
        state, new = step(state, new)
    before, after = dict(named_leaves(params)), dict(named_leaves(new))
    frozen = [k for k in before if k.startswith("patch_embed1/") or "block1/layers/attn/" in k]
    assert len(frozen) >= 6
    for k in before:
        same = np.array_equal(before[k], after[k])
        assert same == (k in frozen), k


def test_multistep_schedule_with_warmup():
    sched = make_schedule(
        _optim(
            lr=1.0,
            schedule="multistep",
            decay_epochs=(2.0, 4.0),
            decay_factor=0.1,
            warmup_epochs=1.0,
            warmup_init_factor=0.001,
        ),
        total_updates=60,
        updates_per_epoch=10,
    )
    values = [float(sched(i)) for i in (0, 5, 10, 19, 20, 39, 40, 59)]
    np.testing.assert_allclose(values, [0.001, 0.5005, 1, 1, 0.1, 0.1, 0.01, 0.01], rtol=1e-5)
    cos = make_schedule(
        _optim(lr=2.0, schedule="cosine", warmup_epochs=0.0, final_lr_factor=0.0),
        total_updates=100,
        updates_per_epoch=10,
    )
    np.testing.assert_allclose([float(cos(0)), float(cos(50)), float(cos(100))], [2.0, 1.0, 0.0], atol=1e-6)


def test_gradient_accumulation_equals_mean_gradient_step():
    params = {"w": {"kernel": jnp.arange(6.0).reshape(2, 3)}, "b": {"bias": jnp.ones(3)}}
    g1 = jax.tree.map(lambda p: jnp.full_like(p, 0.3), params)
    g2 = jax.tree.map(lambda p: jnp.full_like(p, -0.1), params)
    plain, _ = make_optimizer(_optim(lr=0.1, weight_decay=0.01), params, total_updates=10, updates_per_epoch=5)
    accum, _ = make_optimizer(
        _optim(lr=0.1, weight_decay=0.01, grad_accum_steps=2), params, total_updates=10, updates_per_epoch=5
    )
    u, _ = plain.update(jax.tree.map(lambda a, b: (a + b) / 2, g1, g2), plain.init(params), params)
    want = optax.apply_updates(params, u)
    s = accum.init(params)
    u1, s = accum.update(g1, s, params)
    mid = optax.apply_updates(params, u1)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(mid), jax.tree.leaves(params)))
    u2, s = accum.update(g2, s, mid)
    got = optax.apply_updates(mid, u2)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-6)


_SHARDED = r"""
import jax, jax.numpy as jnp, numpy as np
from flax import nnx
from aggpose_jax import sharding as shd
from aggpose_jax.train.optimizer import make_optimizer
from aggpose_jax.train.step import new_state, make_train_step
from aggpose_jax.config import base_config
assert jax.device_count() == 8


class StandIn(nnx.Module):
    # AggPose's interface (NHWC images -> 1/4-resolution heatmaps, dropout key) at a fraction of the
    # compile time: patch-embedding conv, LayerNorm, dropout, MLP head.
    def __init__(self, rngs):
        self.embed = nnx.Conv(3, 16, (4, 4), strides=(4, 4), rngs=rngs)
        self.norm = nnx.LayerNorm(16, rngs=rngs)
        self.head = nnx.Linear(16, 17, rngs=rngs)

    def __call__(self, x, deterministic=True, rngs=None):
        h = self.norm(self.embed(x))
        if not deterministic:
            h = jnp.where(jax.random.bernoulli(rngs, 0.8, h.shape), h / 0.8, 0.0)
        return self.head(jax.nn.gelu(h))


graphdef, params, other = nnx.split(StandIn(nnx.Rngs(0)), nnx.Param, ...)
params = jax.device_get(nnx.to_pure_dict(params))
opt = base_config().optim
opt.lr = 1e-2
opt.grad_clip_norm = 1.0
tx, _ = make_optimizer(opt, params, total_updates=10, updates_per_epoch=5)
rng = np.random.default_rng(0)
batches = [dict(image=rng.normal(size=(16, 32, 32, 3)).astype(np.float32),
                target=rng.uniform(size=(16, 8, 8, 17)).astype(np.float32),
                target_weight=rng.integers(0, 2, size=(16, 17)).astype(np.float32)) for _ in range(3)]
results = {}
for name, devices, fsdp in (('single', jax.devices()[:1], False), ('dp8', jax.devices(), False),
                            ('fsdp8', jax.devices(), True)):
    mesh = shd.make_mesh(devices)
    state = new_state(tx, 0, params)
    sh = shd.state_shardings(jax.eval_shape(lambda: state), mesh, fsdp=fsdp, min_size=64)
    state = jax.device_put(state, sh)
    gather = shd.replicated(mesh) if fsdp else None  # as train.loop.make_sharded_step builds it
    step = jax.jit(make_train_step(graphdef, other, tx, compute_params_sharding=gather),
                   in_shardings=(sh, shd.batch_sharding(mesh)),
                   out_shardings=(sh, shd.replicated(mesh)), donate_argnums=0)
    for b in batches:
        gb = shd.global_batch(b, mesh)
        assert len(gb['image'].sharding.device_set) == len(devices)
        state, metrics = step(state, gb)
    sharded = [a for a in jax.tree.leaves(state) if not a.is_fully_replicated]
    assert bool(sharded) == fsdp, (name, len(sharded))  # FSDP splits params and Adam moments
    results[name] = (jax.device_get(state['params']), float(metrics['loss']))
ref, ref_loss = results['single']
moved = max(float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(params)))
assert moved > 1e-3, moved
for name in ('dp8', 'fsdp8'):
    got, loss = results[name]
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref)))
    assert diff < 1e-5, (name, diff)
print('OK')
"""


def test_sharded_step_on_8_devices_matches_single_device():
    assert run_python(_SHARDED, devices=8).strip().endswith("OK")


_RESUME = r"""
import os, signal, sys
import jax, numpy as np
from aggpose_jax.train.loop import Trainer
from train_helpers import fingerprint, tiny_config
root, tmp = sys.argv[1], sys.argv[2]
config = tiny_config(root)
seen_full = []
full = Trainer(config, os.path.join(tmp, 'full'), batch_callback=lambda s, b: seen_full.append(fingerprint(b)))
result = full.fit(evaluate=False)
full.close()
assert result.step == 6 and not result.preempted
seen = []

def preempt_at_2(step, batch):
    seen.append((step, fingerprint(batch)))
    if step == 2:  # the signal arrives during the third step; the trainer saves after it and stops
        os.kill(os.getpid(), signal.SIGTERM)

first = Trainer(config, os.path.join(tmp, 'cut'), batch_callback=preempt_at_2)
r1 = first.fit(evaluate=False)
first.close()
assert r1.preempted and r1.step == 3, r1
second = Trainer(config, os.path.join(tmp, 'cut'), batch_callback=lambda s, b: seen.append((s, fingerprint(b))))
r2 = second.fit(evaluate=False)
second.close()
assert r2.step == 6 and not r2.preempted, r2
assert [s for s, _ in seen] == list(range(6)), seen  # no step repeated or skipped
assert [f for _, f in seen] == seen_full  # the same batches in the same order
assert len(set(seen_full)) == 6
for a, b in zip(jax.tree.leaves(jax.device_get(full.state)), jax.tree.leaves(jax.device_get(second.state))):
    np.testing.assert_array_equal(a, b)
# The uninterrupted run saved step 3 asynchronously and went on training with donated buffers:
# that checkpoint must hold exactly the state the interrupted run had at step 3.
from aggpose_jax.train.checkpoints import TrainCheckpointer
ckpt = TrainCheckpointer(os.path.join(tmp, 'full', 'checkpoints'), keep=10)
saved = ckpt.restore(3, full.abstract_state, iter(full.loader)).state
ckpt.close()
for a, b in zip(jax.tree.leaves(jax.device_get(saved)), jax.tree.leaves(jax.device_get(first.state))):
    np.testing.assert_array_equal(a, b)
print('OK')
"""


_NAN = r"""
from aggpose_jax.train.loop import NonFiniteLossError

def poison(step, batch):
    if step == 2:
        return {**batch, 'target': np.full_like(batch['target'], np.nan)}

trainer = Trainer(tiny_config(root, checkpoint_every_steps=1), os.path.join(tmp, 'wd'), batch_callback=poison)
try:
    trainer.fit(evaluate=False)
    raise AssertionError('no error')
except NonFiniteLossError as err:
    print('MESSAGE', err)
assert trainer.checkpointer.all_steps() == [1, 2], trainer.checkpointer.all_steps()
restored = trainer.checkpointer.restore_latest(trainer.abstract_state, iter(trainer.loader))
step, state = restored.step, restored.state
assert step == 2 and all(np.isfinite(np.asarray(a)).all() for a in jax.tree.leaves(state['params']))
trainer.close()
print('OK')
"""


def test_resume_is_bitwise_identical_and_nan_loss_stops(tmp_path, synthetic_coco_root):
    # One child for both (they share the compiled tiny training step; compiling dominates their cost).
    code = f'import sys; sys.argv = ["x", {synthetic_coco_root!r}, {str(tmp_path)!r}]\n' + _RESUME + _NAN
    out = run_python(code, lock=True)
    assert [line for line in out.splitlines() if line == "OK"] == ["OK", "OK"]
    message = out.split("MESSAGE", 1)[1]
    assert "non-finite loss at step 3" in message and "last good checkpoint: step 2" in message


def test_init_checkpoint_with_another_joint_count_keeps_only_the_head_fresh():
    import dataclasses
    import os

    from aggpose_jax.convert import load_torch_checkpoint
    from aggpose_jax.params import check_architecture, load_matching

    fixture = os.path.join(os.path.dirname(__file__), "fixtures", "upstream_tiny17.pth")
    stored, loaded = load_torch_checkpoint(fixture)
    infant = dataclasses.replace(stored, num_joints=21)  # COCO -> infant fine-tuning
    check_architecture(stored, infant, "init", allow_joints=True)
    with pytest.raises(ValueError, match="num_joints: checkpoint 17, config 21"):
        check_architecture(stored, infant, "init")
    with pytest.raises(ValueError, match=r"init: .*dims: checkpoint \(16, 32, 40, 64\)"):
        check_architecture(stored, dataclasses.replace(infant, dims=(32, 64, 80, 128)), "init", allow_joints=True)
    _, abstract, _ = split_model(infant)
    params = jax.tree.map(lambda s: np.full(s.shape, 7.0, np.float32), abstract)
    fresh = load_matching(params, loaded)
    assert sorted(fresh) == ["final_layer/fc2/bias", "final_layer/fc2/kernel"]
    got, want = dict(named_leaves(params)), dict(named_leaves(loaded))
    for name, value in got.items():
        if name in fresh:
            assert value.shape[-1] == 21 and np.all(value == 7.0)
        else:
            np.testing.assert_array_equal(value, want[name])


def test_pretrained_params_applies_mit_backbone_then_init_checkpoint(tmp_path, monkeypatch):
    import os

    from torch_writer import write_torch_checkpoint

    from aggpose_jax import model_source
    from aggpose_jax.convert import load_torch_checkpoint, read_state_dict
    from aggpose_jax.convert.mapping import flax_to_torch
    from aggpose_jax.convert.mit import is_backbone_name

    fixture = os.path.join(os.path.dirname(__file__), "fixtures", "upstream_tiny17.pth")
    stored, fixture_params = load_torch_checkpoint(fixture)
    # random init replaced by a constant (the initialisers are the model's business, and slow to compile)
    monkeypatch.setattr(
        model_source,
        "init_params",
        lambda cfg, seed: jax.tree.map(lambda s: np.full(s.shape, 3.0, np.float32), split_model(cfg)[1]),
    )
    mit = {k: v + 1.0 for k, v in read_state_dict(fixture).items() if is_backbone_name(k)}
    write_torch_checkpoint(tmp_path / "mit.pth", mit)
    mit_checkpoint = str(tmp_path / "mit.pth")

    torch_named = flax_to_torch(model_source.pretrained_params(stored, 0, mit_checkpoint=mit_checkpoint), stored)
    assert sum(is_backbone_name(k) for k in torch_named) == len(mit) > 0
    for name, value in torch_named.items():
        if is_backbone_name(name):
            np.testing.assert_array_equal(value, mit[name])
        else:
            assert np.all(value == 3.0), name

    # applied after the MiT weights: every tensor comes from it
    params = model_source.pretrained_params(stored, 0, mit_checkpoint=mit_checkpoint, init_checkpoint=fixture)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(fixture_params)):
        np.testing.assert_array_equal(a, b)
