"""`dnavec` command line: one subcommand per tool (export-hf, vectors, neighbors, embed, tfidf, attention, classify).

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


def _add_model_argument(parser) -> None:
    parser.add_argument("--model", required=True,
                        help="a training run directory (latest checkpoint) or an exported Hugging Face directory")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step of a run directory (default: latest)")


# ---- vectors / neighbors (dnavec_jax/vectors.py) ----
def _add_vectors(subparsers) -> None:
    parser = subparsers.add_parser("vectors", help="the V x hidden k-mer vector matrix (.npy, word2vec text)")
    _add_model_argument(parser)
    parser.add_argument("--output_dir", required=True)
    parser.set_defaults(handler=lambda args: _call("vectors", "run_vectors", args))


def _add_neighbors(subparsers) -> None:
    parser = subparsers.add_parser("neighbors", help="nearest k-mers of a k-mer by cosine similarity")
    _add_model_argument(parser)
    parser.add_argument("--kmer", required=True)
    parser.add_argument("--top", type=int, default=10)
    parser.set_defaults(handler=lambda args: _call("vectors", "run_neighbors", args))


# ---- embed (dnavec_jax/embedding.py) ----
def _add_embed(subparsers) -> None:
    parser = subparsers.add_parser("embed", help="contextual embeddings of the records of a FASTA file (.npz)")
    _add_model_argument(parser)
    parser.add_argument("--fasta", required=True)
    parser.add_argument("--output", required=True, help="output .npz")
    parser.set_defaults(handler=lambda args: _call("embedding", "run_embed", args))


# ---- tfidf (dnavec_jax/tfidf.py) ----
def _add_tfidf(subparsers) -> None:
    parser = subparsers.add_parser("tfidf", help="k-mer tf-idf over a genome: top-N CSV and word cloud")
    parser.add_argument("--fasta", required=True, action="append")
    parser.add_argument("--output_dir", required=True)
    parser.set_defaults(handler=lambda args: _call("tfidf", "run_tfidf", args))


# ---- attention (dnavec_jax/attention.py) ----
def _add_attention(subparsers) -> None:
    parser = subparsers.add_parser("attention", help="attention shares per layer and head: CSV, heat maps, HTML")
    _add_model_argument(parser)
    parser.add_argument("--fasta", required=True)
    parser.add_argument("--output_dir", required=True)
    parser.set_defaults(handler=lambda args: _call("attention", "run_attention", args))


# ---- classify (dnavec_jax/classify.py) ----
def _add_classify(subparsers) -> None:
    parser = subparsers.add_parser("classify", help="sequence classification: k-mer baseline, probe, fine-tuning")
    _add_model_argument(parser)
    for split in ("train", "dev", "test"):
        parser.add_argument(f"--{split}", required=True, help=f"{split} CSV/TSV with sequence and label columns")
    parser.add_argument("--output_dir", required=True)
    parser.set_defaults(handler=lambda args: _call("classify", "run_classify", args))


def _call(module_name: str, function: str, args: argparse.Namespace):
    """Imports the tool's module only when its subcommand runs."""
    import importlib

    return getattr(importlib.import_module(f"dnavec_jax.{module_name}"), function)(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dnavec", description="DNAVec-JAX tools: export and analyse DNA k-mer BERT models."
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_export_hf, _add_vectors, _add_neighbors, _add_embed, _add_tfidf, _add_attention,
                _add_classify):
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point `dnavec`; returns the exit status."""
    args = build_parser().parse_args(argv)
    return run_cli(lambda: args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
