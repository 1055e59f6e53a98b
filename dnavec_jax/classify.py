"""Sequence classification with a trained model (`dnavec classify`): k-mer baseline, linear probes, fine-tuning.

Input: three tables (train, dev, test), CSV or TSV, with a header row holding a `sequence` and a
`label` column (the DNABERT fine-tuning / GUE layout; other columns are ignored):
- the delimiter comes from the extension (.csv comma, .tsv/.tab tab), otherwise from the header
  line (a tab if it has one, else a comma);
- a sequence is DNA text (any case; N and IUPAC letters split it into contigs as in `embed`) or,
  as in DNABERT's own files, space-separated overlapping k-mers, which are joined back into DNA;
- labels are any strings; classes are the train split's labels, integer-like labels in numeric
  order, others in string order; class i is row/column i everywhere;
- sequences may have any length: the model sees them cut into windows exactly as `embed` does
  (inference.sequence_windows: nothing truncated, unless --max_length asks for the first N bases,
  which then applies to every method alike).
User mistakes (missing file, empty file, missing column, a single class, a dev/test label unseen
in train, a letter that is not DNA, a sequence without k-mers) are one-line DNAVecErrors naming
the file and line; nothing is written until every method has run (write_outputs).

Methods, all on the same splits:
  baseline   bag of k-mers: counts of every k-mer at every position for each k of --baseline_k
             (default: the model's k range), rows L2-normalised or tf-idf (--tfidf); no pretraining.
  probe      frozen DNAVec features, one row each:
               static  mean of the input word-embedding vectors (vectors.input_embeddings) of the
                       sequence's k-mer tokens (random k, as `embed --k random --seed`);
               cls     embed_sequences' `cls` (mean [CLS] state over the windows), random k;
               mean    embed_sequences' `mean` (mean state over all k-mer tokens), random k;
             standardised (StandardScaler fitted on train), then logistic regression; and two
             token-level probes that pool after the linear map instead of before it:
               static_tokens  the input word-embedding vector of every k-mer token;
               tokens         the last-layer state of every k-mer token (embed --per_token);
             standardised per dimension on the train tokens, one linear score per class and
             token, pooled over ALL tokens of the sequence by log-sum-exp (a smooth max): the
             sequence scores high for a class when any of its tokens does. Mean pooling dilutes a
             short motif among ~150 tokens; this does not (token_probe, TokenProbeSettings).
             All probe features are taken over --probe_tokenizations (default 4) seeded
             tokenizations: k is random per position, so one tokenization shows only some of a
             motif's k-mers; the token probes see the tokens of all of them. Token features are
             stored compactly (TokenFeatures: float16 vectors, ids for static_tokens).
  finetune   the pretrained encoder + BertForSequenceClassification's head (pooler, dropout, dense)
             on each window, the windows' logits averaged, trained end to end.
Baseline and pooled probes are scikit-learn LogisticRegression (lbfgs, L2); C is chosen on dev
from C_GRID. The token probes are fitted in JAX (AdamW, decoupled weight decay, minibatches, the
epoch chosen on dev). Model selection (C, the token-probe epoch and the fine-tuning epoch)
maximises dev MCC, ties to the first (smaller C, earlier epoch); dev figures are therefore
optimistic, test figures are not.

Fine-tuning (see FinetuneSettings):
- windows: a sequence is cut into windows as in `embed`, ALL of its windows are encoded in one
  example; each window gets transformers' BertForSequenceClassification logits (pooler
  tanh(dense([CLS])), dropout, dense) and the sequence's logits are their mean (predict.py's rule,
  so the export predicts what was trained). Nothing is dropped, a motif in the last window
  counts. Every batch has shape (batch, W, L): W = the most windows of any sequence, L = the
  padded length of the longest window; shorter sequences get empty [CLS] [SEP] windows that the
  mean ignores. Cost grows with W: cap it with --max_length.
- tokenization: evaluation uses `embed --k random`'s first tokenization (record_seed(seed, 0, sequence));
  training draws a fresh one each epoch (record_seed(seed, epoch, ...)) as augmentation, since a
  k-mer model sees the same bases under many tokenizations.
- the pretraining machinery: sharding.make_mesh (data parallel), steps.TrainState and
  steps.train_state_shardings, the batch split over all devices with sharding.batch_sharding and
  sharding.global_batch, jax.jit with those in/out shardings and the state donated, optax AdamW
  from optim.make_optimizer (linear warmup over warmup_fraction of the steps, linear decay to 0,
  global-norm clipping, no decay on biases and LayerNorm), dropout from fold_in(rng, step).
- loss: mean cross-entropy over the real examples of a batch (the last batch of an epoch is
  padded with weight-0 rows); one dev evaluation per epoch, early stopping after --patience
  epochs without a better dev MCC (epochs that end inside the warmup do not count: a small model
  often predicts one class until the learning rate has risen), the best epoch's parameters are
  kept; its dev and test figures come from predict.Predictor, as predictions/*.csv.

Control (--random_init_control): the probe and fine-tune rows again, on the same architecture
with the weights pretraining starts from (model.init_params, key --seed), rows marked "random
init". Whatever the pretrained rows gain over these is what pretraining contributed.
--seeds N runs the probe and fine-tune rows with seeds --seed .. --seed+N-1 (combine_seeds: mean
and sample sd).

Metrics (per split): accuracy, macro F1, MCC (scikit-learn), and AUROC: of the class-1
probability for binary tasks, one-vs-rest macro average for more (None when a split lacks a class).

Outputs: OUTPUT_DIR/results.json (task, model, settings, per method dev/test metrics and what was
selected), OUTPUT_DIR/predictions/{dev,test}.csv, OUTPUT_DIR/classifier/ (predict.py) and a
table printed as Markdown. Same inputs and --seed give the same numbers on the
same machine and device count (lbfgs is deterministic; fine-tuning's order, dropout, head and
tokenizations are seeded; another device count changes the reduction order, hence the rounding).

A planted-motif task for demos and tests: planted_motif_task / write_task
(scripts/make_motif_task.py writes train/dev/test CSVs).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import math
import os
import re
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn

from dnavec_jax.atomic_files import write_atomic
from dnavec_jax.errors import DNAVecError
from dnavec_jax.model import BertConfig, BertForMaskedLM
from dnavec_jax.tokenization import BASE_CODES, CLS_ID, NUM_SPECIAL, SEP_ID, KmerTokenizer, acgt_runs

SPLITS = ("train", "dev", "test")
METHODS = ("baseline", "probe", "finetune")
PROBE_FEATURES = ("static", "cls", "mean", "static_tokens", "tokens")
TOKEN_FEATURES = ("static_tokens", "tokens")  # probed per token (token_probe), the others pooled first (run_probe)
C_GRID = tuple(10.0**exponent for exponent in range(-3, 5))  # 1e-3 .. 1e4
SELECT_METRIC = "mcc"
METRICS = ("accuracy", "macro_f1", "mcc", "auroc")
RESULTS_FILE = "results.json"
CTCF_CORE = "CCGCGNGGNGGCAG"  # CTCF core consensus (N: any base)


# ---- reading the tables -----------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Split:
    name: str  # train | dev | test (| input: `dnavec predict`)
    path: str
    sequences: list[str]  # DNA, as read (case kept)
    labels: list[str]  # empty when read without a label column
    lines: list[int]  # line number of each row in the file (for messages)
    header: list[str] = dataclasses.field(default_factory=list)  # the file's columns, as written
    rows: list[list[str]] = dataclasses.field(default_factory=list)  # every data row's fields, as written

    def row_names(self) -> list[str]:
        return [f"{self.path}: line {line}" for line in self.lines]


@dataclasses.dataclass(frozen=True)
class Task:
    classes: list[str]  # class id -> label text
    splits: dict[str, Split]
    max_length: int = 0  # 0: whole sequences; else the first max_length bases of each

    def labels(self, split: str) -> np.ndarray:
        index = {label: i for i, label in enumerate(self.classes)}
        return np.array([index[label] for label in self.splits[split].labels], dtype=np.int64)

    def sequences(self, split: str) -> list[str]:
        sequences = self.splits[split].sequences
        return [s[:self.max_length] for s in sequences] if self.max_length else list(sequences)

    def summary(self) -> dict[str, Any]:
        return {
            "classes": self.classes, "num_classes": len(self.classes), "max_length": self.max_length,
            "splits": {name: {"path": split.path, "examples": len(split.sequences),
                              "per_class": np.bincount(self.labels(name), minlength=len(self.classes)).tolist(),
                              "bases_min": min(map(len, split.sequences)),
                              "bases_max": max(map(len, split.sequences))}
                       for name, split in self.splits.items()},
        }


def _delimiter(path: Path, text: str) -> str:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return ","
    if suffix in (".tsv", ".tab"):
        return "\t"
    header = text.splitlines()[0]
    return "\t" if "\t" in header else ","


def _kmers_to_dna(text: str, where: str) -> str:
    """DNABERT's layout: space-separated overlapping k-mers (ACGTA CGTAC ...) -> the DNA they cover."""
    kmers = text.split()
    if any(len(kmer) != len(kmers[0]) for kmer in kmers) or any(
            a[1:] != b[:-1] for a, b in zip(kmers, kmers[1:])):
        raise DNAVecError(f"{where}: the sequence holds spaces but is not a run of overlapping k-mers of one k "
                          "(DNABERT's layout); give plain DNA text")
    return kmers[0] + "".join(kmer[-1] for kmer in kmers[1:])


def read_split(path: str | os.PathLike, split: str) -> Split:
    """One table (see the module docstring); DNAVecError on anything unreadable."""
    return read_table(path, f"--{split}", split)


def read_table(path: str | os.PathLike, flag: str, split: str, require_label: bool = True) -> Split:
    """A CSV/TSV with a `sequence` column (and `label`, if required): read_split's rules, for any flag."""
    from dnavec_jax.inference import check_dna

    where = f"{flag} {path}"
    file = Path(path)
    if not file.exists():
        raise DNAVecError(f"{where}: no such file")
    if not file.is_file():
        raise DNAVecError(f"{where}: not a file")
    try:
        text = file.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise DNAVecError(f"{where}: not a text file (expected CSV/TSV in UTF-8)") from None
    except OSError as error:
        raise DNAVecError(f"{where}: cannot read ({error.strerror or error})") from None
    if not text.strip():
        raise DNAVecError(f"{where}: empty file (expected a header row with 'sequence' and 'label', then rows)")
    reader = csv.reader(io.StringIO(text), delimiter=_delimiter(file, text))
    written = next(reader)
    header = [column.strip().lower() for column in written]
    needed = ("sequence", "label") if require_label else ("sequence",)
    missing = [column for column in needed if column not in header]
    if missing:
        raise DNAVecError(f"{where}: line 1: no {' and no '.join(repr(m) for m in missing)} column (header: "
                          f"{', '.join(repr(h) for h in header)}); the first row must name a "
                          f"{' and a '.join(repr(n) for n in needed)} column")
    seq_col = header.index("sequence")
    label_col = header.index("label") if require_label else None
    sequences, labels, lines, rows = [], [], [], []
    for row in reader:
        line = reader.line_num
        if not any(field.strip() for field in row):
            continue  # blank line
        if len(row) != len(header):
            raise DNAVecError(f"{path}: line {line}: {len(row)} field(s), the header has {len(header)}")
        sequence = row[seq_col].strip()
        if not sequence:
            raise DNAVecError(f"{path}: line {line}: empty sequence")
        if label_col is not None:
            if not row[label_col].strip():
                raise DNAVecError(f"{path}: line {line}: empty label")
            labels.append(row[label_col].strip())
        if any(c.isspace() for c in sequence):
            sequence = _kmers_to_dna(sequence, f"{path}: line {line}")
        check_dna(sequence, f"{path}: line {line}")
        sequences.append(sequence)
        lines.append(line)
        rows.append(row)
    if not sequences:
        raise DNAVecError(f"{where}: no data rows (only a header)")
    return Split(split, str(path), sequences, labels, lines, written, rows)


def class_order(labels: Sequence[str]) -> list[str]:
    """Distinct labels: integer-like ones in numeric order, otherwise in string order."""
    unique = set(labels)
    if all(re.fullmatch(r"[+-]?\d+", label) for label in unique):
        return sorted(unique, key=int)
    return sorted(unique)


def load_task(train: str, dev: str, test: str, max_length: int = 0) -> Task:
    """Reads and checks the three tables; classes come from train."""
    if max_length < 0:
        raise DNAVecError(f"--max_length must be >= 0 (0: whole sequences), got {max_length}")
    splits = {name: read_split(path, name) for name, path in zip(SPLITS, (train, dev, test))}
    classes = class_order(splits["train"].labels)
    if len(classes) < 2:
        raise DNAVecError(f"--train {train}: every row has the label {classes[0]!r}; classification needs at "
                          "least two classes")
    known = set(classes)
    for name in ("dev", "test"):
        split = splits[name]
        unseen = [(line, label) for line, label in zip(split.lines, split.labels) if label not in known]
        if unseen:
            line, label = unseen[0]
            more = f"; {len(unseen) - 1} more such row(s)" if len(unseen) > 1 else ""
            raise DNAVecError(f"--{name} {split.path}: line {line}: label {label!r} does not occur in --train (its "
                              f"classes: {', '.join(map(repr, classes[:10]))}){more}")
    return Task(classes, splits, int(max_length))


# ---- metrics -----------------------------------------------------------------------

def classification_metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, float | None]:
    """accuracy, macro F1, MCC of argmax(probs); AUROC: of probs[:, 1] for two classes, one-vs-rest macro
    average for more; None when the split lacks a class (see the module docstring)."""
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef, roc_auc_score

    labels = np.asarray(labels)
    probs = np.asarray(probs, dtype=np.float64)
    predicted = probs.argmax(axis=1)
    auroc = None
    if len(np.unique(labels)) == probs.shape[1] == 2:
        auroc = float(roc_auc_score(labels, probs[:, 1]))
    elif len(np.unique(labels)) == probs.shape[1] > 2:
        normalised = probs / probs.sum(axis=1, keepdims=True)  # sklearn checks the sum to 1e-8
        auroc = float(roc_auc_score(labels, normalised, multi_class="ovr", average="macro"))
    return {"accuracy": float(accuracy_score(labels, predicted)),
            "macro_f1": float(f1_score(labels, predicted, average="macro", zero_division=0)),
            "mcc": float(matthews_corrcoef(labels, predicted)), "auroc": auroc}


def _better(score: float, best: float | None) -> bool:
    return best is None or score > best


# ---- baseline: bag of k-mers ---------------------------------------------------------

def parse_k_range(text: str) -> tuple[int, int]:
    """'6' -> (6, 6); '3-6' or '3..6' -> (3, 6)."""
    match = re.fullmatch(r"\s*(\d+)\s*(?:(?:-|\.\.)\s*(\d+)\s*)?", text or "")
    if not match:
        raise DNAVecError(f"--baseline_k {text!r}: expected K or K_MIN-K_MAX, e.g. 6 or 3-6")
    k_min = int(match.group(1))
    k_max = int(match.group(2) or k_min)
    try:
        KmerTokenizer(k_min, k_max)
    except ValueError as error:
        raise DNAVecError(f"--baseline_k {text!r}: {error}") from None
    return k_min, k_max


def kmer_counts(sequences: Sequence[str], k_min: int, k_max: int):
    """Sparse (n, vocab) counts of every k-mer at every position, each k in k_min..k_max (columns: KmerTokenizer ids).

    Deterministic (all k at every position, not the model's random tokenization); k-mers never
    span an N or IUPAC letter.
    """
    from scipy import sparse

    tokenizer = KmerTokenizer(k_min, k_max)
    indptr, indices, counts = [0], [], []
    for sequence in sequences:
        codes = BASE_CODES[np.frombuffer(sequence.encode("ascii"), dtype=np.uint8)]
        ids = []
        for start, end in acgt_runs(codes):
            contig = codes[start:end]
            for k in range(k_min, k_max + 1):
                num = len(contig) - k + 1
                if num > 0:
                    ks = np.full(tokenizer.num_tokens(len(contig)), k)
                    ids.append(tokenizer.encode_contig_codes(contig, ks)[:num])
        unique, count = np.unique(np.concatenate(ids) if ids else np.zeros(0, np.int64), return_counts=True)
        indices.append(unique)
        counts.append(count)
        indptr.append(indptr[-1] + len(unique))
    return sparse.csr_matrix((np.concatenate(counts).astype(np.float64), np.concatenate(indices),
                              np.asarray(indptr)), shape=(len(sequences), tokenizer.vocab_size))


# ---- logistic regression with C chosen on dev -----------------------------------------

def logistic_regression(features: dict[str, Any], labels: dict[str, np.ndarray], seed: int) -> dict[str, Any]:
    """Fits LogisticRegression on train for each C in C_GRID, keeps the best dev SELECT_METRIC.

    Returns {"dev": metrics, "test": metrics, "selected": {"C": ..., "dev_<metric>_by_C": ...},
    "probs": {"dev": (n, classes), "test": ...}} (probs: for predictions/*.csv, not for results.json).
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    best, by_c = None, {}
    for c in C_GRID:
        model = LogisticRegression(C=c, max_iter=2000, random_state=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(features["train"], labels["train"])
        dev = classification_metrics(labels["dev"], model.predict_proba(features["dev"]))
        by_c[f"{c:g}"] = round(dev[SELECT_METRIC], 6)
        if _better(dev[SELECT_METRIC], best and best[1][SELECT_METRIC]):
            best = (c, dev, model)
    c, dev, model = best
    probs = {split: model.predict_proba(features[split]) for split in ("dev", "test")}
    test = classification_metrics(labels["test"], probs["test"])
    converged = bool(np.all(np.asarray(model.n_iter_) < model.max_iter))
    return {"dev": dev, "test": test,
            "selected": {"C": c, f"dev_{SELECT_METRIC}_by_C": by_c, "converged": converged}, "probs": probs}


def run_baseline(task: Task, k_range: tuple[int, int], tfidf: bool, seed: int) -> dict[str, Any]:
    from sklearn.feature_extraction.text import TfidfTransformer
    from sklearn.preprocessing import normalize

    counts = {split: kmer_counts(task.sequences(split), *k_range) for split in SPLITS}
    if tfidf:
        transformer = TfidfTransformer().fit(counts["train"])  # smooth idf, L2 rows
        features = {split: transformer.transform(matrix) for split, matrix in counts.items()}
    else:
        features = {split: normalize(matrix) for split, matrix in counts.items()}
    result = logistic_regression(features, {split: task.labels(split) for split in SPLITS}, seed)
    result["selected"].update(k_min=k_range[0], k_max=k_range[1], tfidf=bool(tfidf))
    return result


# ---- probes on frozen features ----------------------------------------------------------

class TokenFeatures(NamedTuple):
    """Per-token features of a split, record after record (embed_sequences' per-token layout), stored compactly:
    `values` are the vectors in float16 (half of float32's bytes), or int32 ids into `table` (static_tokens:
    4 bytes a token instead of hidden x 4)."""
    values: np.ndarray  # (tokens, dim) vectors, or (tokens,) ids into table
    offsets: np.ndarray  # (n + 1,) int64: record i's tokens are rows offsets[i]:offsets[i + 1]
    table: np.ndarray | None = None  # (vocab, dim) float32 when values are ids

    @property
    def dim(self) -> int:
        return int((self.table if self.table is not None else self.values).shape[1])

    def rows(self, start: int, end: int) -> np.ndarray:
        """float32 (end - start, dim) vectors of tokens start..end."""
        values = self.values[start:end]
        return (self.table[values] if self.table is not None else values).astype(np.float32)

    def moments(self, chunk: int = 1 << 16) -> tuple[np.ndarray, np.ndarray]:
        """Mean and standard deviation over all tokens, accumulated in float64 chunk by chunk (no full copy)."""
        total, total_sq, count = np.zeros(self.dim), np.zeros(self.dim), int(self.offsets[-1])
        for start in range(0, count, chunk):
            part = self.rows(start, min(start + chunk, count)).astype(np.float64)
            total += part.sum(axis=0)
            total_sq += np.square(part).sum(axis=0)
        mean = total / max(count, 1)
        return mean, np.sqrt(np.maximum(total_sq / max(count, 1) - mean ** 2, 0.0))


# Bases embedded at a time (whole sequences, at least one): the float32 per-token output of one chunk, about
# FEATURE_CHUNK_BASES x tokenizations x hidden x 4 bytes twice over (embed's parts and their concatenation), is
# the only transient copy. Counted in bases, not sequences, so long sequences do not make it larger.
FEATURE_CHUNK_BASES = 50_000


def _chunks(sequences: Sequence[str], bases: int) -> list[slice]:
    """Consecutive runs of whole sequences holding about `bases` bases each (at least one sequence)."""
    chunks, start, held = [], 0, 0
    for index, sequence in enumerate(sequences):
        held += len(sequence)
        if held >= bases:
            chunks.append(slice(start, index + 1))
            start, held = index + 1, 0
    if start < len(sequences):
        chunks.append(slice(start, len(sequences)))
    return chunks


def probe_features(loaded, task: Task, seed: int, batch_size: int = 64,
                   features: Sequence[str] = PROBE_FEATURES, num_tokenizations: int = 1, progress: bool = False
                   ) -> dict[str, dict[str, np.ndarray | TokenFeatures]]:
    """{feature: {split: (n, hidden) float32, or TokenFeatures for TOKEN_FEATURES}} (see the module docstring).

    Each is taken over `num_tokenizations` seeded tokenizations (embed_sequences' pooling; the
    token features hold the tokens of every tokenization). Memory: `tokens` costs tokens x hidden x 2
    bytes (float16), `static_tokens` 4 bytes a token; sequences are embedded FEATURE_CHUNK_BASES at a
    time into arrays allocated once per split (docs/classify.md has the measured peak).
    """
    from tqdm import tqdm

    from dnavec_jax.embedding import embed_sequences, record_seed
    from dnavec_jax.inference import check_dna, tokenize_sequence
    from dnavec_jax.vectors import input_embeddings

    out: dict[str, dict[str, Any]] = {name: {} for name in features}
    per_token = any(name in TOKEN_FEATURES for name in features)
    table = input_embeddings(loaded) if "static" in features or "static_tokens" in features else None
    hidden = loaded.config.hidden_size
    for split in SPLITS:
        sequences, names = task.sequences(split), task.splits[split].row_names()
        if set(features) & {"cls", "mean", "tokens", "static_tokens"}:
            # A tokenization has at most one token per base: an upper bound, so nothing is copied to grow.
            # Pages past the tokens written are never touched, hence never resident.
            capacity = num_tokenizations * sum(map(len, sequences)) if per_token else 0
            vectors = np.empty((capacity, hidden), np.float16) if "tokens" in features else None
            ids = np.empty(capacity, np.int32)
            offsets = np.zeros(len(sequences) + 1, np.int64)
            pooled: dict[str, list[np.ndarray]] = {"cls": [], "mean": []}
            filled = 0
            with tqdm(total=len(sequences), desc=f"features {split}", unit="seq", disable=not progress) as bar:
                for chunk in _chunks(sequences, FEATURE_CHUNK_BASES):
                    start = chunk.start
                    embedded = embed_sequences(loaded, sequences[chunk], seed=seed,
                                               num_tokenizations=num_tokenizations, batch_size=batch_size,
                                               per_token=per_token, names=names[chunk], k="random")
                    for name in pooled:
                        pooled[name].append(embedded[name])
                    if per_token:
                        count = len(embedded["token_ids"])
                        if vectors is not None:
                            if np.abs(embedded["token_vectors"]).max(initial=0.0) > np.finfo(np.float16).max:
                                raise DNAVecError(f"{loaded.source}: token states beyond the float16 range "
                                                  "(a diverged model?)")
                            vectors[filled:filled + count] = embedded["token_vectors"]
                        ids[filled:filled + count] = embedded["token_ids"]
                        offsets[start + 1:start + len(embedded["token_offsets"])] = (
                            filled + embedded["token_offsets"][1:])
                        filled += count
                    bar.update(len(embedded["cls"]))
            for name in ("cls", "mean"):
                if name in features:
                    out[name][split] = np.concatenate(pooled[name])
            if "tokens" in features:
                out["tokens"][split] = TokenFeatures(vectors[:filled], offsets)
            if "static_tokens" in features:
                out["static_tokens"][split] = TokenFeatures(ids[:filled], offsets, table)
        if "static" in features:
            rows = []
            for sequence, name in zip(sequences, names):
                raw = check_dna(sequence, name)
                ids = np.concatenate([contig.ids for t in range(num_tokenizations) for contig in
                                      tokenize_sequence(loaded.tokenizer, raw, record_seed(seed, t, raw), name)]
                                     or [np.zeros(0, np.int64)])
                if not len(ids):
                    raise DNAVecError(f"{name}: no k-mer to embed (no run of {loaded.tokenizer.k_min} or more "
                                      "A/C/G/T bases)")
                rows.append(table[ids].mean(axis=0))
            out["static"][split] = np.stack(rows).astype(np.float32)
    return out


def run_probe(features: dict[str, np.ndarray], task: Task, seed: int) -> dict[str, Any]:
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(features["train"])
    scaled = {split: scaler.transform(features[split]) for split in SPLITS}
    return logistic_regression(scaled, {split: task.labels(split) for split in SPLITS}, seed)


@dataclasses.dataclass(frozen=True)
class TokenProbeSettings:
    """The token probes' fit (token_probe): AdamW on minibatches, the epoch with the best dev MCC kept."""
    learning_rate: float = 3e-3
    weight_decay: float = 0.1  # decoupled (AdamW), on the kernel only
    epochs: int = 100  # at most
    patience: int = 20  # epochs without a better dev MCC before stopping
    batch_size: int = 64

    def check(self) -> None:
        if not self.learning_rate > 0 or self.weight_decay < 0:
            raise DNAVecError(f"--probe_learning_rate must be > 0 and --probe_weight_decay >= 0, got "
                              f"{self.learning_rate} and {self.weight_decay}")
        if self.epochs < 1:
            raise DNAVecError(f"--probe_epochs must be at least 1, got {self.epochs}")
        if self.patience < 1 or self.batch_size < 1:  # not command-line settings
            raise ValueError(f"patience and batch_size must be at least 1, got {self.patience}, {self.batch_size}")


def token_probe_logits(params: dict[str, jax.Array], tokens: jax.Array, mask: jax.Array) -> jax.Array:
    """(batch, tokens, dim) standardised features -> (batch, classes): log-sum-exp over the real tokens of a
    per-token linear score."""
    scores = tokens @ params["kernel"] + params["bias"]
    return jax.nn.logsumexp(jnp.where(mask[..., None], scores, -jnp.inf), axis=1)


def _token_batch(features: TokenFeatures, rows: np.ndarray, batch_size: int, max_tokens: int,
                 center: np.ndarray, scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Standardised, zero-padded (batch_size, length, dim) features and their mask. Padding rows keep
    one masked-in zero token so that their log-sum-exp stays finite (their loss weight is 0).

    length: the batch's longest sequence rounded up to a power of two (at most max_tokens), so short
    sequences are not padded to the task's longest and only ~log2(max_tokens) shapes are compiled.
    """
    sizes = features.offsets[np.asarray(rows) + 1] - features.offsets[np.asarray(rows)]
    length = min(max_tokens, 1 << (max(int(sizes.max(initial=1)), 1) - 1).bit_length())
    tokens = np.zeros((batch_size, length, features.dim), np.float32)
    mask = np.zeros((batch_size, length), bool)
    for slot, row in enumerate(rows):
        start, end = features.offsets[row], features.offsets[row + 1]
        tokens[slot, :end - start] = (features.rows(start, end) - center) / scale
        mask[slot, :end - start] = True
    mask[len(rows):, 0] = True
    return tokens, mask


def token_probe(features: dict[str, TokenFeatures], labels: dict[str, np.ndarray], num_classes: int,
                settings: TokenProbeSettings, seed: int) -> dict[str, Any]:
    """Fits the token probe (see the module docstring) on train; returns dev/test metrics of the best dev epoch.

    Deterministic: zero-initialised parameters, a seeded example order per epoch, one device.
    """
    settings.check()
    train = features["train"]
    center, scale = train.moments()
    center, scale = center.astype(np.float32), (scale + 1e-6).astype(np.float32)
    max_tokens = max(int(np.diff(features[split].offsets).max()) for split in SPLITS)
    batch_size = int(settings.batch_size)
    params = {"kernel": jnp.zeros((train.dim, num_classes)), "bias": jnp.zeros((num_classes,))}
    tx = optax.adamw(settings.learning_rate, weight_decay=settings.weight_decay,
                     mask={"kernel": True, "bias": False})
    opt_state = tx.init(params)

    @jax.jit
    def train_step(params, opt_state, tokens, mask, batch_labels, weights):
        def loss_fn(params):
            ce = optax.softmax_cross_entropy_with_integer_labels(token_probe_logits(params, tokens, mask), batch_labels)
            return jnp.sum(ce * weights) / jnp.sum(weights)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    predict_step = jax.jit(lambda params, tokens, mask: jax.nn.softmax(token_probe_logits(params, tokens, mask)))

    def predict(params, split):
        count = len(features[split].offsets) - 1
        probs = []
        for start in range(0, count, batch_size):
            rows = np.arange(start, min(start + batch_size, count))
            batch = _token_batch(features[split], rows, batch_size, max_tokens, center, scale)
            probs.append(np.asarray(predict_step(params, *batch))[:len(rows)])
        return np.concatenate(probs)

    best_score, best_epoch, best_params, best_dev, history, waited = None, 0, None, None, [], 0
    for epoch in range(settings.epochs):
        order = np.random.default_rng([seed, epoch]).permutation(len(labels["train"]))
        losses = []
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            tokens, mask = _token_batch(train, rows, batch_size, max_tokens, center, scale)
            weights = (np.arange(batch_size) < len(rows)).astype(np.float32)
            params, opt_state, loss = train_step(params, opt_state, tokens, mask,
                                                 np.pad(labels["train"][rows], (0, batch_size - len(rows))), weights)
            losses.append((loss, len(rows)))
        loss = math.fsum(float(value) * rows for value, rows in losses) / len(order)
        dev = classification_metrics(labels["dev"], predict(params, "dev"))
        history.append({"epoch": epoch + 1, "train_loss": round(loss, 6), f"dev_{SELECT_METRIC}": dev[SELECT_METRIC]})
        if _better(dev[SELECT_METRIC], best_score):
            best_score, best_epoch, best_params, best_dev, waited = dev[SELECT_METRIC], epoch + 1, params, dev, 0
        else:
            waited += 1
            if waited >= settings.patience:
                break
    probs = {split: predict(best_params, split) for split in ("dev", "test")}
    test = classification_metrics(labels["test"], probs["test"])
    return {"dev": best_dev, "test": test,
            "selected": {"epoch": best_epoch, "epochs_run": len(history), "max_tokens": max_tokens,
                         **dataclasses.asdict(settings), "history": history}, "probs": probs}


# ---- fine-tuning ----------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class FinetuneSettings:
    learning_rate: float = 3e-4  # peak
    epochs: int = 20  # at most; early stopping may end sooner
    batch_size: int = 32  # sequences per step (all their windows), divisible by the device count
    patience: int = 5  # epochs without a better dev MCC before stopping
    weight_decay: float = 0.01
    warmup_fraction: float = 0.1  # of all steps, linear from 0; then linear decay to 0
    grad_clip_norm: float = 1.0
    retokenize: bool = True  # a fresh random tokenization of the train sequences each epoch
    seed: int = 0

    def check(self) -> None:
        if not self.learning_rate > 0:
            raise DNAVecError(f"--learning_rate must be > 0, got {self.learning_rate}")
        for name in ("epochs", "batch_size", "patience"):
            if getattr(self, name) < 1:
                raise DNAVecError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.warmup_fraction < 1 or self.weight_decay < 0:
            raise DNAVecError("--warmup_fraction must lie in [0, 1) and --weight_decay be >= 0")

    def optimizer_settings(self, total_steps: int):
        """The fields optim.make_optimizer reads, for fine-tuning."""
        import ml_collections

        return ml_collections.ConfigDict(dict(
            learning_rate=float(self.learning_rate), end_learning_rate_factor=0.0, schedule="linear",
            num_train_steps=int(total_steps), warmup_steps=int(round(self.warmup_fraction * total_steps)),
            grad_clip_norm=float(self.grad_clip_norm), weight_decay=float(self.weight_decay),
            adam_b1=0.9, adam_b2=0.999, adam_eps=1e-6,
        ))


class SequenceClassifier(nn.Module):
    """All windows of a sequence -> per window what transformers' BertForSequenceClassification computes
    (encoder, pooler tanh(dense([CLS])), dropout, dense logits) -> the mean of the windows' logits.

    Inputs (batch, windows, length) int32; windows without k-mers (the empty [CLS] [SEP] slots of
    _pack) are left out of the mean. Parameters: "bert" (BertForMaskedLM's embeddings, encoder and
    pooler, plus the mlm_bias its setup declares, unused here) and "classifier" (the dense head), so the
    export is a plain BertForSequenceClassification; predict.Predictor applies the same rule window by
    window. The pooler starts from the checkpoint's (MLM does not train it: a fresh random layer then).
    """

    config: BertConfig
    num_classes: int

    @nn.compact
    def __call__(self, input_ids, input_mask, deterministic: bool = True):
        cfg = self.config
        batch, windows, length = input_ids.shape
        outputs = BertForMaskedLM(cfg, name="bert")(
            input_ids.reshape(batch * windows, length), input_mask.reshape(batch * windows, length),
            deterministic=deterministic)
        pooled = nn.Dropout(cfg.hidden_dropout_rate)(outputs["pooled"].astype(jnp.float32),
                                                     deterministic=deterministic)
        logits = nn.Dense(self.num_classes, kernel_init=nn.initializers.normal(cfg.initializer_range),
                          param_dtype=jnp.float32, name="classifier")(pooled).reshape(batch, windows, -1)
        tokens = (input_mask > 0) & (input_ids >= NUM_SPECIAL)
        real = tokens.any(-1).astype(jnp.float32)  # windows that hold k-mers
        return jnp.einsum("bw,bwc->bc", real, logits) / jnp.maximum(real.sum(-1, keepdims=True), 1.0)


def _window_ids(loaded, sequences: Sequence[str], names: Sequence[str], seed: int, tokenization: int
                ) -> list[list[np.ndarray]]:
    """Per sequence, its windows' k-mer ids under tokenization t (what predict.Predictor classifies for t = 0)."""
    from dnavec_jax.inference import check_dna
    from dnavec_jax.predict import window_ids

    return [window_ids(loaded, check_dna(sequence, name), seed, tokenization, name)
            for sequence, name in zip(sequences, names)]


def _pack(window_lists: Sequence[list[np.ndarray]], rows: int, windows: int, length: int
          ) -> tuple[np.ndarray, np.ndarray]:
    """(rows, windows, length) int32 ids and mask; unused slots are empty [CLS] [SEP] windows."""
    input_ids = np.zeros((rows, windows, length), np.int32)
    input_mask = np.zeros((rows, windows, length), np.int32)
    input_ids[:, :, 0], input_ids[:, :, 1] = CLS_ID, SEP_ID
    input_mask[:, :, :2] = 1
    for row, sequence_windows in enumerate(window_lists):
        for slot, ids in enumerate(sequence_windows):
            n = len(ids)
            input_ids[row, slot, 1:n + 1] = ids
            input_ids[row, slot, n + 1] = SEP_ID
            input_mask[row, slot, :n + 2] = 1
    return input_ids, input_mask


def finetune(loaded, task: Task, settings: FinetuneSettings,
             log: Callable[[str], None] | None = None, progress: bool = False) -> dict[str, Any]:
    """Fine-tunes the encoder with a classification head (see the module docstring).

    Returns dev/test metrics, "selected", and (not for results.json) "classifier": the best epoch's
    predict.Classifier, "probs": its dev/test probabilities by predict.Predictor's rule.
    """
    from tqdm import tqdm

    from dnavec_jax.inference import padded_length
    from dnavec_jax.predict import Classifier, Predictor
    from dnavec_jax.training import optim, sharding, steps

    settings.check()
    log = log or (lambda message: None)
    seed, batch_size = int(settings.seed), int(settings.batch_size)
    mesh = sharding.make_mesh(False)
    divisor = sharding.batch_size_divisor(mesh)
    if batch_size % divisor:
        raise DNAVecError(f"--batch_size ({batch_size}) must be divisible by the {divisor} data-parallel devices")
    process_count, process_index = jax.process_count(), jax.process_index()
    local_rows = batch_size // process_count

    names = {split: task.splits[split].row_names() for split in SPLITS}
    sequences = {split: task.sequences(split) for split in SPLITS}
    labels = {split: task.labels(split) for split in SPLITS}
    eval_windows = {split: _window_ids(loaded, sequences[split], names[split], seed, 0) for split in ("dev", "test")}
    train_windows = _window_ids(loaded, sequences["train"], names["train"], seed, 0)
    # Window counts and sizes depend on the lengths only, never on the tokenization.
    every = [w for split in (train_windows, *eval_windows.values()) for w in split]
    num_windows = max(len(w) for w in every)
    length = padded_length(max(len(ids) for w in every for ids in w), loaded.window_length)
    num_classes = len(task.classes)

    model = SequenceClassifier(loaded.config, num_classes)
    example = jnp.zeros((1, num_windows, length), jnp.int32)
    initial = model.init(jax.random.fold_in(jax.random.key(seed), 0), example, example)["params"]
    pretrained = {name: loaded.params.get(name) for name in initial["bert"]}
    if jax.tree.structure(pretrained) != jax.tree.structure(initial["bert"]) or any(
            a.shape != b.shape for a, b in zip(jax.tree.leaves(pretrained), jax.tree.leaves(initial["bert"]))):
        raise DNAVecError(f"{loaded.source}: its encoder parameters do not have the shapes of its config")
    # The pretrained encoder, and a fresh head (normal(initializer_range) kernel, zero bias).
    host_params = {"bert": jax.tree.map(lambda x: np.asarray(x, np.float32), pretrained),
                   "classifier": jax.device_get(initial["classifier"])}

    steps_per_epoch = -(-len(sequences["train"]) // batch_size)
    optimizer_settings = settings.optimizer_settings(steps_per_epoch * settings.epochs)
    tx, _ = optim.make_optimizer(optimizer_settings)

    def init_state(params):
        return steps.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                                rng=jax.random.key_data(jax.random.fold_in(jax.random.key(seed), 1)))

    state_sh = steps.train_state_shardings(jax.eval_shape(init_state, host_params), mesh)
    batch_sh = sharding.batch_sharding(mesh, 0)
    state = jax.jit(init_state, in_shardings=(state_sh.params,), out_shardings=state_sh)(
        jax.device_put(host_params, state_sh.params))

    def train_step(state, batch):
        rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)

        def loss_fn(params):
            logits = model.apply({"params": params}, batch["input_ids"], batch["input_mask"], deterministic=False,
                                 rngs={"dropout": rng})
            ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), batch["labels"])
            return jnp.sum(ce * batch["weights"]) / jnp.maximum(jnp.sum(batch["weights"]), 1.0)

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        new_state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                                  opt_state=opt_state)
        return new_state, {"loss": loss, "weight": jnp.sum(batch["weights"])}

    def eval_step(params, batch):
        logits = model.apply({"params": params}, batch["input_ids"], batch["input_mask"], deterministic=True)
        return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)

    replicated = sharding.replicated(mesh)
    train_step = jax.jit(train_step, in_shardings=(state_sh, batch_sh), out_shardings=(state_sh, replicated),
                         donate_argnums=0)
    eval_step = jax.jit(eval_step, in_shardings=(state_sh.params, batch_sh), out_shardings=replicated)

    def make_batch(window_lists, batch_labels):
        ids, mask = _pack(window_lists, batch_size, num_windows, length)
        rows = len(window_lists)
        local = {"input_ids": ids, "input_mask": mask,
                 "labels": np.pad(np.asarray(batch_labels, np.int32), (0, batch_size - rows)),
                 "weights": (np.arange(batch_size) < rows).astype(np.float32)}
        local = {name: array[process_index * local_rows:(process_index + 1) * local_rows]
                 for name, array in local.items()}
        return sharding.global_batch(local, batch_sh, batch_size, example_axis=0)

    def predict(params, split):
        outputs = []
        for start in range(0, len(eval_windows[split]), batch_size):
            chunk = eval_windows[split][start:start + batch_size]
            outputs.append((len(chunk), eval_step(params, make_batch(chunk, np.zeros(len(chunk))))))
        return np.concatenate([np.asarray(jax.device_get(probs))[:rows] for rows, probs in outputs])

    best_score, best_epoch, best_params, history = None, 0, None, []
    waited = 0
    started = time.perf_counter()
    for epoch in range(settings.epochs):
        windows = train_windows if epoch == 0 or not settings.retokenize else _window_ids(
            loaded, sequences["train"], names["train"], seed, epoch)
        order = np.random.default_rng([seed, epoch]).permutation(len(windows))
        step_metrics = []
        for start in tqdm(range(0, len(order), batch_size), desc=f"finetune epoch {epoch + 1}", unit="step",
                          disable=not progress, leave=False):
            rows = order[start:start + batch_size]
            state, metrics = train_step(state, make_batch([windows[i] for i in rows], labels["train"][rows]))
            step_metrics.append(metrics)  # fetched once per epoch: the host never waits on a step
        fetched = jax.device_get(step_metrics)
        loss = math.fsum(float(m["loss"]) * float(m["weight"]) for m in fetched) / len(order)
        if not math.isfinite(loss):
            raise DNAVecError(f"fine-tuning diverged in epoch {epoch + 1} (train loss {loss}); lower --learning_rate")
        dev = classification_metrics(labels["dev"], predict(state.params, "dev"))
        improved = _better(dev[SELECT_METRIC], best_score)
        history.append({"epoch": epoch + 1, "train_loss": round(loss, 6), **{f"dev_{k}": v for k, v in dev.items()}})
        log(f"finetune epoch {epoch + 1}/{settings.epochs}: train loss {loss:.4f}, dev accuracy "
            f"{dev['accuracy']:.4f}, dev MCC {dev['mcc']:.4f}" + (" (best)" if improved else ""))
        if improved:
            best_score, best_epoch, waited = dev[SELECT_METRIC], epoch + 1, 0
            best_params = jax.device_get(state.params)  # a host copy: the next step donates state's buffers
        elif (epoch + 1) * steps_per_epoch > optimizer_settings.warmup_steps:  # warmup epochs do not count
            waited += 1
            if waited >= settings.patience:
                break
    train_time = time.perf_counter() - started
    # The reported metrics come from the rule predictions/*.csv and `dnavec predict` use (window by window,
    # as transformers runs the export); the per-epoch dev figures above batch whole sequences (same math,
    # other padding: they agree to float rounding).
    classifier = Classifier(dataclasses.replace(loaded, params={**loaded.params, **best_params["bert"]}),
                            np.asarray(best_params["classifier"]["kernel"], np.float32),
                            np.asarray(best_params["classifier"]["bias"], np.float32),
                            tuple(task.classes), seed, task.max_length)
    predictor = Predictor(classifier)
    probs = {split: predictor.probabilities(zip(names[split], sequences[split]), len(sequences[split]))
             for split in ("dev", "test")}
    return {"dev": classification_metrics(labels["dev"], probs["dev"]),
            "test": classification_metrics(labels["test"], probs["test"]),
            "selected": {"epoch": best_epoch, "epochs_run": len(history),
                         "windows_per_sequence": num_windows, "window_length": length,
                         "steps": steps_per_epoch * len(history),
                         "train_time_s": round(train_time, 2), "history": history},
            "probs": probs, "classifier": classifier}


# ---- running the methods -----------------------------------------------------------------

RANDOM_INIT = "random_init_"  # row-name prefix of the control rows (run_methods(random_init_control=True))
PRIVATE = ("probs", "classifier")  # method-result keys kept in memory (predictions, the export), not in results.json
PREDICTIONS_DIR = "predictions"
PREDICTION_CHOICES = ("finetune", "all")


def random_init_model(loaded, seed: int):
    """`loaded` with the weights pretraining starts from (model.init_params, key `seed`): the control model."""
    from dnavec_jax.model import init_params

    params = jax.device_get(init_params(loaded.config, jax.random.key(seed)))
    return dataclasses.replace(loaded, params=params, source=f"random init (seed {seed}) of {loaded.source}",
                               step=None, initialized=())


def _mean_sd(values: list[float | None]) -> tuple[float | None, float | None]:
    if any(value is None for value in values):
        return None, None
    return float(np.mean(values)), float(np.std(values, ddof=1))


def combine_seeds(runs: Sequence[dict[str, Any]], seeds: Sequence[int]) -> dict[str, Any]:
    """One row from runs over several seeds: mean metrics in dev/test, sample sd (ddof 1) in dev_sd/test_sd,
    each run in "runs"; "selected" and the private keys are the first seed's (the one --seed names)."""
    combined: dict[str, Any] = {"seeds": list(seeds)}
    for split in ("dev", "test"):
        stats = {metric: _mean_sd([run[split][metric] for run in runs]) for metric in METRICS}
        combined[split] = {metric: mean for metric, (mean, _) in stats.items()}
        combined[f"{split}_sd"] = {metric: sd for metric, (_, sd) in stats.items()}
    combined["selected"] = runs[0]["selected"]
    combined["runs"] = [{"seed": seed, **{k: v for k, v in run.items() if k not in PRIVATE}}
                        for seed, run in zip(seeds, runs)]
    combined["time_s"] = round(sum(run["time_s"] for run in runs), 2)
    combined.update({key: runs[0][key] for key in PRIVATE if key in runs[0]})
    return combined


def run_methods(task: Task, loaded, *, methods: Sequence[str] = METHODS, seed: int = 0, seeds: int = 1,
                baseline_k: tuple[int, int] | None = None, tfidf: bool = False,
                probe: Sequence[str] = PROBE_FEATURES, probe_tokenizations: int = 4, embed_batch_size: int = 64,
                token_probe_settings: TokenProbeSettings | None = None,
                finetune_settings: FinetuneSettings | None = None, random_init_control: bool = False,
                log: Callable[[str], None] | None = None, progress: bool = False) -> dict[str, dict[str, Any]]:
    """{row name: {"dev", "test", "selected", "time_s", "probs"[, "classifier"]}} for each method (see the module
    docstring). "probs" and "classifier" are for the predictions and the export, not for results.json (PRIVATE).

    seeds: the probe and fine-tune rows run with seeds seed, seed + 1, ..., and are combined (combine_seeds);
    finetune_settings.seed is replaced by each. random_init_control: the probe and finetune rows again, on the
    same architecture with freshly initialised weights (key: the run's seed; row names prefixed RANDOM_INIT);
    the difference is what pretraining adds.
    """
    log = log or (lambda message: None)
    if seeds < 1:
        raise DNAVecError(f"--seeds must be at least 1, got {seeds}")
    run_seeds = [seed + i for i in range(seeds)]
    results: dict[str, dict[str, Any]] = {}
    labels = {split: task.labels(split) for split in SPLITS}
    prefixes = [""] + ([RANDOM_INIT] if random_init_control and set(methods) & {"probe", "finetune"} else [])

    def timed(name, run_seed, function, *args):
        started = time.perf_counter()
        result = function(*args)
        result["time_s"] = round(time.perf_counter() - started, 2)
        where = f" (seed {run_seed})" if len(run_seeds) > 1 else ""
        log(f"{name}{where}: dev {SELECT_METRIC} {result['dev'][SELECT_METRIC]:.4f}, test {SELECT_METRIC} "
            f"{result['test'][SELECT_METRIC]:.4f} ({result['time_s']:.1f}s)")
        return result

    def run_probes(prefix, model, run_seed):
        started = time.perf_counter()
        features = probe_features(model, task, run_seed, embed_batch_size, probe, probe_tokenizations, progress)
        feature_time = round(time.perf_counter() - started, 2)
        rows = {}
        for name in probe:
            if name in TOKEN_FEATURES:
                fit = (token_probe, features[name], labels, len(task.classes),
                       token_probe_settings or TokenProbeSettings(), run_seed)
            else:
                fit = (run_probe, features[name], task, run_seed)
            rows[f"{prefix}probe_{name}"] = timed(f"{prefix}probe_{name}", run_seed, *fit)
            rows[f"{prefix}probe_{name}"]["selected"]["features_time_s"] = feature_time
        return rows

    for method in methods:
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}")
        if method == "baseline":
            k_range = baseline_k or (loaded.tokenizer.k_min, loaded.tokenizer.k_max)
            results["baseline"] = timed("baseline", seed, run_baseline, task, k_range, tfidf, seed)
            continue
        for prefix in prefixes:
            runs: dict[str, list[dict[str, Any]]] = {}
            for run_seed in run_seeds:
                model = random_init_model(loaded, run_seed) if prefix else loaded
                if method == "probe":
                    rows = run_probes(prefix, model, run_seed)
                else:
                    settings = dataclasses.replace(finetune_settings or FinetuneSettings(), seed=run_seed)
                    rows = {f"{prefix}finetune": timed(f"{prefix}finetune", run_seed, finetune, model, task,
                                                       settings, log, progress)}
                for name, row in rows.items():
                    runs.setdefault(name, []).append(row)
            for name, rows in runs.items():
                results[name] = rows[0] if len(rows) == 1 else combine_seeds(rows, run_seeds)
    return results


def row_label(name: str, result: dict[str, Any]) -> str:
    if name.startswith(RANDOM_INIT):
        return row_label(name[len(RANDOM_INIT):], result) + ", random init"
    selected = result.get("selected", {})
    seeds = f", {len(result['seeds'])} seeds" if "seeds" in result else ""
    if name == "baseline":
        k = (f"k {selected['k_min']}" if selected["k_min"] == selected["k_max"]
             else f"k {selected['k_min']}-{selected['k_max']}")
        return f"k-mer {'tf-idf' if selected['tfidf'] else 'counts'} ({k}) + LR"
    if name.startswith("probe_"):
        feature = name[len("probe_"):]
        return (f"probe: {feature} + " + ("linear, log-sum-exp over tokens" if feature in TOKEN_FEATURES else "LR")
                + seeds)
    if name == "finetune":
        return f"fine-tune{seeds}" if seeds else f"fine-tune (epoch {selected['epoch']})"
    return name


def format_table(results: dict[str, dict[str, Any]]) -> str:
    """A Markdown table: one row per method, dev then test metrics (mean ± sd over seeds where there are several)."""
    short = {"accuracy": "acc", "macro_f1": "F1", "mcc": "MCC", "auroc": "AUROC"}
    header = ["method"] + [f"{split} {short[m]}" for split in ("dev", "test") for m in METRICS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, result in results.items():
        cells = [row_label(name, result)]
        for split in ("dev", "test"):
            for metric in METRICS:
                value, sd = result[split][metric], result.get(f"{split}_sd", {}).get(metric)
                cells.append("-" if value is None else f"{value:.3f}" + ("" if sd is None else f" ± {sd:.3f}"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_list(text: str, allowed: Sequence[str], flag: str) -> list[str]:
    items = [item.strip() for item in (text or "").split(",") if item.strip()]
    unknown = [item for item in items if item not in allowed]
    if not items or unknown:
        raise DNAVecError(f"{flag} {text!r}: expected a comma list of {', '.join(allowed)}")
    return list(dict.fromkeys(items))


def prediction_blocks(task: Task, results: dict[str, dict[str, Any]], split: str, which: str
                      ) -> list[tuple[list[str], list[list[str]]]]:
    """(columns, cells) per method for predictions/<split>.csv: the fine-tuned model's unprefixed; with
    which="all" every other row's too, its columns prefixed by the row name."""
    from dnavec_jax.predict import prediction_cells, prediction_columns

    names = [name for name in ("finetune", *results) if name in results and (name == "finetune" or which == "all")]
    names = list(dict.fromkeys(names))  # the fine-tuned model's columns first, right after the input's
    return [(prediction_columns(task.classes, "" if name == "finetune" else f"{name}_"),
             prediction_cells(results[name]["probs"][split], task.classes)) for name in names]


def _existing_outputs(output_dir: Path) -> list[str]:
    names = [RESULTS_FILE, PREDICTIONS_DIR, "classifier"]
    return [name for name in names if (output_dir / name).exists()]


def write_outputs(output_dir: Path, report: dict[str, Any], tables: dict[str, tuple], classifier, details: dict,
                  overwrite: bool) -> None:
    """results.json, predictions/ and classifier/, all or nothing: everything is written in a staging directory
    inside output_dir, then renamed into place (results.json last); outputs of an earlier run that this one
    does not make are removed (only with overwrite: otherwise any earlier output is refused up front)."""
    import shutil

    from dnavec_jax.atomic_files import replace_directory
    from dnavec_jax.predict import CLASSIFIER_DIR, export_classifier, write_table

    created = not output_dir.exists()
    output_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".classify-partial-", dir=output_dir))
    try:
        made = []
        if tables:
            (staging / PREDICTIONS_DIR).mkdir()
            for split, (header, rows, blocks) in tables.items():
                with open(staging / PREDICTIONS_DIR / f"{split}.csv", "w", newline="", encoding="utf-8") as handle:
                    write_table(handle, header, rows, blocks)
            made.append(PREDICTIONS_DIR)
        if classifier is not None:
            export_classifier(classifier, staging / CLASSIFIER_DIR, details)
            made.append(CLASSIFIER_DIR)
        for name in made:
            refused = DNAVecError(f"--output_dir {output_dir}: {name}/ exists (pass --overwrite to replace it)")
            replace_directory(staging / name, output_dir / name, overwrite, lambda error=refused: error)
        for name in {PREDICTIONS_DIR, CLASSIFIER_DIR} - set(made):
            if overwrite and (output_dir / name).is_dir():
                shutil.rmtree(output_dir / name)
        write_atomic(output_dir / RESULTS_FILE, lambda handle: handle.write(json.dumps(report, indent=2) + "\n"),
                     binary=False)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created and not any(output_dir.iterdir()):
            output_dir.rmdir()
        raise
    shutil.rmtree(staging, ignore_errors=True)


def run_classify(args: argparse.Namespace) -> int:
    """`dnavec classify`."""
    from dnavec_jax.predict import check_free_columns, prediction_columns

    methods = parse_list(args.methods, METHODS, "--methods")
    probe = parse_list(args.probe_features, PROBE_FEATURES, "--probe_features")
    baseline_k = parse_k_range(args.baseline_k) if args.baseline_k else None
    if args.seed < 0:
        raise DNAVecError(f"--seed must be non-negative, got {args.seed}")
    if args.seeds < 1:
        raise DNAVecError(f"--seeds must be at least 1, got {args.seeds}")
    if args.probe_tokenizations < 1:
        raise DNAVecError(f"--probe_tokenizations must be at least 1, got {args.probe_tokenizations}")
    if args.embed_batch_size < 1:
        raise DNAVecError(f"--embed_batch_size must be positive, got {args.embed_batch_size}")
    settings = FinetuneSettings(learning_rate=args.learning_rate, epochs=args.epochs, batch_size=args.batch_size,
                                patience=args.patience, weight_decay=args.weight_decay,
                                warmup_fraction=args.warmup_fraction, retokenize=not args.no_retokenize,
                                seed=args.seed)
    settings.check()
    probe_settings = TokenProbeSettings(learning_rate=args.probe_learning_rate, weight_decay=args.probe_weight_decay,
                                        epochs=args.probe_epochs)
    probe_settings.check()
    output_dir = Path(args.output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise DNAVecError(f"--output_dir {output_dir}: exists and is not a directory")
    existing = _existing_outputs(output_dir)
    if existing and not args.overwrite:
        raise DNAVecError(f"--output_dir {output_dir}: {existing[0]} exists (pass --overwrite to replace it)")
    task = load_task(args.train, args.dev, args.test, args.max_length)
    for split in ("dev", "test"):  # fail before any work, not when the tables are written
        check_free_columns(task.splits[split].header, prediction_columns(task.classes),
                           f"--{split} {task.splits[split].path}")
    loaded = None
    if "probe" in methods or "finetune" in methods or baseline_k is None:
        from dnavec_jax.inference import load_model

        loaded = load_model(args.model, step=args.step)
    log = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    started = time.perf_counter()
    results = run_methods(task, loaded, methods=methods, seed=args.seed, seeds=args.seeds, baseline_k=baseline_k,
                          tfidf=args.tfidf, probe=probe, probe_tokenizations=args.probe_tokenizations,
                          embed_batch_size=args.embed_batch_size, token_probe_settings=probe_settings,
                          finetune_settings=settings, random_init_control=args.random_init_control, log=log,
                          progress=sys.stderr.isatty())
    report = {
        "model": loaded.source if loaded is not None else str(args.model),
        "task": task.summary(),
        "settings": {"methods": methods, "seed": args.seed, "seeds": args.seeds, "select_metric": SELECT_METRIC,
                     "C_grid": list(C_GRID), "probe_features": probe,
                     "probe_tokenizations": args.probe_tokenizations, "tfidf": bool(args.tfidf),
                     "token_probe": dataclasses.asdict(probe_settings),
                     "random_init_control": bool(args.random_init_control),
                     "finetune": dataclasses.asdict(settings), "predictions": args.predictions},
        "methods": {name: {k: v for k, v in result.items() if k not in PRIVATE} for name, result in results.items()},
        "time_s": round(time.perf_counter() - started, 2),
    }
    tables = {}
    if "finetune" in results or args.predictions == "all":
        tables = {split: (task.splits[split].header, task.splits[split].rows,
                          prediction_blocks(task, results, split, args.predictions)) for split in ("dev", "test")}
    finetuned = results.get("finetune")
    details = {}
    if finetuned:  # the exported classifier is the --seed run's, also when --seeds repeats it
        first = finetuned["runs"][0] if "runs" in finetuned else finetuned
        details = {"base_model": report["model"], "dev": first["dev"], "test": first["test"],
                   "epoch": first["selected"]["epoch"]}
    write_outputs(output_dir, report, tables, finetuned and finetuned["classifier"], details, args.overwrite)
    counts = ", ".join(f"{split} {len(task.splits[split].sequences):,}" for split in SPLITS)
    print(f"{len(task.classes)} classes; {counts} sequences; model {report['model']}; seed {args.seed}"
          + (f" (+{args.seeds - 1} more: mean ± sd)" if args.seeds > 1 else ""))
    print(format_table(results))
    wrote = [RESULTS_FILE] + [f"{PREDICTIONS_DIR}/{{dev,test}}.csv"] * bool(tables) + ["classifier/"] * bool(finetuned)
    print(f"wrote {', '.join(wrote)} to {output_dir}")
    return 0


# ---- a planted-motif task ---------------------------------------------------------------

def _motif_regex(motif: str) -> re.Pattern:
    return re.compile(motif.upper().replace("N", "[ACGT]"))


# configs/demo.py's validation_fraction and validation_block_size: the blocks the demo model never saw.
DEMO_HELD_OUT = (0.05, 20_000)


def held_out_windows(fasta: str | os.PathLike, length: int, held_out: tuple[float, int] = DEMO_HELD_OUT,
                     skip: re.Pattern | None = None) -> list[tuple[str, int, str]]:
    """(record name, start, upper-cased text) of non-overlapping A/C/G/T windows inside validation blocks.

    `held_out` is data prep's (validation_fraction, validation_block_size); the blocks are chosen by
    the same rule (pipeline.validation_blocks: record name and length only), so the windows lie in
    DNA that pretraining on this FASTA with those settings held out. Windows matching `skip` are left out.
    """
    from dnavec_jax.data.pipeline import validation_blocks
    from dnavec_jax.embedding import fasta_records

    fraction, block_size = held_out
    windows = []
    with tempfile.TemporaryDirectory(prefix="dnavec_motif_") as work_dir:
        index, records = fasta_records(str(fasta), Path(work_dir))
        for (name, record_length), (_, raw) in zip(index, records):
            blocks = np.flatnonzero(validation_blocks(name, record_length, fraction, block_size))
            codes = BASE_CODES[raw]
            for start, end in acgt_runs(codes):
                for block in blocks:  # a window never crosses a block edge into training DNA
                    lo, hi = max(int(start), block * block_size), min(int(end), (block + 1) * block_size)
                    for at in range(lo, hi - length + 1, length):
                        text = bytes(raw[at:at + length]).decode("ascii").upper()
                        if skip is None or not skip.search(text):
                            windows.append((name, int(at), text))
    return windows


def _shuffled_site(site: str, original: str, pattern: re.Pattern, window: str, at: int,
                   rng: np.random.Generator) -> str:
    """The site's letters in a new order that neither spells the motif in the window nor restores the original.

    The label-0 twin of a planted motif: same bases at the same place, so both classes are edited and
    carry the same base composition; only the order of the motif's letters tells them apart.
    """
    for _ in range(1000):
        control = "".join(rng.permutation(list(site)))
        if control != original and not pattern.search(window[:at] + control + window[at + len(site):]):
            return control
    raise DNAVecError(f"motif {site!r}: no shuffle of its letters avoids the motif; use a less repetitive motif")


def planted_motif_task(fasta: str | os.PathLike, *, num_windows: int = 300, length: int = 150,
                       motif: str = CTCF_CORE, seed: int = 0, fractions: tuple[float, float] = (0.7, 0.15),
                       held_out: tuple[float, int] = DEMO_HELD_OUT) -> dict[str, list[tuple[str, int]]]:
    """A balanced binary task from real DNA that pretraining did not see: {split: [(sequence, label), ...]}.

    `num_windows` non-overlapping windows of `length` bases are drawn from the validation blocks
    (held_out_windows: data prep's held-out DNA for `held_out` = (validation_fraction,
    validation_block_size)); windows where the motif already occurs are skipped. Each window gives
    two rows, both edited at the same random position: label 1 gets `motif` (N: a random base each
    time), label 0 the same letters shuffled (_shuffled_site). So neither class is text the model
    was pretrained on, both have the same length and base composition, and they differ only in the
    order of 14 bases. Windows (both their rows) go to train/dev/test by `fractions` (train, dev;
    test gets the rest); rows are shuffled within a split. Deterministic in `seed`.
    """
    motif = motif.upper()
    if not motif or set(motif) - set("ACGTN") or len(motif) > length:
        raise DNAVecError(f"motif {motif!r}: must be A/C/G/T/N letters, at most {length} long")
    rng = np.random.default_rng(seed)
    pattern = _motif_regex(motif)
    tiles = [text for _, _, text in held_out_windows(fasta, length, held_out, skip=pattern)]
    if len(tiles) < num_windows:
        raise DNAVecError(f"{fasta}: only {len(tiles)} windows of {length} A/C/G/T bases in the validation blocks "
                          f"(validation_fraction {held_out[0]}, validation_block_size {held_out[1]:,}), "
                          f"{num_windows} asked for")
    chosen = [tiles[i] for i in rng.choice(len(tiles), size=num_windows, replace=False)]
    n_train = int(round(fractions[0] * num_windows))
    n_dev = int(round(fractions[1] * num_windows))
    bounds = {"train": (0, n_train), "dev": (n_train, n_train + n_dev), "test": (n_train + n_dev, num_windows)}
    if any(hi <= lo for lo, hi in bounds.values()):
        raise DNAVecError(f"{num_windows} windows leave a split empty; ask for more windows")
    task = {}
    for split, (lo, hi) in bounds.items():
        rows = []
        for window in chosen[lo:hi]:
            site = "".join(base if base != "N" else "ACGT"[rng.integers(4)] for base in motif)
            at = int(rng.integers(0, length - len(motif) + 1))
            control = _shuffled_site(site, window[at:at + len(motif)], pattern, window, at, rng)
            rows.append((window[:at] + control + window[at + len(motif):], 0))
            rows.append((window[:at] + site + window[at + len(motif):], 1))
        task[split] = [rows[i] for i in rng.permutation(len(rows))]
    return task


def write_task(task: dict[str, list[tuple[str, int]]], output_dir: str | os.PathLike) -> dict[str, Path]:
    """Writes {split}.csv (header `sequence,label`) for each split, each file whole or not at all; returns the paths."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, rows in task.items():
        paths[split] = output_dir / f"{split}.csv"

        def write(handle, rows=rows):
            writer = csv.writer(handle)
            writer.writerow(["sequence", "label"])
            writer.writerows(rows)

        write_atomic(paths[split], write, binary=False)
    return paths
