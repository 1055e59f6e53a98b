"""Pretrains the DNAVec BERT: `python run_pretrain.py --config configs/base.py --workdir DIR`.

Override any setting on the command line, e.g. `--config.train.learning_rate=2e-4`.
Multi-host: start one process per host with the same command (Slurm / Open MPI /
TPU pods are detected), or set --config.distributed.coordinator_address=HOST:PORT,
num_processes and process_id. See docs/training.md.
"""

import os
import sys
from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_flags

from dnavec_jax.errors import DNAVecError, run_cli

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, config.json, metrics.jsonl and TensorBoard.")
config_flags.DEFINE_config_file("config", None, "Training configuration file (configs/base.py, configs/demo.py).",
                                lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])

CLUSTER_HINTS = ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES")


def maybe_initialize_distributed(settings) -> None:
    """jax.distributed.initialize() when configured or when a multi-process cluster is detected."""
    import jax

    mode = settings.initialize
    if mode not in ("auto", "always", "never"):
        raise DNAVecError(f"distributed.initialize must be auto, always or never, got {mode!r}")
    explicit = bool(settings.coordinator_address)
    detected = any("," in os.environ.get(name, "") or os.environ.get(name, "1") not in ("", "1")
                   for name in CLUSTER_HINTS if name in os.environ)
    if mode == "never" or (mode == "auto" and not (explicit or detected)):
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


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    # TensorFlow (the input pipeline), where installed, must not take GPU/TPU memory from JAX: hidden before
    # anything initialises either framework.
    from dnavec_jax.input_pipeline import configure_tf

    configure_tf(int(FLAGS.config.data.tf_threads))

    def run() -> None:
        import jax

        maybe_initialize_distributed(FLAGS.config.distributed)
        from dnavec_jax import train

        result = train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
        export_dir = FLAGS.config.export.hf_dir
        if export_dir and not result["preempted"] and jax.process_count() > 1:
            # Orbax's checkpoint reading synchronises all processes; the export is a one-process job.
            if jax.process_index() == 0:
                logging.info("multi-process run: export with `dnavec export-hf --workdir %s --output_dir OUT`",
                             FLAGS.workdir)
        elif export_dir and not result["preempted"]:
            from dnavec_jax import hf_export

            target = Path(FLAGS.workdir) / export_dir  # an absolute hf_dir stays as it is
            output_dir, step = hf_export.export_checkpoint(FLAGS.workdir, target, overwrite=True)
            logging.info("exported step %d as a Hugging Face model to %s", step, output_dir)

    status = run_cli(run)
    if status:
        sys.exit(status)


if __name__ == "__main__":
    app.run(main)
