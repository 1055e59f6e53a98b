"""Runs TFDS's own `tfds build` command with the DnaKmerMlm builder registered.

    python data_prep/tfds_build.py dna_kmer_mlm/demo_span --data_dir DIR
    python data_prep/tfds_build.py dna_kmer_mlm/hg38_span --data_dir DIR --manual_dir DIR_WITH_hg38.fa.gz
    python data_prep/tfds_build.py dna_kmer_mlm/demo_span --data_dir DIR \
        --beam_pipeline_options=runner=FnApiRunner,direct_num_workers=4

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
    from dnavec_jax.tf_runtime import import_extra_module, import_train_module

    argv = sys.argv[1:] if argv is None else argv
    simple_parsing = import_train_module("simple_parsing", "tfds build")
    build = import_train_module("tensorflow_datasets.scripts.cli.build", "tfds build")
    import_train_module("dnavec_jax.data.builder", "tfds build")  # registers dna_kmer_mlm with TFDS
    if any(arg.startswith("--beam_pipeline_options") for arg in argv):
        # tfds build drops the option without a word where apache_beam is missing (cli_utils.py).
        import_extra_module("apache_beam", "--beam_pipeline_options", "beam")

    simple_parsing.parse(build.Args, args=argv).execute()
    return 0


if __name__ == "__main__":  # worker processes are spawned: they must not run this again
    from dnavec_jax.errors import run_cli

    sys.exit(run_cli(main))
