"""Multi-host start-up: jax.distributed.initialize() when configured or when a multi-process cluster is found.

Call it before any JAX computation. docs/training.md ("Multi-host") shows the command lines.
"""

from __future__ import annotations

import os

import jax
from absl import logging

from dnavec_jax.errors import DNAVecError
from dnavec_jax.training.settings import DistributedSettings

CLUSTER_HINTS = ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES")


def maybe_initialize_distributed(settings: DistributedSettings) -> None:
    """Initialises jax.distributed per the run's distributed settings: "auto" does so when a coordinator
    address is set or a cluster of more than one process is detected (Slurm, Open MPI, a TPU pod)."""
    explicit = bool(settings.coordinator_address)
    detected = any("," in os.environ.get(name, "") or os.environ.get(name, "1") not in ("", "1")
                   for name in CLUSTER_HINTS if name in os.environ)
    if settings.initialize == "never" or (settings.initialize == "auto" and not (explicit or detected)):
        return
    kwargs = {}
    if explicit:
        kwargs["coordinator_address"] = settings.coordinator_address
    if settings.num_processes > 0:
        kwargs["num_processes"] = settings.num_processes
    if settings.process_id >= 0:
        kwargs["process_id"] = settings.process_id
    try:
        jax.distributed.initialize(**kwargs)
    except (ValueError, RuntimeError) as error:
        raise DNAVecError(f"jax.distributed.initialize failed: {error}") from None
    logging.info("process %d of %d, %d local of %d devices", jax.process_index(), jax.process_count(),
                 jax.local_device_count(), jax.device_count())
