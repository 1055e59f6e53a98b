"""The mesh and the sharding rule: the one place that decides where arrays live.

One mesh ("data", "fsdp") over all devices of all processes. Data parallel (default): mesh (n, 1),
parameters and optimizer state replicated. FSDP: mesh (1, n), every array of at least MIN_SHARD_SIZE
elements split along its largest dimension that n divides (replicated if none does). The rule reads
an array's shape only, so Adam's moments land where their parameter does. A batch's example axis is
always split over ("data", "fsdp") jointly.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA = "data"
FSDP = "fsdp"
BATCH_AXES = (DATA, FSDP)
# Smaller arrays (LayerNorm scales, most biases) stay replicated: splitting them
# saves no memory worth an extra all-gather.
MIN_SHARD_SIZE = 1024


def make_mesh(fsdp: bool, devices: list[jax.Device] | None = None) -> Mesh:
    """The ("data", "fsdp") mesh over `devices` (default: all devices of all processes)."""
    devices = list(jax.devices() if devices is None else devices)
    shape = (1, len(devices)) if fsdp else (len(devices), 1)
    # Auto axes: the shardings given to jax.jit are enforced at the step's
    # boundaries and XLA propagates them inside.
    return jax.make_mesh(shape, (DATA, FSDP), axis_types=(AxisType.Auto, AxisType.Auto), devices=devices)


def batch_size_divisor(mesh: Mesh) -> int:
    """Number of ways the batch axis is split (every device holds a slice)."""
    return mesh.shape[DATA] * mesh.shape[FSDP]


def param_spec(shape: tuple[int, ...], fsdp_size: int) -> P:
    """PartitionSpec of one parameter or optimizer-state array of this shape."""
    if fsdp_size <= 1 or int(np.prod(shape, dtype=np.int64)) < MIN_SHARD_SIZE:
        return P()
    candidates = [axis for axis, size in enumerate(shape) if size % fsdp_size == 0]
    if not candidates:
        return P()
    axis = max(candidates, key=lambda a: (shape[a], -a))  # largest dimension; the first on ties
    return P(*([None] * axis + [FSDP]))


def array_shardings(abstract_tree: Any, mesh: Mesh) -> Any:
    """NamedShardings for a tree of arrays / ShapeDtypeStructs (params, optimizer state, ...) by param_spec."""
    fsdp_size = mesh.shape[FSDP]
    return jax.tree.map(lambda leaf: NamedSharding(mesh, param_spec(tuple(leaf.shape), fsdp_size)), abstract_tree)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, leading_axes: int = 0) -> NamedSharding:
    """Sharding of a batch array whose example axis follows `leading_axes` unsplit axes.

    Train batches are (microbatches, examples, ...): leading_axes=1. Eval batches
    are (examples, ...): leading_axes=0.
    """
    return NamedSharding(mesh, P(*([None] * leading_axes), BATCH_AXES))


def with_shardings(abstract_tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs that carry the given shardings (restore targets, AOT lowering)."""
    return jax.tree.map(
        lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
        abstract_tree, shardings,
    )


def global_batch(local_batch: dict[str, np.ndarray], sharding: NamedSharding,
                 global_example_count: int, example_axis: int) -> dict[str, jax.Array]:
    """This process's rows -> one global jax.Array per feature (works on one or many processes).

    `local_batch` holds this process's contiguous slice of the example axis; the
    global shape has `global_example_count` rows on that axis.
    """
    def to_global(array):
        shape = list(array.shape)
        shape[example_axis] = global_example_count
        return jax.make_array_from_process_local_data(sharding, array, tuple(shape))

    return {name: to_global(array) for name, array in local_batch.items()}


def host_batch(array: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """A batch that every process holds whole -> one global jax.Array laid out by `sharding`.

    What inference uses: every process reads the same input, and each copies only the rows of its own
    devices (on one process, a device_put that splits the rows).
    """
    return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def to_host(tree: Any) -> Any:
    """Every row of a tree of (batch-split) arrays as numpy, in every process (an all-gather across
    processes; on one process a plain copy of each device's rows)."""
    if jax.process_count() == 1:
        return jax.tree.map(np.asarray, tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)


def describe(shardings: Any) -> str:
    """Short text of the distinct PartitionSpecs in a tree (for the log)."""
    specs = sorted({str(s.spec) for s in jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(x, NamedSharding))})
    return ", ".join(specs)
