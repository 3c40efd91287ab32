"""Optimizer, learning-rate schedule, weight-decay mask and parameter freezing (optax).

Parameters are nested dicts keyed by module/attribute names (``block1/layers/attn/q/bias``). The
weight-decay mask and the freeze labels are decided by these path names, never by array rank:
in scanned block stacks a bias is 2-D and a LayerNorm scale is 2-D.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from aggpose_jax.config import DECAY_MASKS, SCHEDULES
from aggpose_jax.params import path_name


def decay_mask(params: Any, mode: str = "kernels") -> Any:
    """True where weight decay applies.

    'kernels': Linear/Conv kernels only (no decay on LayerNorm scales/biases and on biases);
    'all': every parameter (what the release's ``torch.optim.AdamW(model.parameters())`` does); 'none'.
    """
    if mode not in DECAY_MASKS:
        raise ValueError(f"config.optim.decay_mask: must be one of {DECAY_MASKS}, got {mode!r}")
    return jax.tree_util.tree_map_with_path(
        lambda p, _: mode == "all" or (mode == "kernels" and path_name(p).split("/")[-1] == "kernel"), params
    )


def freeze_labels(params: Any, patterns: Sequence[str]) -> Any:
    """'frozen' for parameters whose path ('a/b/c') matches any regex in ``patterns`` (re.search), else 'train'."""
    compiled = [re.compile(p) for p in patterns]
    return jax.tree_util.tree_map_with_path(
        lambda p, _: "frozen" if any(c.search(path_name(p)) for c in compiled) else "train", params
    )


def make_schedule(opt: Any, total_updates: int, updates_per_epoch: float) -> optax.Schedule:
    """Learning rate per optimizer update: linear warmup, then multi-step, cosine or constant.

    Multi-step multiplies by ``decay_factor`` from each epoch in ``decay_epochs`` on (the release
    steps its PyTorch MultiStepLR once per epoch, so the rate is constant within an epoch). The
    warmup (``warmup_epochs``, from ``lr * warmup_init_factor``) multiplies the first updates.
    """
    lr = float(opt.lr)
    warmup = int(round(float(opt.warmup_epochs) * updates_per_epoch))
    init = float(opt.warmup_init_factor)
    if opt.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            init_value=lr * init if warmup else lr,
            peak_value=lr,
            warmup_steps=warmup,
            decay_steps=max(int(total_updates), warmup + 1),
            end_value=lr * float(opt.final_lr_factor),
        )
    if opt.schedule not in SCHEDULES:
        raise ValueError(f"config.optim.schedule: must be one of {SCHEDULES}, got {opt.schedule!r}")
    boundaries = (
        sorted(int(round(float(e) * updates_per_epoch)) for e in opt.decay_epochs)
        if opt.schedule == "multistep"
        else []
    )
    factor = float(opt.decay_factor)

    def schedule(count: Any) -> jax.Array:
        count = jnp.asarray(count)
        value = jnp.asarray(lr, jnp.float32)
        for b in boundaries:
            value = jnp.where(count >= b, value * factor, value)
        if warmup:
            ramp = init + (1.0 - init) * jnp.minimum(count.astype(jnp.float32) / warmup, 1.0)
            value = value * ramp
        return value

    return schedule


def make_optimizer(
    opt: Any, params: Any, *, total_updates: int, updates_per_epoch: float, freeze: Sequence[str] = ()
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """(optimizer, schedule) from ``config.optim``.

    Chain: global-norm clipping (``grad_clip_norm`` > 0) -> AdamW with the decay mask; frozen
    parameters (``freeze`` regexes) get zero updates (and no decay); ``grad_accum_steps`` > 1 wraps
    everything in ``optax.MultiSteps`` (one update every k calls, mean gradient).
    """
    if opt.name != "adamw":
        raise ValueError(f"config.optim.name: only 'adamw' is supported, got {opt.name!r}")
    schedule = make_schedule(opt, total_updates, updates_per_epoch)
    parts = []
    if float(opt.grad_clip_norm) > 0:
        parts.append(optax.clip_by_global_norm(float(opt.grad_clip_norm)))
    parts.append(
        optax.adamw(
            schedule,
            b1=float(opt.b1),
            b2=float(opt.b2),
            eps=float(opt.eps),
            weight_decay=float(opt.weight_decay),
            mask=decay_mask(params, opt.decay_mask),
        )
    )
    tx = optax.chain(*parts)
    if freeze:
        tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, freeze_labels(params, freeze))
    k = int(opt.grad_accum_steps)
    if k > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=k)
    return tx, schedule


__all__ = ["DECAY_MASKS", "SCHEDULES", "decay_mask", "freeze_labels", "make_schedule", "make_optimizer"]
