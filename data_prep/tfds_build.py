"""Runs TFDS's own `tfds build` command with the DnaKmerMlm builder registered.

    python data_prep/tfds_build.py dna_kmer_mlm/demo_span --data_dir DIR
    python data_prep/tfds_build.py dna_kmer_mlm/hg38_span --data_dir DIR --manual_dir DIR_WITH_hg38.fa.gz

Same as `tfds build --imports dnavec_jax.data.builder dna_kmer_mlm/demo_span --data_dir DIR`,
which needs apache-beam installed: the `tfds` console script of tensorflow-datasets
4.9.10 imports it at start-up (for its convert_format command), while the build
command itself (tensorflow_datasets.scripts.cli.build) does not.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    from dnavec_jax.tf_runtime import import_train_module

    simple_parsing = import_train_module("simple_parsing", "tfds build")
    build = import_train_module("tensorflow_datasets.scripts.cli.build", "tfds build")
    import_train_module("dnavec_jax.data.builder", "tfds build")  # registers dna_kmer_mlm with TFDS

    simple_parsing.parse(build.Args, args=sys.argv[1:] if argv is None else argv).execute()
    return 0


if __name__ == "__main__":  # worker processes are spawned: they must not run this again
    from dnavec_jax.errors import run_cli

    sys.exit(run_cli(main))
