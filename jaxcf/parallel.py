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
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxcf.errors import InputError

BATCH_AXES = ("data", "fsdp")


def initialize_distributed() -> bool:
    """jax.distributed.initialize() when launched as several processes (a coordinator
    address in the environment, a SLURM / Open MPI multi-task job, or JAXCF_DISTRIBUTED=1,
    e.g. on every host of a Cloud TPU pod, where JAX finds its peers itself); True if it
    ran."""
    multi = (
        os.environ.get("JAXCF_DISTRIBUTED") == "1"
        or os.environ.get("JAX_COORDINATOR_ADDRESS")
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


def put_replicas(tree: Any, shardings: Any) -> Any:
    """jax.device_put(tree, shardings) for a tree of which every process holds a full, equal
    copy (initial or restored weights, a PRNG key). With several processes each one fills
    its own devices' parts from its copy (jax.make_array_from_callback), and one collective
    compares a checksum per array across processes. jax.device_put would instead refuse an
    array committed to a local device (e.g. restored weights) as the source of an array that
    spans other processes' devices, and check equality by gathering every array from every
    process. Arrays that already span processes are resharded by device_put."""
    if jax.process_count() == 1:
        return jax.device_put(tree, shardings)
    sums: list[float] = []

    def put(array: Any, sharding: NamedSharding) -> jax.Array:
        if isinstance(array, jax.Array) and not array.is_fully_addressable:
            return jax.device_put(array, sharding)
        if jax.dtypes.issubdtype(getattr(array, "dtype", None), jax.dtypes.prng_key):
            # A typed PRNG key: place its raw uint32 data (one more, unsharded, axis).
            data = put(jax.random.key_data(array), sharding)
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(array))
        host = np.asarray(array)
        sums.append(np.sum(host, dtype=np.float64))
        return jax.make_array_from_callback(host.shape, sharding, host.__getitem__)

    placed = jax.tree.map(put, tree, shardings)
    if sums:  # compared bit for bit (as uint32 pairs: NaN equals NaN, no 64-bit jax needed)
        multihost_utils.assert_equal(
            np.asarray(sums, np.float64).view(np.uint32),
            "put_replicas: the processes hold different values of the same arrays",
        )
    return placed


def any_process(flag: bool) -> bool:
    """True on every process when `flag` is true on any (a collective when there are
    several processes: every process must call it); the flag itself in one process."""
    if jax.process_count() == 1:
        return bool(flag)
    flags = multihost_utils.process_allgather(np.asarray(flag, np.int32))
    return bool(np.asarray(flags).any())


def to_host(tree: Any) -> Any:
    """The whole of each (possibly sharded) array as numpy, on every process: gathered
    from all processes (a collective: every process must call it) when there are several."""
    if jax.process_count() > 1:
        return jax.tree.map(
            lambda a: np.asarray(multihost_utils.process_allgather(a, tiled=True)), tree
        )
    return jax.tree.map(np.asarray, tree)


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Place this host's part of the batch on the mesh as global arrays sharded over the
    batch axes (jax.make_array_from_process_local_data). Per-host batch sizes must be
    divisible by the number of local devices."""
    sharding = batch_sharding(mesh)
    return {
        name: jax.make_array_from_process_local_data(sharding, np.asarray(value))
        for name, value in local_batch.items()
    }
