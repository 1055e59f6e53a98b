"""Label-efficiency curves of `dnavec classify --train_sizes` (docs/classify.md): nested, class-stratified
train subsamples, the paired bootstrap of pretrained minus random-init test AUROC, label_efficiency.csv and
its figure. The runs themselves are command.run_curves'.
"""

from __future__ import annotations

import csv
import dataclasses
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import rankdata

from dnavec_jax.errors import DNAVecError
from dnavec_jax.tools.classify.tables import Task

CSV_FILE = "label_efficiency.csv"
FIGURE_FILE = "label_efficiency.png"
COLUMNS = ("train_size", "method", "pretrained_auroc", "random_init_auroc", "difference", "ci_low", "ci_high",
           "kmer_baseline_auroc")
BOOTSTRAP_SAMPLES = 2000
CONFIDENCE = 0.95


def nested_order(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A permutation of the train rows whose every prefix holds each class in about its share: the subsample
    of size n is the first n rows, so the subsamples of one draw are nested.

    Each class's rows, in a random order, get keys (i + u) / count at i = 0, 1, ... (u uniform, one per
    class); sorting all keys interleaves the classes in proportion.
    """
    labels = np.asarray(labels)
    keys = np.empty(len(labels))
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        keys[rows[rng.permutation(len(rows))]] = (np.arange(len(rows)) + rng.random()) / len(rows)
    return np.argsort(keys, kind="stable")


def check_sizes(sizes: Sequence[int], labels: np.ndarray, classes: Sequence[str]) -> None:
    """Every size fits the train split and leaves at least 2 rows of each class in any draw (one-line errors)."""
    counts = np.bincount(labels, minlength=len(classes))
    if max(sizes) > len(labels):
        raise DNAVecError(f"--train_sizes {max(sizes)}: the train split has only {len(labels)} rows")
    for size in sizes:
        smallest = int(np.floor(size * counts.min() / len(labels)))  # a stratified prefix holds at least this
        if smallest < 2:
            label = classes[int(counts.argmin())]
            raise DNAVecError(f"--train_sizes {size}: too few rows for class {label!r} ({counts.min()} of "
                              f"{len(labels)} train rows); use sizes of at least "
                              f"{int(np.ceil(2 * len(labels) / counts.min()))}")


def subsample(task: Task, rows: np.ndarray) -> Task:
    """`task` with its train split cut to `rows` (in that order); dev and test unchanged."""
    train = task.splits["train"]
    rows = [int(row) for row in rows]
    cut = dataclasses.replace(train, sequences=[train.sequences[i] for i in rows],
                              labels=[train.labels[i] for i in rows], lines=[train.lines[i] for i in rows],
                              rows=[train.rows[i] for i in rows] if train.rows else [])
    return dataclasses.replace(task, splits={**task.splits, "train": cut})


def auroc_rows(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Test AUROC of each resample at once: labels (b, n), probs (b, n, classes) -> (b,).

    metrics.classification_metrics' AUROC (of class 1 for two classes, one-vs-rest macro average for more),
    computed as the Mann-Whitney U of average ranks so that thousands of resamples take one call; it equals
    scikit-learn's roc_auc_score (tests/test_classify.py checks it). Every class must be in every row.
    """
    classes = probs.shape[-1]
    scored = [1] if classes == 2 else range(classes)
    result = np.zeros(labels.shape[0])
    for label in scored:
        positive = labels == label
        ranks = rankdata(probs[..., label], axis=-1)
        n_pos = positive.sum(-1)
        n_neg = labels.shape[-1] - n_pos
        result += ((ranks * positive).sum(-1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return result / len(scored)


def paired_bootstrap(labels: np.ndarray, pretrained: Sequence[np.ndarray], random_init: Sequence[np.ndarray],
                     seed: int, samples: int = BOOTSTRAP_SAMPLES) -> tuple[float, float]:
    """The CONFIDENCE percentile interval of mean-over-draws (pretrained - random init) test AUROC.

    pretrained[d], random_init[d]: (n, classes) test probabilities of draw d. Each resample draws the draws
    with replacement and the test rows with replacement within each class (so every class stays in), and
    uses the same draws and rows for both models: the pairing removes what the two share (which rows are
    hard, which subsample was lucky) from the interval.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    draws = rng.integers(len(pretrained), size=(samples, len(pretrained)))
    by_class = [np.flatnonzero(labels == label) for label in np.unique(labels)]
    rows = np.concatenate([rows[rng.integers(len(rows), size=(samples, len(rows)))] for rows in by_class], axis=1)
    resampled = labels[rows]
    difference = np.zeros(samples)
    for d in range(len(pretrained)):
        weight = (draws == d).sum(1) / draws.shape[1]  # how often draw d is in each resample
        if weight.any():
            gap = auroc_rows(resampled, np.asarray(pretrained[d])[rows]) - auroc_rows(
                resampled, np.asarray(random_init[d])[rows])
            difference += weight * gap
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = np.percentile(difference, [tail, 100 - tail])
    return float(low), float(high)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:.6f}" if isinstance(value, float) else str(value)


def csv_text(rows: Sequence[dict[str, Any]]) -> str:
    """label_efficiency.csv: COLUMNS, one row per (train size, method); an empty cell where a value is missing."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows([_cell(row[column]) for column in COLUMNS] for row in rows)
    return out.getvalue()


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """The curve rows as a Markdown table (what `dnavec classify --train_sizes` prints)."""
    lines = ["| train size | method | pretrained AUROC | random-init AUROC | difference [95% CI] | k-mer baseline |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        baseline = "-" if row["kmer_baseline_auroc"] is None else f"{row['kmer_baseline_auroc']:.3f}"
        lines.append(f"| {row['train_size']} | {row['method']} | {row['pretrained_auroc']:.3f} | "
                     f"{row['random_init_auroc']:.3f} | {row['difference']:+.3f} [{row['ci_low']:+.3f}, "
                     f"{row['ci_high']:+.3f}] | {baseline} |")
    return "\n".join(lines)


def figure_png(rows: Sequence[dict[str, Any]], title: str) -> bytes:
    """PNG bytes (matplotlib's Agg canvas, no pyplot). Left: test AUROC against train size, pretrained solid,
    random-init twin dashed, the k-mer baseline black; right: pretrained - random init with its interval."""
    from matplotlib import rcParams
    from matplotlib.figure import Figure

    methods = list(dict.fromkeys(row["method"] for row in rows))
    sizes_all = sorted({row["train_size"] for row in rows})
    figure = Figure(figsize=(11, 4.2), layout="constrained")
    curves, gaps = figure.subplots(1, 2)
    colours = rcParams["axes.prop_cycle"].by_key()["color"]
    for index, method in enumerate(methods):
        mine = [row for row in rows if row["method"] == method]
        sizes = np.array([row["train_size"] for row in mine], float)
        colour = colours[index % len(colours)]
        curves.plot(sizes, [row["pretrained_auroc"] for row in mine], "o-", color=colour, label=method)
        curves.plot(sizes, [row["random_init_auroc"] for row in mine], "o--", color=colour, alpha=0.6)
        middle = np.array([row["difference"] for row in mine])
        error = np.array([middle - [row["ci_low"] for row in mine], [row["ci_high"] for row in mine] - middle])
        offset = 1 + 0.04 * (index - (len(methods) - 1) / 2)  # side by side on the log axis
        gaps.errorbar(sizes * offset, middle, yerr=error, fmt="o-", color=colour, capsize=3, label=method)
    baseline = {row["train_size"]: row["kmer_baseline_auroc"] for row in rows if row["kmer_baseline_auroc"] is not None}
    if baseline:
        curves.plot(list(baseline), list(baseline.values()), "s-", color="black", label="k-mer baseline")
    curves.plot([], [], "k--", alpha=0.6, label="random-init twin: dashed")
    curves.set(xscale="log", xlabel="train rows", ylabel="test AUROC (mean over draws)", title=title)
    curves.legend(fontsize=7)
    gaps.axhline(0, color="grey", lw=0.8)
    gaps.axhline(0.05, color="grey", lw=0.8, ls=":")
    gaps.set(xscale="log", xlabel="train rows", ylabel="pretrained - random init, 95% CI",
             title="what pretraining adds")
    gaps.legend(fontsize=7)
    for axis in (curves, gaps):
        axis.set_xticks(sizes_all, [str(size) for size in sizes_all])
        axis.minorticks_off()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()
