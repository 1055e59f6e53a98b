"""Masking: BERT rates, special tokens, span runs, and the overlap-leak figure on hand-built examples."""

import numpy as np
import pytest

from dnavec_jax.data.masking import MaskedBatch, Masker, leak_counts, leak_per_example
from dnavec_jax.tokenization import CLS_ID, MASK_ID, NUM_SPECIAL, PAD_ID, SEP_ID, UNK_ID, KmerTokenizer

TOKENIZER = KmerTokenizer(3, 8)
VOCAB = TOKENIZER.vocab_size


def random_examples(rng, rows, seq_length=512, short_every=7):
    """[CLS] k-mers [SEP] [PAD]...: full rows, every short_every-th row shorter; a stray [UNK] in some."""
    ids = rng.integers(NUM_SPECIAL, VOCAB, size=(rows, seq_length))
    num_tokens = np.full(rows, seq_length - 2)
    if short_every:
        num_tokens[::short_every] = rng.integers(1, seq_length - 2, size=len(num_tokens[::short_every]))
    ids[:, 0] = CLS_ID
    for row, n in enumerate(num_tokens):
        ids[row, n + 1] = SEP_ID
        ids[row, n + 2 :] = PAD_ID
    ids[1::5, 3] = UNK_ID
    return ids


def within(count, trials, p, sigmas=5.0):
    return abs(count - trials * p) <= sigmas * np.sqrt(trials * p * (1 - p))


@pytest.mark.parametrize("strategy", ["token", "span"])
def test_masking_rates_within_binomial_tolerance(strategy):
    rng = np.random.default_rng(0)
    ids = random_examples(rng, 3000)
    masker = Masker(VOCAB, 0.15, 77, strategy, span=6)
    batch = masker.mask(ids, rng)
    real = batch.masked_lm_weights > 0
    candidates = (ids >= NUM_SPECIAL).sum(axis=1)
    # Predictions per example follow BERT's rule exactly.
    expected = np.minimum(77, np.maximum(1, np.floor(candidates * 0.15 + 0.5)))
    assert (real.sum(axis=1) == expected).all()
    assert abs(real.sum() / candidates.sum() - 0.15) < 0.005
    # 80% [MASK], 10% random k-mer, 10% unchanged, each within binomial tolerance.
    rows, slots = np.nonzero(real)
    shown = batch.input_ids[rows, batch.masked_lm_positions[rows, slots]]
    labels = batch.masked_lm_ids[rows, slots]
    n = len(labels)
    assert within((shown == MASK_ID).sum(), n, 0.8)
    assert within(((shown != MASK_ID) & (shown != labels)).sum(), n, 0.1 * (1 - 1 / (VOCAB - NUM_SPECIAL)))
    assert within((shown == labels).sum(), n, 0.1)
    # Every k-mer position of the full rows is picked at the same rate (no edge or grid-phase bias).
    full = candidates == 510
    selected = masker.select(ids[full], np.random.default_rng(1))
    rate = 77 / 510
    per_position = selected[:, 1:511].sum(axis=0)
    assert all(within(count, full.sum(), rate, sigmas=5.5) for count in per_position)


def test_no_special_token_is_masked_or_drawn_as_replacement():
    rng = np.random.default_rng(1)
    ids = random_examples(rng, 2000)
    for strategy in ("token", "span"):
        batch = Masker(VOCAB, 0.15, 77, strategy, span=6).mask(ids, rng)
        real = batch.masked_lm_weights > 0
        rows, slots = np.nonzero(real)
        positions = batch.masked_lm_positions[rows, slots]
        assert (ids[rows, positions] >= NUM_SPECIAL).all()  # never [PAD]/[UNK]/[CLS]/[SEP]/[MASK]
        shown = batch.input_ids[rows, positions]
        assert ((shown == MASK_ID) | (shown >= NUM_SPECIAL)).all()  # replacements are k-mers
        special = ids < NUM_SPECIAL
        assert (batch.input_ids[special] == ids[special]).all()
        unselected = np.ones_like(ids, dtype=bool)
        unselected[rows, positions] = False
        assert (batch.input_ids[unselected] == ids[unselected]).all()
        # BERT layout: ascending positions, zero padding with weight 0.
        for row_positions, row_real in zip(batch.masked_lm_positions, real):
            assert (np.diff(row_positions[row_real]) > 0).all() and row_real[: row_real.sum()].all()
        assert (batch.masked_lm_positions[~real] == 0).all() and (batch.masked_lm_ids[~real] == 0).all()
        assert batch.masked_lm_weights.dtype == np.float32
        assert (batch.masked_lm_ids[rows, slots] == ids[rows, positions]).all()


def test_span_masking_masks_runs_of_consecutive_tokens():
    rng = np.random.default_rng(2)
    ids = random_examples(rng, 500, short_every=None)
    masker = Masker(VOCAB, 0.15, 77, "span", span=6)
    selected = masker.select(ids, rng)
    budgets = masker.num_predictions((ids >= NUM_SPECIAL).sum(axis=1))
    for row, budget in zip(selected, budgets):
        edges = np.diff(np.concatenate([[0], row.astype(np.int8), [0]]))
        lengths = np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)
        # Runs of 6 (or touching runs: multiples of 6); only grid cuts at the ends and the budget
        # cut make shorter ones.
        assert lengths.sum() == budget
        assert (lengths % 6 != 0).sum() <= 4  # the [UNK] of some rows can split one more run
    token_runs = Masker(VOCAB, 0.15, 77, "token").select(ids, np.random.default_rng(3))
    assert token_runs.sum() == selected.sum()


def test_masker_is_seeded_by_its_generator():
    ids = random_examples(np.random.default_rng(4), 50)
    masker = Masker(VOCAB, 0.15, 77, "span", 6)
    first = masker.mask(ids, np.random.default_rng(7))
    again = masker.mask(ids, np.random.default_rng(7))
    other = masker.mask(ids, np.random.default_rng(8))
    assert all((getattr(first, f) == getattr(again, f)).all() for f in MaskedBatch.__dataclass_fields__)
    assert not (first.input_ids == other.input_ids).all()


def _batch(true_ids, shown, positions):
    """A hand-built MaskedBatch: `shown` maps position -> id the model sees there."""
    input_ids = np.array(true_ids)[None, :].copy()
    for position, token in shown.items():
        input_ids[0, position] = token
    width = 8
    pos = np.zeros((1, width), np.int64)
    pos[0, : len(positions)] = positions
    weights = np.zeros((1, width), np.float32)
    weights[0, : len(positions)] = 1
    labels = np.where(weights > 0, np.array(true_ids)[pos], 0)
    return MaskedBatch(input_ids, pos, labels, weights)


def kmer_ids(sequence, ks):
    from dnavec_jax.tokenization import sequence_to_codes

    return TOKENIZER.encode_contig_codes(sequence_to_codes(sequence), np.array(ks)).tolist()


def test_leak_figure_on_hand_built_examples():
    lengths = TOKENIZER.kmer_lengths()
    sequence = "ACGTTGCAAGGCTTACGATCGA"  # 22 bases -> 20 3-mers
    # All 3-mers; the token at example position p covers bases p..p+2 (position = base offset).
    tokens = kmer_ids(sequence, [3] * len(sequence))
    true_ids = [CLS_ID] + tokens + [SEP_ID]

    def leak(ids, shown, positions):
        return leak_counts([ids], _batch(ids, shown, positions), lengths)

    # One masked 3-mer: its neighbours 5 (5..7) and 7 (7..9) show bases 6, 7, 8 -> leaked.
    assert leak(true_ids, {6: MASK_ID}, [6]) == (1, 1)
    # k-1 = 2 consecutive masks still leak; k = 3 do not (base 12 is then in masked tokens only).
    assert leak(true_ids, {10: MASK_ID, 11: MASK_ID}, [10, 11]) == (2, 2)
    assert leak(true_ids, {10: MASK_ID, 11: MASK_ID, 12: MASK_ID}, [10, 11, 12]) == (0, 3)
    # A random replacement shows wrong bases and covers nothing; a token kept unchanged covers
    # its neighbours' bases but never its own.
    wrong = tokens[0] if tokens[0] != true_ids[15] else tokens[1]
    assert leak(true_ids, {14: MASK_ID, 15: wrong, 16: MASK_ID}, [14, 15, 16]) == (0, 3)
    assert leak(true_ids, {14: MASK_ID, 16: MASK_ID}, [14, 15, 16]) == (2, 3)  # 15 kept: 14, 16 leak
    assert leak(true_ids, {}, [1]) == (0, 1)  # first k-mer kept: base 1 is in no other token
    assert leak(true_ids, {}, [6]) == (1, 1)

    # Mixed k: an 8-mer at position 4 (bases 4..11) among 3-mers.
    ks = [3] * len(sequence)
    ks[3] = 8
    mixed = [CLS_ID] + kmer_ids(sequence, ks) + [SEP_ID]
    assert TOKENIZER.ids_to_kmer_lengths(np.array(mixed[1:-1]))[3] == 8
    assert leak(mixed, {4: MASK_ID}, [4]) == (1, 1)  # 3 shows 4..5, then 5..11 shows the rest
    assert leak(mixed, {4: MASK_ID, 5: MASK_ID}, [4, 5]) == (2, 2)  # 3 and 6.. still cover 4..11
    # Masking 2, 3, 4 hides base 4 (tokens 2, 3, 4 only): none of the three leaks.
    leaked, predicted = leak_per_example([mixed], _batch(mixed, {2: MASK_ID, 3: MASK_ID, 4: MASK_ID}, [2, 3, 4]),
                                         lengths)
    assert (leaked.tolist(), predicted.tolist()) == ([0], [3])
