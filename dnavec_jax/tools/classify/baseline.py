"""The k-mer baseline of `dnavec classify`: counts of every k-mer (L2-normalised or tf-idf) and a
logistic regression whose C is chosen on dev MCC; no pretraining (docs/classify.md).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import sparse
from sklearn.exceptions import ConvergenceWarning
from sklearn.feature_extraction.text import TfidfTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import normalize

from dnavec_jax.tokenization import BASE_CODES, KmerTokenizer, acgt_runs
from dnavec_jax.tools.classify.metrics import SELECT_METRIC, better, classification_metrics
from dnavec_jax.tools.classify.tables import SPLITS, Task

C_GRID = tuple(10.0**exponent for exponent in range(-3, 5))  # 1e-3 .. 1e4


def kmer_counts(sequences: Sequence[str], k_min: int, k_max: int):
    """Sparse (n, vocab) counts of every k-mer at every position, each k in k_min..k_max (columns: KmerTokenizer ids).

    Deterministic (all k at every position, not the model's random tokenization); k-mers never
    span an N or IUPAC letter.
    """
    tokenizer = KmerTokenizer(k_min, k_max)
    # Every position of every k bounds the non-zeros: arrays of that size are never copied to grow, and
    # their pages past the last non-zero are never touched, hence never resident (the matrix is the
    # baseline's data: 12 bytes a distinct k-mer of a sequence).
    capacity = sum(max(len(sequence) - k + 1, 0) for sequence in sequences for k in range(k_min, k_max + 1))
    indices, counts = np.empty(capacity, np.int32), np.empty(capacity, np.float64)
    indptr = np.zeros(len(sequences) + 1, np.int64)
    for row, sequence in enumerate(sequences):
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
        filled = indptr[row]
        indices[filled:filled + len(unique)] = unique
        counts[filled:filled + len(unique)] = count
        indptr[row + 1] = filled + len(unique)
    filled = indptr[-1]
    return sparse.csr_matrix((counts[:filled], indices[:filled], indptr), shape=(len(sequences), tokenizer.vocab_size))


def logistic_regression(features: dict[str, Any], labels: dict[str, np.ndarray], seed: int) -> dict[str, Any]:
    """Fits LogisticRegression on train for each C in C_GRID, keeps the best dev SELECT_METRIC.

    Returns {"dev": metrics, "test": metrics, "selected": {"C": ..., "dev_<metric>_by_C": ...},
    "probs": {"dev": (n, classes), "test": ...}} (probs: for predictions/*.csv, not for results.json).
    """
    best, by_c = None, {}
    for c in C_GRID:
        model = LogisticRegression(C=c, max_iter=2000, random_state=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(features["train"], labels["train"])
        dev = classification_metrics(labels["dev"], model.predict_proba(features["dev"]))
        by_c[f"{c:g}"] = round(dev[SELECT_METRIC], 6)
        if better(dev[SELECT_METRIC], best and best[1][SELECT_METRIC]):
            best = (c, dev, model)
    c, dev, model = best
    probs = {split: model.predict_proba(features[split]) for split in ("dev", "test")}
    test = classification_metrics(labels["test"], probs["test"])
    converged = bool(np.all(np.asarray(model.n_iter_) < model.max_iter))
    return {"dev": dev, "test": test,
            "selected": {"C": c, f"dev_{SELECT_METRIC}_by_C": by_c, "converged": converged}, "probs": probs}


def run_baseline(task: Task, k_range: tuple[int, int], tfidf: bool, seed: int) -> dict[str, Any]:
    counts = {split: kmer_counts(task.sequences(split), *k_range) for split in SPLITS}
    if tfidf:  # in place: one copy of the matrices
        transformer = TfidfTransformer().fit(counts["train"])  # smooth idf, L2 rows
        features = {split: transformer.transform(matrix, copy=False) for split, matrix in counts.items()}
    else:
        features = {split: normalize(matrix, copy=False) for split, matrix in counts.items()}
    result = logistic_regression(features, {split: task.labels(split) for split in SPLITS}, seed)
    result["selected"].update(k_min=k_range[0], k_max=k_range[1], tfidf=bool(tfidf))
    return result
