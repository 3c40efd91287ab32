"""The training step: joints-MSE loss, gradients, one optimizer update; a pure function of (state, batch).

``state = {'step', 'params', 'opt_state', 'rng'}`` (``rng``: raw key data). The NNX module is rebuilt
inside the step from a fixed graph definition (``params.merge``), so no Python object state is
touched per step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from aggpose_jax.params import merge


def joints_mse_loss(heatmaps: jax.Array, target: jax.Array, target_weight: jax.Array) -> jax.Array:
    """Mean over joints of 0.5 * MSE(pred * w, target * w) (HRNet's JointsMSELoss with target weights).

    heatmaps/target (B, h, w, J), target_weight (B, J). Computed in float32.
    """
    w = target_weight.astype(jnp.float32)[:, None, None, :]
    diff = (heatmaps.astype(jnp.float32) - target.astype(jnp.float32)) * w
    return 0.5 * jnp.mean(jnp.square(diff))


def new_state(tx: optax.GradientTransformation, seed: int, params: Any) -> dict:
    """Step 0: ``params``, fresh optimizer state, the drop-path key of ``seed``."""
    rng = jax.random.key_data(jax.random.key(seed + 1))
    return dict(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), rng=rng)


def make_train_step(
    graphdef: Any, other: Any, tx: optax.GradientTransformation, *, compute_params_sharding: Any = None
) -> Callable:
    """The un-jitted step ``(state, batch) -> (state, {'loss', 'grad_norm'})``.

    ``compute_params_sharding`` (FSDP): the parameters are resharded to it (replicated) once at the start of
    the step, so the forward and backward see whole parameters and the batch-sharded activations stay where
    they are; without it XLA may follow the parameters' sharding into the activations and gather those
    instead, bytes that grow with the batch. The optimizer state stays sharded; gradients are reduced to it.
    """

    def step_fn(state: dict, batch: dict) -> tuple[dict, dict]:
        key = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])

        def loss_of(params: Any) -> jax.Array:
            if compute_params_sharding is not None:
                params = jax.lax.with_sharding_constraint(params, compute_params_sharding)
            out = merge(graphdef, params, other)(batch["image"], deterministic=False, rngs=key)
            return joints_mse_loss(out, batch["target"], batch["target_weight"])

        loss, grads = jax.value_and_grad(loss_of)(state["params"])
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        new = dict(step=state["step"] + 1, params=params, opt_state=opt_state, rng=state["rng"])
        return new, {"loss": loss, "grad_norm": optax.global_norm(grads)}

    return step_fn
