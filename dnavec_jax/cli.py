"""`dnavec` command line: one subcommand per tool (export-hf, vectors, neighbors, embed, tfidf, attention, classify,
predict).

Each subcommand registers itself in build_parser() with a `handler(args) -> int | None`
and imports its module inside the handler, so `dnavec --help` stays fast and one
tool's dependencies never load for another. The classify and tfidf flags are generated
(fields.add_arguments) from the settings dataclasses, whose field metadata holds each
default and help text once. User mistakes raise DNAVecError and
print as `error: ...` with exit status 2 (errors.run_cli).

Usage: dnavec export-hf --workdir DIR --output_dir OUT [--step N] [--overwrite]
   or: python -m dnavec_jax.cli export-hf ...
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from dnavec_jax.data.settings import PrepSettings
from dnavec_jax.errors import run_cli
from dnavec_jax.fields import add_arguments
from dnavec_jax.tools.classify.settings import (
    PROBE_FLAGS,
    PROBE_PREFIX,
    ClassifySettings,
    FinetuneSettings,
    TokenProbeSettings,
)


def _export_hf(args: argparse.Namespace) -> int:
    from dnavec_jax import export

    output_dir, step = export.export_checkpoint(args.workdir, args.output_dir, step=args.step,
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


# ---- vectors / neighbors (dnavec_jax/tools/vectors.py) ----
def _add_vectors(subparsers) -> None:
    parser = subparsers.add_parser(
        "vectors", help="the V x hidden k-mer vector matrix (.npy, word2vec text)",
        description=(
            "One vector per vocabulary entry, rows in id order (special tokens included): the input word "
            "embeddings and/or the last-layer state of the token presented alone as [CLS] token [SEP]. Writes "
            "vocab.txt, input_embeddings.npy, contextual_vectors.npy, their word2vec text files (*.w2v.txt, "
            "for gensim KeyedVectors.load_word2vec_format) and vectors.json (docs/outputs.md)."
        ),
    )
    _add_model_argument(parser)
    parser.add_argument("--output_dir", required=True, help="directory to create (must be absent or empty)")
    parser.add_argument("--kind", choices=("both", "input", "contextual"), default="both",
                        help="which vectors to write (default both)")
    parser.add_argument("--batch_size", type=int, default=512, help="tokens per jitted batch (contextual)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --output_dir")
    parser.set_defaults(handler=lambda args: _call("vectors", "run_vectors", args))


def _add_neighbors(subparsers) -> None:
    parser = subparsers.add_parser(
        "neighbors", help="nearest k-mers of a k-mer by cosine similarity",
        description=(
            "Prints the --top k-mers most cosine-similar to --kmer (itself excluded, its self-similarity on "
            "the line above) among all k-mers of the vocabulary. --model may also be a `dnavec vectors` "
            "output directory, which skips recomputing the vectors."
        ),
    )
    _add_model_argument(parser)
    parser.add_argument("--kmer", required=True, help="A/C/G/T k-mer with k in the model's range")
    parser.add_argument("--top", type=int, default=10, help="how many neighbours to print")
    parser.add_argument("--kind", choices=("input", "contextual"), default="input",
                        help="input word embeddings (default) or contextual vectors of lone k-mers")
    parser.add_argument("--batch_size", type=int, default=512, help="tokens per jitted batch (contextual)")
    parser.set_defaults(handler=lambda args: _call("vectors", "run_neighbors", args))


# ---- embed (dnavec_jax/embed.py) ----
def _add_embed(subparsers) -> None:
    parser = subparsers.add_parser(
        "embed", help="contextual embeddings of the records of a FASTA file (.npz)",
        description=(
            "Per FASTA record: `cls` (mean [CLS] state over its windows) and `mean` (mean state over its k-mer "
            "tokens), with `ids` (record names); N splits a record into contigs, long contigs are cut into "
            "windows of the model's length and pooled. A record's vectors depend only on its own sequence "
            "and --k (with --k random: --seed and --num_tokenizations) (docs/outputs.md)."
        ),
    )
    _add_model_argument(parser)
    parser.add_argument("--fasta", required=True, help="FASTA(.gz) file; every record is embedded")
    parser.add_argument("--output", required=True, help="output .npz")
    parser.add_argument("--k", default="default",
                        help="tokenization: an integer k (every k-mer), 'random' (one random k per position, as "
                             "in training) or 'default': the middle k of the model's range, rounded down, which "
                             "embedded best in docs/outputs.md")
    parser.add_argument("--seed", type=int, default=0, help="tokenization seed (--k random)")
    parser.add_argument("--num_tokenizations", type=int, default=1,
                        help="average over this many seeded tokenizations per record (--k random)")
    parser.add_argument("--per_token", action="store_true",
                        help="also store every token's vector (flat arrays + per-record offsets)")
    parser.add_argument("--batch_size", type=int, default=64, help="windows per jitted batch")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    parser.set_defaults(handler=lambda args: _call("embed", "run_embed", args))


# ---- tfidf (dnavec_jax/tools/tfidf.py) ----
# Data prep's settings (defaults from PrepSettings), with help in tf-idf's terms.
TFIDF_PREP_FLAGS = ("chromosomes", "k_min", "k_max", "seq_length", "seed", "min_contig_length")
TFIDF_PREP_HELP = {
    "chromosomes": "records to use, as in data prep: '%(default)s' (default), 'all' or a comma list",
    "k_min": None,
    "k_max": None,
    "seq_length": "example length of data prep: a document holds up to seq_length-2 k-mer tokens",
    "seed": "tokenization seed (as data prep's) and word-cloud layout",
    "min_contig_length": "shorter A/C/G/T runs are skipped, as in data prep",
}


def _add_tfidf(subparsers) -> None:
    parser = subparsers.add_parser(
        "tfidf", help="k-mer tf-idf over a genome: top-N CSV and word cloud",
        description=(
            "Corpus tf-idf of k-mers (docs/outputs.md): a document is one data-prep example (up to "
            "seq_length-2 k-mer tokens), tf = count / tokens, idf = ln((1+n)/(1+df)) + 1, tf-idf L2-normalised "
            "per document, score = its mean over documents. Two streaming passes; writes tfidf_top.csv, "
            "tfidf_scores.npy, tfidf_wordcloud.png and tfidf_summary.json."
        ),
    )
    parser.add_argument("--fasta", required=True, action="append",
                        help="FASTA(.gz) file; repeat for several files")
    parser.add_argument("--output_dir", required=True)
    add_arguments(parser, PrepSettings, names=TFIDF_PREP_FLAGS, helps=TFIDF_PREP_HELP, show_default=False,
                  parse_defaults=True)
    parser.add_argument("--top", type=int, default=100, help="k-mers in the CSV and the word cloud")
    parser.add_argument("--overwrite", action="store_true", help="replace earlier outputs in --output_dir")
    parser.set_defaults(handler=lambda args: _call("tfidf", "run_tfidf", args))


# ---- attention (dnavec_jax/tools/attention.py) ----
def _add_attention(subparsers) -> None:
    parser = subparsers.add_parser(
        "attention", help="attention shares per layer and head: CSV, heat maps, HTML",
        description=(
            "Share of attention per layer and head going to [CLS], [SEP], k_min-mers, longer k-mers, the top "
            "tf-idf k-mers, the token itself and the k-mers overlapping it, against uniform attention "
            "(docs/outputs.md). Windows are drawn from the FASTA as training examples. Writes "
            "attention_shares.csv, one attention_<category>.png heat map per category, attention_summary.json, "
            "and with --html_record bertviz head/model views."
        ),
    )
    _add_model_argument(parser)
    parser.add_argument("--fasta", required=True, action="append", help="FASTA(.gz) file; repeat for several files")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--chromosomes", default="all", help="records to draw windows from: 'all' (default), "
                        "'chr1-22' or a comma list")
    parser.add_argument("--num_sequences", type=int, default=256, help="windows drawn at random (seeded)")
    parser.add_argument("--seed", type=int, default=0, help="window choice and tokenization seed")
    parser.add_argument("--batch_size", type=int, default=8, help="windows per forward pass")
    parser.add_argument("--top_tfidf", type=int, default=100, help="N of the top-N tf-idf k-mer category")
    parser.add_argument("--tfidf_csv", default=None,
                        help="tfidf_top.csv of `dnavec tfidf` (default: compute tf-idf on --fasta)")
    parser.add_argument("--html_record", default=None,
                        help="FASTA record whose first window is rendered as bertviz HTML (needs torch, bertviz)")
    parser.add_argument("--html_tokens", type=int, default=64, help="k-mers of that window shown in the HTML")
    parser.add_argument("--overwrite", action="store_true", help="replace earlier outputs in --output_dir")
    parser.set_defaults(handler=lambda args: _call("attention", "run_attention", args))


# ---- classify (dnavec_jax/tools/classify/) ----
def _add_classify(subparsers) -> None:
    parser = subparsers.add_parser(
        "classify", help="sequence classification: k-mer baseline, probe, fine-tuning",
        description=(
            "Trains and compares, on the same train/dev/test tables: a bag-of-k-mers logistic regression "
            "(no pretraining), probes on frozen DNAVec features (logistic regression on the mean static k-mer "
            "vector and the [CLS] and mean contextual embeddings; a per-token linear score pooled by log-sum-exp "
            "on the static and contextual token vectors) and fine-tuning of the encoder with a classification head. "
            "C and the fine-tuning epoch are chosen on dev MCC. Prints a table (accuracy, macro F1, MCC, AUROC, "
            "one-vs-rest for more than two classes; dev and test) and writes OUTPUT_DIR/results.json, "
            "OUTPUT_DIR/predictions/{dev,test}.csv (each input row with `prediction` and `prob_<class>` columns) "
            "and OUTPUT_DIR/classifier/, the fine-tuned model as a transformers BertForSequenceClassification "
            "that `dnavec predict` uses (docs/classify.md)."
        ),
    )
    _add_model_argument(parser)
    for split in ("train", "dev", "test"):
        parser.add_argument(f"--{split}", required=True,
                            help=f"{split} CSV/TSV with a header naming a 'sequence' and a 'label' column")
    parser.add_argument("--output_dir", required=True,
                        help="directory for results.json, predictions/ and classifier/ (created if missing)")
    # Generated from the settings dataclasses (defaults and help there), in this --help order.
    add_arguments(parser, ClassifySettings, skip=("random_init_control",), show_default=False, parse_defaults=True)
    add_arguments(parser, TokenProbeSettings, names=PROBE_FLAGS, prefix=PROBE_PREFIX, show_default=False,
                  parse_defaults=True)
    add_arguments(parser, FinetuneSettings, show_default=False, parse_defaults=True)
    add_arguments(parser, ClassifySettings, names=("random_init_control",), show_default=False, parse_defaults=True)
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing OUTPUT_DIR/results.json, predictions/ and classifier/")
    parser.set_defaults(handler=lambda args: _call("classify.command", "run_classify", args))


# ---- predict (dnavec_jax/tools/predict.py) ----
def _add_predict(subparsers) -> None:
    parser = subparsers.add_parser(
        "predict", help="class predictions of a `dnavec classify` classifier (CSV)",
        description=(
            "Classifies every sequence of --input with OUT/classifier of `dnavec classify`, by the rule its "
            "predictions/*.csv use: windows as in `embed`, the mean of the windows' logits, softmax. Writes "
            "--output: the input's columns (a FASTA gives `id`), then `prediction` and `prob_<class>` per class "
            "(docs/classify.md)."
        ),
    )
    parser.add_argument("--model", required=True, help="a classifier directory (OUT/classifier of dnavec classify)")
    parser.add_argument("--input", required=True,
                        help="CSV/TSV with a header naming a 'sequence' column (others kept), or FASTA(.gz)")
    parser.add_argument("--output", required=True, help="output CSV")
    parser.add_argument("--batch_size", type=int, default=64, help="windows per jitted batch")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    parser.set_defaults(handler=lambda args: _call("predict", "run_predict", args))


def _call(module_name: str, function: str, args: argparse.Namespace):
    """Imports the tool's module only when its subcommand runs."""
    import importlib

    return getattr(importlib.import_module(f"dnavec_jax.tools.{module_name}"), function)(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dnavec", description="DNAVec-JAX tools: export and analyse DNA k-mer BERT models."
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_export_hf, _add_vectors, _add_neighbors, _add_embed, _add_tfidf, _add_attention,
                _add_classify, _add_predict):
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point `dnavec`; returns the exit status."""
    args = build_parser().parse_args(argv)
    return run_cli(lambda: args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
