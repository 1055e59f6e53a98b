"""BERT masked-LM masking for k-mer examples, and the overlap-leak measurement. Pure numpy.

Masker picks the predictions per example (token: a random subset; span: runs of `span` tokens),
only among k-mer tokens, and replaces them 80/10/10 ([MASK] / a random k-mer / kept), with outputs
laid out as google-research/bert's. leak_counts counts the predictions whose every base the model
still sees in other, truthful tokens. docs/data.md ("Masking and the leak figure") has the rules
and the measured leak per strategy.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from dnavec_jax.tokenization import MASK_ID, NUM_SPECIAL

MASK_TOKEN_FRACTION = 0.8
RANDOM_TOKEN_FRACTION = 0.1


@dataclasses.dataclass(frozen=True)
class MaskedBatch:
    input_ids: np.ndarray  # (n, seq_length) int64, after masking
    masked_lm_positions: np.ndarray  # (n, max_predictions) int64, ascending, 0-padded
    masked_lm_ids: np.ndarray  # (n, max_predictions) int64, original ids, 0-padded
    masked_lm_weights: np.ndarray  # (n, max_predictions) float32, 1.0 for real predictions


@dataclasses.dataclass(frozen=True)
class Masker:
    """BERT-style masker over a vocabulary whose ids >= NUM_SPECIAL are k-mers."""

    vocab_size: int
    mask_rate: float = 0.15
    max_predictions: int = 77
    strategy: str = "token"  # "token" | "span"
    span: int = 6  # run length for "span"

    def __post_init__(self):
        if self.strategy not in ("token", "span"):
            raise ValueError(f"mask strategy must be 'token' or 'span', got {self.strategy!r}")
        if not 0.0 < self.mask_rate < 1.0:
            raise ValueError(f"mask_rate must lie strictly between 0 and 1, got {self.mask_rate}")
        if self.span < 1 or self.max_predictions < 1 or self.vocab_size <= NUM_SPECIAL:
            raise ValueError("span and max_predictions must be positive and the vocabulary must hold k-mers")

    @property
    def run_length(self) -> int:
        return self.span if self.strategy == "span" else 1

    def num_predictions(self, num_candidates: np.ndarray) -> np.ndarray:
        """Predictions per example for the given numbers of k-mer tokens (BERT's rounding, half up)."""
        num_candidates = np.asarray(num_candidates, dtype=np.int64)
        budget = np.floor(num_candidates * self.mask_rate + 0.5).astype(np.int64)
        budget = np.minimum(self.max_predictions, np.maximum(1, budget))
        return np.where(num_candidates > 0, np.minimum(budget, num_candidates), 0)

    def select_positions(self, ids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """(n, max_predictions) positions to predict, ascending; unused slots hold seq_length."""
        ids = np.asarray(ids)
        rows, length = ids.shape
        candidate = ids >= NUM_SPECIAL
        budget = self.num_predictions(candidate.sum(axis=1))
        run = self.run_length
        # Every position belongs to one run of a grid shifted by a random phase;
        # the runs of a row get a random order (a permutation: no ties), and
        # positions are taken run by run in that order. A stable sort on the
        # small-integer run rank (numpy's radix sort) keeps each run's
        # positions together and ascending, so the last run taken is cut to a prefix.
        num_runs = (length + run - 1) // run + 1
        rank_type = np.uint16 if num_runs < np.iinfo(np.uint16).max else np.uint32
        phase = rng.integers(0, run, size=(rows, 1))
        run_of_position = (np.arange(length)[None, :] + phase) // run
        run_rank = rng.permuted(np.tile(np.arange(num_runs, dtype=rank_type), (rows, 1)), axis=1)
        key = np.take_along_axis(run_rank, run_of_position, axis=1)
        key[~candidate] = num_runs  # after every candidate
        width = self.max_predictions
        taken = np.argsort(key, axis=1, kind="stable")[:, :width]
        if taken.shape[1] < width:
            taken = np.pad(taken, ((0, 0), (0, width - taken.shape[1])))
        taken = np.where(np.arange(width)[None, :] < budget[:, None], taken, length)
        return np.sort(taken, axis=1)

    def select(self, ids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Boolean (n, seq_length) array of the positions to predict."""
        ids = np.asarray(ids)
        positions = self.select_positions(ids, rng)
        selected = np.zeros((ids.shape[0], ids.shape[1] + 1), dtype=bool)
        np.put_along_axis(selected, positions, True, axis=1)
        return selected[:, :-1]

    def mask(self, ids: np.ndarray, rng: np.random.Generator) -> MaskedBatch:
        """Masks a batch of examples ([CLS] k-mers [SEP] [PAD]...) and returns BERT's features."""
        ids = np.asarray(ids, dtype=np.int64)
        rows, length = ids.shape
        width = self.max_predictions
        positions = self.select_positions(ids, rng)
        real = positions < length
        positions = np.where(real, positions, 0)
        labels = np.where(real, np.take_along_axis(ids, positions, axis=1), 0)
        # Fixed-shape draws (one per slot) keep the random stream independent of the data.
        choice = rng.random((rows, width))
        random_ids = rng.integers(NUM_SPECIAL, self.vocab_size, size=(rows, width), dtype=np.int64)
        replacement = np.where(
            choice < MASK_TOKEN_FRACTION, MASK_ID,
            np.where(choice < MASK_TOKEN_FRACTION + RANDOM_TOKEN_FRACTION, random_ids, labels),
        )
        input_ids = ids.copy()
        row_index, slot = np.nonzero(real)
        input_ids[row_index, positions[row_index, slot]] = replacement[row_index, slot]
        return MaskedBatch(input_ids, positions.astype(np.int64), labels.astype(np.int64), real.astype(np.float32))


def leak_counts(true_ids: np.ndarray, batch: MaskedBatch, kmer_lengths: np.ndarray) -> tuple[int, int]:
    """(leaked predictions, predictions) over the batch; see leak_per_example."""
    leaked, predicted = leak_per_example(true_ids, batch, kmer_lengths)
    return int(leaked.sum()), int(predicted.sum())


def leak_per_example(true_ids: np.ndarray, batch: MaskedBatch, kmer_lengths: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Per example: (leaked predictions, predictions), a leaked prediction being one whose
    bases all show in other visible tokens.

    Args:
      true_ids: (n, seq_length) ids before masking; token position = base offset.
      batch: the masked batch.
      kmer_lengths: length of each vocabulary entry (0 for special tokens),
        e.g. KmerTokenizer.kmer_lengths().
    """
    true_ids = np.asarray(true_ids, dtype=np.int64)
    rows, length = true_ids.shape
    lengths = np.asarray(kmer_lengths, dtype=np.int8)[true_ids]  # (n, L); 0 for special tokens
    max_k = int(lengths.max(initial=0))
    visible = (batch.input_ids == true_ids) & (lengths > 0)
    visible_length = np.where(visible, lengths, 0).astype(np.int8)
    # coverage[b] = number of visible tokens over base b: token j covers base j + d iff k_j > d.
    coverage = np.zeros((rows, length + max_k), dtype=np.int8)
    for d in range(max_k):
        coverage[:, d : d + length] += visible_length > d
    positions = batch.masked_lm_positions
    real = batch.masked_lm_weights > 0
    k = np.take_along_axis(lengths, positions, axis=1)
    itself = np.take_along_axis(visible, positions, axis=1)  # a token kept unchanged covers itself
    offsets = np.arange(max(max_k, 1))
    bases = positions[:, :, None] + offsets[None, None, :]
    cover = np.take_along_axis(coverage, bases.reshape(rows, -1), axis=1).reshape(bases.shape)
    covered_by_others = cover > itself[:, :, None]
    in_token = offsets[None, None, :] < k[:, :, None]
    leaked = np.all(covered_by_others | ~in_token, axis=2) & real & (k > 0)
    return leaked.sum(axis=1), real.sum(axis=1)
