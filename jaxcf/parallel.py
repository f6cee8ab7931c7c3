"""Device meshes, sharding rules and multi-host start-up.

The mesh has two axes: `data` (pure data parallelism) and `fsdp` (parameters, gradients and
optimizer state sharded, batches split over both). Batches put their leading axis over
("data", "fsdp"); parameters are replicated over `data` and, when fsdp > 1, each array is
split along its largest dimension that the fsdp size divides (others stay replicated).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxcf.errors import InputError

BATCH_AXES = ("data", "fsdp")


def initialize_distributed() -> bool:
    """jax.distributed.initialize() when launched as several processes (a coordinator
    address in the environment, or a SLURM / Open MPI multi-task job); True if it ran."""
    multi = (
        os.environ.get("JAX_COORDINATOR_ADDRESS")
        or int(os.environ.get("SLURM_NTASKS", "1")) > 1
        or int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1
    )
    if multi and not jax.distributed.is_initialized():
        jax.distributed.initialize()
        return True
    return False


def make_mesh(mesh_config: Any = None, devices=None) -> Mesh:
    """A ("data", "fsdp") mesh. mesh_config has `data` and `fsdp` sizes; -1 (default for
    data) takes all remaining devices; explicit sizes may use fewer devices than there are.
    Raises a ValueError naming the fields when the sizes do not fit the devices."""
    devices = list(devices if devices is not None else jax.devices())
    get = (lambda k, d: getattr(mesh_config, k, d)) if mesh_config is not None else (lambda k, d: d)
    data, fsdp = int(get("data", -1)), int(get("fsdp", 1))
    n = len(devices)
    if fsdp < 1 or (data != -1 and data < 1):
        raise InputError(f"mesh.data must be -1 or >= 1 and mesh.fsdp >= 1, got {data}, {fsdp}")
    if data == -1:
        if n % fsdp:
            raise InputError(f"mesh.fsdp={fsdp} does not divide the {n} devices")
        data = n // fsdp
    if data * fsdp > n:
        raise InputError(f"mesh.data * mesh.fsdp = {data * fsdp}, but there are {n} devices")
    # Explicit sizes smaller than the machine use its first data * fsdp devices.
    return Mesh(np.asarray(devices[: data * fsdp]).reshape(data, fsdp), ("data", "fsdp"))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis over every device; the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def _param_spec(shape: tuple[int, ...], fsdp: int) -> PartitionSpec:
    if fsdp == 1 or not shape:
        return PartitionSpec()
    order = sorted(range(len(shape)), key=lambda i: -shape[i])
    for axis in order:
        if shape[axis] % fsdp == 0:
            spec = [None] * len(shape)
            spec[axis] = "fsdp"
            return PartitionSpec(*spec)
    return PartitionSpec()


def state_shardings(tree: Any, mesh: Mesh) -> Any:
    """NamedShardings for a pytree of arrays (or ShapeDtypeStructs): FSDP rule above."""
    fsdp = mesh.shape["fsdp"]
    return jax.tree.map(lambda a: NamedSharding(mesh, _param_spec(tuple(a.shape), fsdp)), tree)


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Place this host's part of the batch on the mesh as global arrays sharded over the
    batch axes (jax.make_array_from_process_local_data). Per-host batch sizes must be
    divisible by the number of local devices."""
    sharding = batch_sharding(mesh)
    return {
        name: jax.make_array_from_process_local_data(sharding, np.asarray(value))
        for name, value in local_batch.items()
    }
