"""Genome FASTA -> pre-tokenized, pre-masked TFRecord shards (a TFDS dataset). Thin front end.

    python data_prep/prepare_data.py --data_dir data_cache/genome                  # embedded demo corpus
    python data_prep/prepare_data.py --fasta hg38.fa.gz --data_dir data_cache/genome --mask_strategy span
    python data_prep/prepare_data.py --fasta_list genomes.txt --data_dir gs://bucket/data \
        --beam_pipeline_options=runner=DataflowRunner,project=P,region=R,temp_location=gs://bucket/tmp

Every setting is a flag of the same name as the PrepSettings field
(dnavec_jax/data/settings.py); the work is done by the TFDS builder in
dnavec_jax/data/builder.py. See docs/data.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dnavec_jax import data
from dnavec_jax.data.fasta import read_fasta_list
from dnavec_jax.data.settings import PrepSettings, parse_k_weights
from dnavec_jax.errors import DNAVecError, run_cli
from dnavec_jax.fields import add_arguments, values_from_args


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fasta", action="append", default=[],
                        help="FASTA or FASTA.gz file or URL (gs://, s3://), one genome each (repeat for several); "
                             "default: the embedded demo corpus")
    parser.add_argument("--fasta_list", default=None,
                        help="a file naming one FASTA path or URL per line ('#' comments; relative paths from the "
                             "list's directory), after any --fasta")
    parser.add_argument("--data_dir", required=True, help="output directory or URL (the dataset goes below it)")
    parser.add_argument("--num_workers", type=int, default=None,
                        help="worker processes, or the local Beam runner's (default: all cores)")
    parser.add_argument("--beam_pipeline_options", default=None,
                        help="run on Apache Beam with these pipeline options, comma-separated key=value as for "
                             "`tfds build`, e.g. runner=FnApiRunner,direct_num_workers=8 (docs/data.md)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    add_arguments(parser, PrepSettings, types={"k_weights": parse_k_weights})
    return parser


def settings_from_args(args: argparse.Namespace) -> PrepSettings:
    paths = tuple(args.fasta) + (tuple(read_fasta_list(args.fasta_list)) if args.fasta_list else ())
    return PrepSettings.from_dict({**values_from_args(PrepSettings, args, skip=("fasta",)), "fasta": paths})


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.num_workers is not None and args.num_workers < 1:
        raise DNAVecError(f"--num_workers must be at least 1, got {args.num_workers}")
    settings = settings_from_args(args)
    path = data.prepare_dataset(settings, args.data_dir, num_workers=args.num_workers, progress=not args.quiet,
                                beam_options=args.beam_pipeline_options)
    if args.quiet:
        print(path)
    return 0


if __name__ == "__main__":  # worker processes are spawned: they must not run this again
    sys.exit(run_cli(main))
