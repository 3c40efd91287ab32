"""Multi-process start-up: ``jax.distributed.initialize()`` when the environment asks for it."""

from __future__ import annotations

import os


def maybe_initialize_distributed() -> None:
    """Initialise the JAX distributed runtime when ``AGGPOSE_DISTRIBUTED`` or ``JAX_COORDINATOR_ADDRESS`` is set.

    On Cloud TPU VMs and under SLURM the coordinator and process ids are discovered by JAX itself.
    """
    want = os.environ.get("AGGPOSE_DISTRIBUTED", "").lower() in ("1", "true", "yes")
    if want or os.environ.get("JAX_COORDINATOR_ADDRESS"):
        import jax

        jax.distributed.initialize()
