"""Genome FASTA -> pre-tokenized, pre-masked TFRecord shards (a TFDS dataset). Thin front end.

    python data_prep/prepare_data.py --data_dir data_cache/genome                  # embedded demo corpus
    python data_prep/prepare_data.py --fasta hg38.fa.gz --data_dir data_cache/genome --mask_strategy span

Every setting is a flag of the same name as the PrepSettings field
(dnavec_jax/data/settings.py); the work is done by the TFDS builder in
dnavec_jax/data/builder.py. See docs/data.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dnavec_jax.data.settings import MASK_STRATEGIES, SOFT_MASKED_MODES, PrepSettings  # noqa: E402
from dnavec_jax.errors import DNAVecError, run_cli  # noqa: E402

_HELP = {
    "chromosomes": "'chr1-22' (default), 'all', or comma-separated record names (chr1, 1 and 1:1-100 match)",
    "k_weights": "comma-separated relative probabilities of k = k_min..k_max (default: uniform)",
    "seq_length": "tokens per example including [CLS] and [SEP]",
    "max_predictions": "masked positions per example at most",
    "mask_span": "tokens per masked run with --mask_strategy span",
    "dupe_factor": "differently tokenized and masked copies of the training split",
    "soft_masked": "lower-case (soft-masked) bases: 'upper' keeps them, 'drop' treats them like N",
    "min_contig_length": "ACGT runs shorter than this are skipped (and counted)",
    "validation_fraction": "share of validation_block_size blocks held out for validation",
    "chunk_bases": "streaming and RNG unit in bases (rounded down to whole examples)",
    "shard_bases": "genome bases per training shard file",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fasta", action="append", default=[],
                        help="FASTA or FASTA.gz file (repeat for several); default: the embedded demo corpus")
    parser.add_argument("--data_dir", required=True, help="output directory (the dataset goes below it)")
    parser.add_argument("--num_workers", type=int, default=None, help="worker processes (default: all cores)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    defaults = PrepSettings()
    for field in dataclasses.fields(PrepSettings):
        if field.name == "fasta":
            continue
        default = getattr(defaults, field.name)
        kwargs = {"default": None, "help": f"{_HELP.get(field.name, '')} (default: {default})".strip()}
        if field.name == "k_weights":
            kwargs["type"] = lambda text: tuple(float(v) for v in text.split(","))
        elif field.name == "mask_strategy":
            kwargs["choices"] = MASK_STRATEGIES
        elif field.name == "soft_masked":
            kwargs["choices"] = SOFT_MASKED_MODES
        elif isinstance(default, (int, float, str)):
            kwargs["type"] = type(default)
        parser.add_argument(f"--{field.name}", **kwargs)
    return parser


def settings_from_args(args: argparse.Namespace) -> PrepSettings:
    values = {field.name: getattr(args, field.name) for field in dataclasses.fields(PrepSettings)
              if field.name != "fasta" and getattr(args, field.name) is not None}
    values["fasta"] = tuple(args.fasta)
    return PrepSettings.from_dict(values)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.num_workers is not None and args.num_workers < 1:
        raise DNAVecError(f"--num_workers must be at least 1, got {args.num_workers}")
    settings = settings_from_args(args)
    from dnavec_jax.data.builder import prepare_dataset

    path = prepare_dataset(settings, args.data_dir, num_workers=args.num_workers, progress=not args.quiet)
    if args.quiet:
        print(path)
    return 0


if __name__ == "__main__":  # worker processes are spawned: they must not run this again
    sys.exit(run_cli(main))
