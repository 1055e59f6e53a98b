"""Pretrains the DNAVec BERT: `python run_pretrain.py --config configs/base.py --workdir DIR` (docs/training.md).

Override any setting on the command line, e.g. `--config.train.learning_rate=2e-4`. A completed one-process
run is exported to WORKDIR/hf (config.export.hf_dir). Multi-host: the same command on every host.
"""

import sys

from absl import app, flags
from ml_collections import config_flags

from dnavec_jax.errors import run_cli
from dnavec_jax.export import export_after_training
from dnavec_jax.tf_runtime import configure_tf
from dnavec_jax.training.distributed import maybe_initialize_distributed
from dnavec_jax.training.loop import train_and_evaluate
from dnavec_jax.training.settings import RunSettings

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, config.json, metrics.jsonl and TensorBoard.")
config_flags.DEFINE_config_file("config", None, "Training configuration file (configs/base.py, configs/demo.py).",
                                lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")

    def run() -> None:
        settings = RunSettings.from_config(FLAGS.config)  # the one parse: everything below takes `settings`
        configure_tf(settings.data.tf_threads)  # before anything initialises TensorFlow or JAX
        maybe_initialize_distributed(settings.distributed)
        result = train_and_evaluate(settings, FLAGS.workdir)
        export_after_training(settings.export.hf_dir, FLAGS.workdir, result)

    sys.exit(run_cli(run))


if __name__ == "__main__":
    app.run(main)
