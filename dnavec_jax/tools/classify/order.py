"""A task that needs order beyond 6-mers: real held-out DNA against 5th-order Markov chains fitted on the
pretraining run's training DNA (scripts/make_order_task.py; docs/classify.md).

A 5th-order chain reproduces the 6-mer frequencies (and every shorter k-mer's) of the DNA it was fitted
on. One chain for the whole genome is not enough to hide the classes from a bag of k-mers: real windows
are a mixture (GC-rich and AT-rich regions, repeats on either strand), so their composition varies from
window to window far more than one chain's samples do, and an L2-normalised k-mer baseline read that
variance (test AUROC 0.84 on the demo corpus, measured). So the chain is stratified and matched: one
chain per GC quartile of the training windows, and each label-0 sequence is paired with a label-1
window, drawn from the chain of that window's quartile, and redrawn until each of its four base counts
lies within MATCH_BASES of the window's. The pairs then share their base composition, and 2- to 6-mers
follow the genome's statistics at that composition; what is left to tell real DNA from the chain is
longer structure (repeat families, 7-mers and up).
"""

from __future__ import annotations

import os

import numpy as np

from dnavec_jax.data.settings import PrepSettings
from dnavec_jax.errors import DNAVecError
from dnavec_jax.tokenization import BASE_CODES
from dnavec_jax.tools.classify.held_out import check_pretraining, held_out_windows, training_runs
from dnavec_jax.tools.classify.motif import split_bounds

ORDER = 5  # the chain's context: 5 bases, so it matches the 6-mer counts
PSEUDOCOUNT = 0.5  # per transition: a context never seen in training still has a distribution
STRATA = 4  # GC quantiles of the training windows, one chain each
MATCH_BASES = 2  # a label-0 sequence's count of each base lies within this of its label-1 window's
BATCH = 4096  # chain samples drawn at a time per stratum
ROUNDS = 100  # batches per stratum before a window counts as unmatched (and is replaced by another)


def kmer_codes(codes: np.ndarray, k: int) -> np.ndarray:
    """Rolling 2-bit codes of every k-mer of a run of base codes (0..3): int64, len(codes) - k + 1 of them."""
    if len(codes) < k:
        return np.zeros(0, np.int64)
    windows = np.lib.stride_tricks.sliding_window_view(codes.astype(np.int64), k)
    return windows @ (4 ** np.arange(k - 1, -1, -1, dtype=np.int64))


def base_counts(codes: np.ndarray) -> np.ndarray:
    """(..., 4) counts of A, C, G, T along the last axis of base codes (0..3)."""
    return np.stack([(codes == base).sum(-1) for base in range(4)], axis=-1)


class MarkovChain:
    """P(next base | the ORDER bases before it), fitted from (ORDER + 1)-mer counts."""

    def __init__(self, counts: np.ndarray):
        counts = np.asarray(counts, np.float64).reshape(4 ** ORDER, 4)
        if not counts.sum():
            raise DNAVecError(f"no A/C/G/T run of {ORDER + 1} or more bases to fit a Markov chain on")
        self.start = counts.sum(1) / counts.sum()  # the ORDER-mer distribution a sequence starts from
        transitions = counts + PSEUDOCOUNT
        cumulative = np.cumsum(transitions / transitions.sum(1, keepdims=True), axis=1)
        self.thresholds = [np.ascontiguousarray(cumulative[:, i]) for i in range(3)]  # P(base <= i | context)

    @classmethod
    def fit(cls, runs) -> MarkovChain:
        """From base-code runs: the counts of every (ORDER + 1)-mer inside a run."""
        counts = np.zeros(4 ** (ORDER + 1), np.int64)
        for codes in runs:
            counts += np.bincount(kmer_codes(codes, ORDER + 1), minlength=4 ** (ORDER + 1))
        return cls(counts)

    def sample(self, count: int, length: int, rng: np.random.Generator) -> np.ndarray:
        """(count, length) base codes: a start ORDER-mer from its frequency, then one base at a time."""
        context = rng.choice(4 ** ORDER, size=count, p=self.start)
        codes = np.empty((count, length), np.uint8)
        codes[:, :ORDER] = (context[:, None] >> (2 * np.arange(ORDER - 1, -1, -1))) & 3
        for position in range(ORDER, length):
            draw = rng.random(count)
            base = sum((draw > threshold[context]).astype(np.int64) for threshold in self.thresholds)
            codes[:, position] = base
            context = ((context << 2) | base) & (4 ** ORDER - 1)
        return codes


class StratifiedChains:
    """One MarkovChain per GC quantile (STRATA) of the non-overlapping `length`-base windows of `runs`."""

    def __init__(self, runs, length: int):
        windows = [run[at:at + length] for run in runs for at in range(0, len(run) - length + 1, length)]
        if len(windows) < STRATA:
            raise DNAVecError(f"the training blocks hold {len(windows)} A/C/G/T windows of {length} bases; "
                              f"the order task needs at least {STRATA}")
        windows = np.stack(windows)
        gc = base_counts(windows)[:, 1:3].sum(1)
        self.edges = np.quantile(gc, np.arange(1, STRATA) / STRATA)
        strata = self.stratum(gc)
        self.chains = [MarkovChain.fit(windows[strata == s]) for s in range(STRATA)]

    def stratum(self, gc: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.edges, gc, side="right")

    def matched(self, targets: np.ndarray, rng: np.random.Generator) -> list[np.ndarray | None]:
        """Per target window (base codes, one length), a chain sample of its stratum whose base counts lie
        within MATCH_BASES of the target's; None where ROUNDS batches found none."""
        wanted = base_counts(targets)
        strata = self.stratum(wanted[:, 1:3].sum(1))
        found: list[np.ndarray | None] = [None] * len(targets)
        for stratum in range(STRATA):
            open_rows = list(np.flatnonzero(strata == stratum))
            for _ in range(ROUNDS):
                if not open_rows:
                    break
                batch = self.chains[stratum].sample(BATCH, targets.shape[1], rng)
                fits = np.abs(base_counts(batch)[None] - wanted[open_rows][:, None]).max(-1) <= MATCH_BASES
                used = np.zeros(BATCH, bool)
                for slot, row in enumerate(open_rows):
                    candidates = np.flatnonzero(fits[slot] & ~used)
                    if len(candidates):
                        used[candidates[0]] = True
                        found[row] = batch[candidates[0]]
                open_rows = [row for row in open_rows if found[row] is None]
        return found


def _text(codes: np.ndarray) -> str:
    return np.frombuffer(b"ACGT", np.uint8)[codes].tobytes().decode("ascii")


def order_task(fasta: str | os.PathLike, *, pretraining: PrepSettings, num_windows: int = 300, length: int = 150,
               seed: int = 0, fractions: tuple[float, float] = (0.7, 0.15)) -> dict[str, list[tuple[str, int]]]:
    """{split: [(sequence, label), ...]}: label 1 `num_windows` held-out windows of the run (held_out_windows,
    in a seeded order), label 0 each one's matched chain sample (StratifiedChains.matched, fitted on the
    run's training blocks); a window without a match within ROUNDS batches is replaced by the next one.
    Both rows of a pair go to the same split (by `fractions`); rows are shuffled within a split.
    Deterministic in `seed`."""
    check_pretraining(pretraining)
    if length <= ORDER:
        raise DNAVecError(f"--length must exceed the chain's order ({ORDER}), got {length}")
    rng = np.random.default_rng(seed)
    tiles = [text for _, _, text in held_out_windows(fasta, length, pretraining)]
    if len(tiles) < num_windows:
        raise DNAVecError(f"{fasta}: only {len(tiles)} windows of {length} A/C/G/T bases in the validation blocks "
                          f"(validation_fraction {pretraining.validation_fraction}, validation_block_size "
                          f"{pretraining.validation_block_size:,}), {num_windows} asked for")
    chains = StratifiedChains(list(training_runs(fasta, pretraining)), length)
    queue = list(rng.permutation(len(tiles)))
    pairs: list[tuple[str, str]] = []
    while len(pairs) < num_windows and queue:
        chosen, queue = queue[:num_windows - len(pairs)], queue[num_windows - len(pairs):]
        targets = np.stack([BASE_CODES[np.frombuffer(tiles[i].encode("ascii"), np.uint8)] for i in chosen])
        pairs += [(tiles[i], _text(match)) for i, match in zip(chosen, chains.matched(targets, rng))
                  if match is not None]
    if len(pairs) < num_windows:
        raise DNAVecError(f"{fasta}: only {len(pairs)} held-out windows of {length} bases have a composition the "
                          f"chains reach; {num_windows} asked for")
    task = {}
    for split, (lo, hi) in split_bounds(num_windows, fractions).items():
        rows = [row for real, generated in pairs[lo:hi] for row in ((real, 1), (generated, 0))]
        task[split] = [rows[i] for i in rng.permutation(len(rows))]
    return task
