"""k-mer tf-idf over a genome (`dnavec tfidf`): the top-N table, the score vector and the word cloud.

A document is one data-prep example, made by data prep's own code path (pipeline.GenomeWorker.
chunk_tokens and layout_examples, masking left out). idf is scikit-learn's smooth idf, each
document's tf-idf is L2-normalised, and a k-mer's score is its mean over all documents. Two
streaming passes in bounded memory (CorpusTfidf); each batch of documents is vectorised through a
row-wise sort (doc_term_counts). docs/outputs.md ("tf-idf and the word cloud") has the formulas,
why this score, the outputs and the measured throughput.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from scipy import sparse
from wordcloud import WordCloud

from dnavec_jax import files
from dnavec_jax.data import fasta, pipeline
from dnavec_jax.data.settings import PrepSettings
from dnavec_jax.errors import DNAVecError
from dnavec_jax.tokenization import NUM_SPECIAL, PAD_ID, KmerTokenizer
from dnavec_jax.tools.settings import TfidfSettings

TOP_CSV = "tfidf_top.csv"
SCORES_NPY = "tfidf_scores.npy"
WORDCLOUD_PNG = "tfidf_wordcloud.png"
SUMMARY_JSON = "tfidf_summary.json"
OUTPUT_FILES = (TOP_CSV, SCORES_NPY, WORDCLOUD_PNG, SUMMARY_JSON)
CSV_COLUMNS = ("rank", "kmer", "k", "score", "idf", "df", "total_count")


# ---- the formulas, on a batch of documents ---------------------------------------
@dataclasses.dataclass(frozen=True)
class DocTermCounts:
    """The sparse document-term count matrix of a batch of documents, as triples."""

    doc: np.ndarray  # (nnz,) int64 document row in the batch, ascending
    term: np.ndarray  # (nnz,) int64 vocabulary id (>= NUM_SPECIAL)
    count: np.ndarray  # (nnz,) int64 occurrences of term in doc
    lengths: np.ndarray  # (num_docs,) int64 k-mer tokens per document

    @property
    def num_docs(self) -> int:
        return len(self.lengths)


def doc_term_counts(docs: np.ndarray) -> DocTermCounts:
    """(document, term, count) triples of a (num_docs, width) id matrix; special ids ([PAD] etc.) are not terms.

    Each row is one document (any order, any padding with special ids). A
    row-wise sort groups equal ids; each run of equal ids is one triple.
    """
    docs = np.asarray(docs)
    if docs.ndim != 2:
        raise ValueError(f"documents must be a (num_docs, width) id matrix, got shape {docs.shape}")
    num_docs, width = docs.shape
    if docs.size == 0:
        empty = np.zeros(0, np.int64)
        return DocTermCounts(empty, empty, empty, np.zeros(num_docs, np.int64))
    # int32 row sorts are many times faster than int64 ones (SIMD sort); ids fit easily.
    ids = np.sort(docs.astype(np.int32, copy=False), axis=1).ravel()
    run_start = np.ones(ids.size, dtype=bool)
    run_start[1:] = ids[1:] != ids[:-1]
    run_start[::width] = True  # a row never continues the previous row's run
    starts = np.flatnonzero(run_start)
    counts = np.diff(np.append(starts, ids.size))
    terms = ids[starts].astype(np.int64)
    keep = terms >= NUM_SPECIAL
    doc = (starts[keep] // width).astype(np.int64)
    counts = counts[keep].astype(np.int64)
    lengths = np.bincount(doc, weights=counts, minlength=num_docs).astype(np.int64)
    return DocTermCounts(doc, terms[keep], counts, lengths)


def smooth_idf(df: np.ndarray, num_documents: int) -> np.ndarray:
    """idf = ln((1 + n) / (1 + df)) + 1, float64 (scikit-learn's smooth_idf=True)."""
    df = np.asarray(df, dtype=np.float64)
    return np.log((1.0 + num_documents) / (1.0 + df)) + 1.0


def normalized_tfidf(counts: DocTermCounts, idf: np.ndarray) -> np.ndarray:
    """Per triple: tf x idf with tf = count / document length, L2-normalised within each document."""
    if counts.doc.size == 0:
        return np.zeros(0, np.float64)
    weights = counts.count / counts.lengths[counts.doc] * np.asarray(idf, np.float64)[counts.term]
    norms = np.sqrt(np.bincount(counts.doc, weights=weights * weights, minlength=counts.num_docs))
    return weights / norms[counts.doc]  # every triple's document has a token, so its norm is > 0


def tfidf_matrix(docs: np.ndarray, idf: np.ndarray):
    """The (num_docs, vocab_size) normalised tf-idf matrix of a batch of documents (scipy CSR)."""
    counts = doc_term_counts(docs)
    values = normalized_tfidf(counts, idf)
    return sparse.csr_matrix((values, (counts.doc, counts.term)), shape=(counts.num_docs, len(idf)))


class CorpusTfidf:
    """Two-pass accumulator of corpus tf-idf; holds only (vocab_size,) arrays, whatever the corpus size.

    Pass 1: add_frequencies(batch) for every batch, then pass 2: add_scores(batch)
    for the same batches (in any order); `score` is then the mean over documents
    of the normalised tf-idf.
    """

    def __init__(self, vocab_size: int):
        self.vocab_size = int(vocab_size)
        self.df = np.zeros(self.vocab_size, np.int64)
        self.total_count = np.zeros(self.vocab_size, np.int64)
        self.num_documents = 0
        self.num_tokens = 0
        self._score_sum = np.zeros(self.vocab_size, np.float64)
        self._idf: np.ndarray | None = None
        self._scored_documents = 0

    @property
    def nbytes(self) -> int:
        """Bytes held (to show that memory does not grow with the corpus)."""
        arrays = [self.df, self.total_count, self._score_sum] + ([self._idf] if self._idf is not None else [])
        return sum(array.nbytes for array in arrays)

    def add_frequencies(self, docs: np.ndarray) -> None:
        if self._idf is not None:
            raise RuntimeError("add_frequencies after add_scores: pass 1 is over")
        counts = doc_term_counts(docs)
        self.df += np.bincount(counts.term, minlength=self.vocab_size)
        self.total_count += np.bincount(counts.term, weights=counts.count, minlength=self.vocab_size).astype(np.int64)
        self.num_documents += int((counts.lengths > 0).sum())
        self.num_tokens += int(counts.lengths.sum())

    @property
    def idf(self) -> np.ndarray:
        if self._idf is None:
            self._idf = smooth_idf(self.df, self.num_documents)
        return self._idf

    def add_scores(self, docs: np.ndarray) -> None:
        counts = doc_term_counts(docs)
        self._score_sum += np.bincount(counts.term, weights=normalized_tfidf(counts, self.idf),
                                       minlength=self.vocab_size)
        self._scored_documents += int((counts.lengths > 0).sum())

    @property
    def score(self) -> np.ndarray:
        """Mean normalised tf-idf per vocabulary id (0 for ids in no document and for special tokens)."""
        if self._scored_documents != self.num_documents:
            raise RuntimeError(f"pass 2 saw {self._scored_documents} documents, pass 1 {self.num_documents}")
        return self._score_sum / max(self.num_documents, 1)


# ---- documents from a genome: the data-prep code path ----------------------------
def genome_documents(settings: PrepSettings, sources: Sequence[fasta.SourceFile],
                     records: Sequence[fasta.GenomeRecord]) -> Iterator[tuple[np.ndarray, int]]:
    """(documents of one chunk as an id matrix padded with [PAD], genome bases of the chunk), chunk by chunk.

    A document is a training example without its masking, [CLS] and [SEP]: data prep's own
    chunk_tokens (reading, contig rules, seeded k, validation cuts) and layout_examples.
    tests/test_tfidf.py checks the documents against chunk_examples' true_ids.
    """
    worker = pipeline.GenomeWorker(settings, sources, records, out_dir=".")
    per_example = settings.tokens_per_example
    try:
        chunk = settings.chunk_length
        for record in records:
            for chunk_index in range(math.ceil(record.length / chunk)):
                bases = min(chunk, record.length - chunk_index * chunk)
                tokens = worker.chunk_tokens(record, chunk_index, dupe=0)
                docs = np.zeros((0, per_example), np.int32)
                if tokens.piece_ids:
                    layout = pipeline.layout_examples(tokens.piece_ids, tokens.piece_positions, per_example)
                    docs = np.full((len(layout.num_tokens), per_example), PAD_ID, dtype=np.int32)
                    docs[layout.example_of, layout.column] = layout.flat_ids
                yield docs, bases
    finally:
        worker.reader.close()


@dataclasses.dataclass
class TfidfResult:
    tokenizer: KmerTokenizer
    score: np.ndarray  # (vocab_size,) float64
    idf: np.ndarray  # (vocab_size,) float64
    df: np.ndarray  # (vocab_size,) int64
    total_count: np.ndarray  # (vocab_size,) int64
    num_documents: int
    num_tokens: int
    bases: int  # genome bases of the selected records (each streamed twice)
    records: list[str]
    seconds: float

    @property
    def bases_per_second(self) -> float:
        return self.bases / self.seconds if self.seconds > 0 else float("inf")


def genome_tfidf(fasta_paths: Sequence[str], settings: PrepSettings, progress: bool = False) -> TfidfResult:
    """Corpus tf-idf of the selected records of FASTA(.gz) files, in two streaming passes."""
    started = time.perf_counter()
    paths = list(fasta_paths)
    tokenizer = settings.tokenizer()
    with tempfile.TemporaryDirectory(prefix="dnavec_tfidf_") as work_dir:
        genome = fasta.open_genome(paths, Path(work_dir), settings.chromosomes)
        sources, records, bases = genome.sources, genome.records, genome.bases
        accumulator = CorpusTfidf(tokenizer.vocab_size)
        passes = (("pass 1/2 (df)", accumulator.add_frequencies), ("pass 2/2 (tf-idf)", accumulator.add_scores))
        for name, add in passes:
            with fasta.bases_bar(bases, f"tf-idf {name}", progress) as bar:
                for docs, chunk_bases in genome_documents(settings, sources, records):
                    add(docs)
                    bar.update(chunk_bases)
            if accumulator.num_documents == 0:
                raise DNAVecError(
                    f"{', '.join(paths)}: the selected records hold no contig of at least min_contig_length="
                    f"{settings.min_contig_length} A/C/G/T bases, so there are no documents"
                )
    return TfidfResult(tokenizer, accumulator.score, accumulator.idf, accumulator.df, accumulator.total_count,
                       accumulator.num_documents, accumulator.num_tokens, bases, [r.name for r in records],
                       time.perf_counter() - started)



# ---- ranking and outputs ----------------------------------------------------------
def top_kmers(score: np.ndarray, top: int) -> np.ndarray:
    """Ids of the `top` highest-scoring k-mers (score > 0), best first; ties by id."""
    score = np.asarray(score)
    candidates = np.flatnonzero(score > 0)
    order = np.lexsort((candidates, -score[candidates]))
    return candidates[order[:top]]


def top_rows(result: TfidfResult, top: int) -> list[dict]:
    ids = top_kmers(result.score, top)
    lengths = result.tokenizer.ids_to_kmer_lengths(ids)
    return [
        {"rank": rank, "kmer": result.tokenizer.id_to_token(token_id), "k": int(k),
         "score": float(result.score[token_id]), "idf": float(result.idf[token_id]),
         "df": int(result.df[token_id]), "total_count": int(result.total_count[token_id])}
        for rank, (token_id, k) in enumerate(zip(ids, lengths), start=1)
    ]


def read_top_csv(path) -> list[dict]:
    """Rows of a tfidf_top.csv (as written by `dnavec tfidf`), best first."""
    path = Path(path)
    if not path.is_file():
        raise DNAVecError(f"{path}: tf-idf CSV not found")
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or "kmer" not in reader.fieldnames:
            raise DNAVecError(f"{path}: not a tf-idf CSV (no 'kmer' column; expected the columns "
                              f"{','.join(CSV_COLUMNS)})")
        return list(reader)


def word_cloud_png(frequencies: dict[str, float], seed: int = 0, width: int = 1600, height: int = 800) -> bytes:
    """PNG bytes of a word cloud of the given k-mer weights (wordcloud.generate_from_frequencies)."""
    cloud = WordCloud(width=width, height=height, background_color="white", random_state=seed,
                      max_words=len(frequencies), colormap="viridis", prefer_horizontal=0.9)
    cloud.generate_from_frequencies(frequencies)
    buffer = io.BytesIO()
    cloud.to_image().save(buffer, format="PNG")
    return buffer.getvalue()


def write_outputs(result: TfidfResult, output_dir: Path, top: int, seed: int, summary: dict) -> list[dict]:
    rows = top_rows(result, top)

    def write_csv(handle):
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow(row)  # floats as repr: they read back exactly

    files.write_atomic(output_dir / TOP_CSV, write_csv, binary=False)
    files.write_atomic(output_dir / SCORES_NPY, lambda handle: np.save(handle, result.score))
    png = word_cloud_png({row["kmer"]: row["score"] for row in rows}, seed=seed) if rows else None
    if png is not None:
        files.write_atomic(output_dir / WORDCLOUD_PNG, lambda handle: handle.write(png))
    files.write_atomic(output_dir / SUMMARY_JSON,
                       lambda handle: handle.write(json.dumps(summary, indent=2) + "\n"), binary=False)
    return rows


# ---- the `dnavec tfidf` command ------------------------------------------------------
def prep_settings(settings: TfidfSettings) -> PrepSettings:
    """Data-prep settings for the tokenization (defaults: data prep's; validated, errors one line)."""
    return PrepSettings.from_dict({
        "fasta": tuple(os.path.abspath(path) for path in settings.fasta), "chromosomes": settings.chromosomes,
        "k_min": settings.k_min, "k_max": settings.k_max, "seq_length": settings.seq_length, "seed": settings.seed,
        "min_contig_length": settings.min_contig_length,
        # Not used by tf-idf, but validated against seq_length.
        "max_predictions": min(PrepSettings.max_predictions, max(1, settings.seq_length - 2)),
        "mask_span": min(PrepSettings.mask_span, max(1, settings.seq_length - 2)),
    })


def run_tfidf(settings: TfidfSettings) -> int:
    prep = prep_settings(settings)
    fasta.check_fasta_paths(prep.fasta)  # before creating anything
    output_dir = files.check_outputs_in_dir(settings.output_dir, "--output_dir", OUTPUT_FILES, settings.overwrite)
    result = genome_tfidf(prep.fasta, prep, progress=sys.stderr.isatty())
    summary = {
        "formulas": {"tf": "count / tokens in document", "idf": "ln((1 + n) / (1 + df)) + 1",
                     "tfidf": "tf * idf, L2-normalised per document",
                     "score": "mean over documents of the normalised tf-idf"},
        "document": f"one data-prep example: up to seq_length - 2 = {prep.tokens_per_example} k-mer tokens",
        "settings": {key: prep.to_dict()[key] for key in
                     ("fasta", "chromosomes", "k_min", "k_max", "seq_length", "seed", "min_contig_length",
                      "soft_masked", "validation_fraction", "validation_block_size", "chunk_bases")},
        "records": result.records,
        "vocab_size": result.tokenizer.vocab_size,
        "num_documents": result.num_documents,
        "num_tokens": result.num_tokens,
        "distinct_kmers": int((result.df > 0).sum()),
        "bases": result.bases,
        "seconds": round(result.seconds, 3),
        "bases_per_second": result.bases_per_second,
        "top": settings.top,
    }
    rows = write_outputs(result, output_dir, settings.top, settings.seed, summary)
    best = ", ".join(f"{row['kmer']} ({row['score']:.4g})" for row in rows[:5])
    print(f"tf-idf of {len(result.records)} record(s): {result.num_documents:,} documents, "
          f"{result.num_tokens:,} tokens, {int((result.df > 0).sum()):,} distinct k-mers; top: {best}")
    print(f"wrote {', '.join(name for name in OUTPUT_FILES if (output_dir / name).exists())} to {output_dir}")
    print(f"throughput: {result.bases:,} bases in {result.seconds:.1f} s (two passes) = "
          f"{result.bases_per_second / 1e6:.2f} M bases/s")
    return 0
