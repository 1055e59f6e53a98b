"""`dnavec` command line: one subcommand per tool (export-hf, vectors, neighbors, embed, tfidf, attention, classify,
predict).

Each subcommand registers itself in build_parser() with a `handler(args) -> int | None`
and imports its module inside the handler, so `dnavec --help` stays fast and one
tool's dependencies never load for another. Every tool's flags are generated
(fields.add_arguments) from its settings dataclass (tools/settings.py,
tools/classify/settings.py), whose field metadata holds each default and help text
once; the handler builds that dataclass once (fields.from_args) and passes it to the
tool. User mistakes raise DNAVecError and print as `error: ...` with exit status 2
(errors.run_cli).

Usage: dnavec export-hf --workdir DIR --output_dir OUT [--step N] [--overwrite]
   or: python -m dnavec_jax.cli export-hf ...
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from dnavec_jax.errors import run_cli
from dnavec_jax.fields import add_arguments, from_args
from dnavec_jax.tools import malloc
from dnavec_jax.tools.classify.settings import (
    PROBE_FLAGS,
    PROBE_PREFIX,
    ClassifySettings,
    FinetuneSettings,
    TokenProbeSettings,
)
from dnavec_jax.tools.settings import (
    AttentionSettings,
    EmbedSettings,
    NeighborsSettings,
    PredictSettings,
    TfidfSettings,
    VectorsSettings,
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
    _add_settings(parser, VectorsSettings, "vectors", "run_vectors")


def _add_neighbors(subparsers) -> None:
    parser = subparsers.add_parser(
        "neighbors", help="nearest k-mers of a k-mer by cosine similarity",
        description=(
            "Prints the --top k-mers most cosine-similar to --kmer (itself excluded, its self-similarity on "
            "the line above) among all k-mers of the vocabulary. --model may also be a `dnavec vectors` "
            "output directory, which skips recomputing the vectors."
        ),
    )
    _add_settings(parser, NeighborsSettings, "vectors", "run_neighbors")


# ---- embed (dnavec_jax/tools/embed.py) ----
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
    _add_settings(parser, EmbedSettings, "embed", "run_embed")


# ---- tfidf (dnavec_jax/tools/tfidf.py) ----
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
    _add_settings(parser, TfidfSettings, "tfidf", "run_tfidf")


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
    _add_settings(parser, AttentionSettings, "attention", "run_attention")


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
    # Generated from the settings dataclasses (defaults and help there), in this --help order.
    add_arguments(parser, ClassifySettings, skip=("random_init_control", "overwrite"), show_default=False,
                  parse_defaults=True)
    add_arguments(parser, TokenProbeSettings, names=PROBE_FLAGS, prefix=PROBE_PREFIX, show_default=False,
                  parse_defaults=True)
    add_arguments(parser, FinetuneSettings, show_default=False, parse_defaults=True)
    add_arguments(parser, ClassifySettings, names=("random_init_control", "overwrite"), show_default=False,
                  parse_defaults=True)
    parser.set_defaults(handler=lambda args: _call("classify.command", "run_classify", classify_settings(args)))


def classify_settings(args: argparse.Namespace) -> ClassifySettings:
    """The one ClassifySettings of a `dnavec classify` command line, with its two fits' settings."""
    return from_args(ClassifySettings, args,
                     token_probe=from_args(TokenProbeSettings, args, prefix=PROBE_PREFIX),
                     finetune=from_args(FinetuneSettings, args, seed=args.seed))


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
    _add_settings(parser, PredictSettings, "predict", "run_predict")


def _add_settings(parser, settings_class, module_name: str, function: str) -> None:
    """The flags of `settings_class` (in its field order), and a handler that builds it once and calls
    dnavec_jax.tools.<module_name>.<function> with it."""
    add_arguments(parser, settings_class, show_default=False, parse_defaults=True)
    parser.set_defaults(handler=lambda args: _call(module_name, function, from_args(settings_class, args)))


def _call(module_name: str, function: str, settings):
    """Imports the tool's module only when its subcommand runs."""
    import importlib

    return getattr(importlib.import_module(f"dnavec_jax.tools.{module_name}"), function)(settings)


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
    malloc.limit_arenas()  # before any thread starts (tools/malloc.py)
    args = build_parser().parse_args(argv)
    return run_cli(lambda: args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
