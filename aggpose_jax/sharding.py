"""Device mesh and shardings for data-parallel (optionally FSDP) training.

One mesh axis, ``'data'``, spans every device of every process, grouped by process (process 0's
devices first, so process i's rows of a global batch are block i, on process i's devices). Batches are
sharded along it (each process supplies its own rows); the training state is replicated, or with
FSDP every large array is split along its largest dimension divisible by the device count, across
processes too. The FSDP rule
depends only on an array's shape, so parameters, their optimizer moments and gradient
accumulators get the same layout without tracking which leaf belongs to which parameter.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(devices: list[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh with axis 'data' over ``devices`` (default: all devices of all processes, grouped by process
    so that every process's rows of a global batch are one contiguous block)."""
    if devices is None:
        devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
    return Mesh(np.asarray(devices).reshape(-1), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over 'data'."""
    return NamedSharding(mesh, P(DATA_AXIS))


def fsdp_spec(shape: tuple[int, ...], num_shards: int, min_size: int) -> P:
    """Split the largest dimension divisible by ``num_shards`` when the array has >= ``min_size`` elements."""
    if num_shards <= 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
        return P()
    dims = sorted(range(len(shape)), key=lambda d: -shape[d])
    for d in dims:
        if shape[d] % num_shards == 0:
            spec: list[str | None] = [None] * len(shape)
            spec[d] = DATA_AXIS
            return P(*spec)
    return P()


def state_shardings(abstract_state: Any, mesh: Mesh, *, fsdp: bool = False, min_size: int = 2**18) -> Any:
    """A pytree of ``NamedSharding`` matching ``abstract_state`` (leaves with ``.shape``)."""
    n = mesh.devices.size

    def one(leaf: Any) -> NamedSharding:
        shape = tuple(getattr(leaf, "shape", ()))
        return NamedSharding(mesh, fsdp_spec(shape, n, min_size) if fsdp else P())

    return jax.tree.map(one, abstract_state)


def host_to_global(tree: Any, shardings: Any) -> Any:
    """Place host values that are the same on every process (e.g. seeded initial parameters) on global
    ``shardings``: each process fills only its own devices' shards (works across processes, where
    ``jax.device_put`` of a process-local value cannot)."""

    def one(x: Any, sharding: NamedSharding) -> jax.Array:
        host = np.asarray(jax.device_get(x))
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(one, tree, shardings)


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assemble the process-local rows of every process into global arrays sharded along 'data'.

    Every process passes the same number of rows; the global batch is that times the process count.
    """
    sharding = batch_sharding(mesh)
    nproc = jax.process_count()

    def one(x: np.ndarray) -> jax.Array:
        x = np.asarray(x)
        shape = (x.shape[0] * nproc,) + x.shape[1:]
        return jax.make_array_from_process_local_data(sharding, x, shape)

    return {k: one(v) for k, v in local_batch.items()}


__all__ = [
    "DATA_AXIS",
    "make_mesh",
    "replicated",
    "batch_sharding",
    "fsdp_spec",
    "state_shardings",
    "host_to_global",
    "global_batch",
]
