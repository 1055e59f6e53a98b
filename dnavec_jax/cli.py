"""`dnavec` command line: one subcommand per tool (export-hf; vectors, embed, tfidf, attention, classify to come).

Each subcommand registers itself in build_parser() with a `handler(args) -> int | None`
and imports its module inside the handler, so `dnavec --help` stays fast and one
tool's dependencies never load for another. User mistakes raise DNAVecError and
print as `error: ...` with exit status 2 (errors.run_cli).

Usage: dnavec export-hf --workdir DIR --output_dir OUT [--step N] [--overwrite]
   or: python -m dnavec_jax.cli export-hf ...
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from dnavec_jax.errors import run_cli


def _export_hf(args: argparse.Namespace) -> int:
    from dnavec_jax import hf_export

    output_dir, step = hf_export.export_checkpoint(args.workdir, args.output_dir, step=args.step,
                                                   overwrite=args.overwrite)
    print(f"exported step {step} of {args.workdir} to {output_dir} (transformers BertForMaskedLM + tokenizer)")
    return 0


def _add_export_hf(subparsers) -> None:
    parser = subparsers.add_parser(
        "export-hf",
        help="write a training checkpoint as a Hugging Face transformers BERT directory",
        description=(
            "Convert the checkpoint of a training run (latest step unless --step) into a transformers "
            "BertForMaskedLM directory: config.json, model.safetensors, vocab.txt, tokenizer files and a "
            "model card. Needs no GPU and no torch."
        ),
    )
    parser.add_argument("--workdir", required=True, help="training run directory (holds config.json and checkpoints)")
    parser.add_argument("--output_dir", required=True, help="export directory to create (must be absent or empty)")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step to export (default: the latest)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --output_dir")
    parser.set_defaults(handler=_export_hf)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dnavec", description="DNAVec-JAX tools: export and analyse DNA k-mer BERT models."
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_export_hf(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point `dnavec`; returns the exit status."""
    args = build_parser().parse_args(argv)
    return run_cli(lambda: args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
