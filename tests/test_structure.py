"""The structure figures on inputs with known answers: the copy probe, the neighbour and attention figures,
the held-out examples, and the report end to end on a fresh model (all near chance there)."""

from __future__ import annotations

import itertools

import jax
import numpy as np
import pytest

from dnavec_jax import model as M
from dnavec_jax.data import PrepSettings
from dnavec_jax.data.masking import MaskedBatch, leak_per_example
from dnavec_jax.tokenization import CLS_ID, MASK_ID, NUM_SPECIAL, PAD_ID, SEP_ID, KmerTokenizer
from dnavec_jax.tools import structure
from dnavec_jax.training import objective


def _examples(tokenizer: KmerTokenizer, rows: int, seq_length: int, seed: int = 0):
    """[CLS] k-mers [SEP] [PAD]... of random DNA, each row a different number of k-mers; and the bases."""
    rng = np.random.default_rng(seed)
    ids = np.zeros((rows, seq_length), np.int64)
    bases = rng.integers(0, 4, size=(rows, seq_length + tokenizer.k_max)).astype(np.uint8)
    for row in range(rows):
        tokens = int(rng.integers(seq_length // 2, seq_length - 1))
        ids[row, 1:tokens + 1] = tokenizer.encode_contig_codes(bases[row], tokenizer.sample_k(len(bases[row]), rng))[
            :tokens]
        ids[row, 0], ids[row, tokens + 1] = CLS_ID, SEP_ID
    return ids, bases


def test_copy_probe_masks_isolated_tokens_whose_bases_all_show():
    tokenizer = KmerTokenizer(3, 6)
    ids, _ = _examples(tokenizer, rows=64, seq_length=128)
    ids[-1] = PAD_ID  # a padding row: no probe
    lengths = tokenizer.kmer_lengths()
    probe = objective.copy_probe_batch(ids, lengths, max_predictions=20, seed=3)
    real = probe["masked_lm_weights"] > 0
    positions = probe["masked_lm_positions"]
    assert real[:-1].sum(axis=1).min() >= 8 and not real[-1].any()
    rows, slots = np.nonzero(real)
    assert np.all(probe["input_ids"][rows, positions[rows, slots]] == MASK_ID)
    assert np.array_equal(probe["masked_lm_ids"][rows, slots], ids[rows, positions[rows, slots]])
    assert (probe["input_ids"] == MASK_ID).sum() == real.sum()  # nothing else is masked
    assert np.array_equal(probe["input_mask"], (ids != PAD_ID).astype(np.int32))
    assert min(np.diff(row[keep]).min() for row, keep in zip(positions[:-1], real[:-1])) >= tokenizer.k_max
    # Every probed token can be read off its visible neighbours: data prep's leak count says all leak.
    batch = MaskedBatch(probe["input_ids"].astype(np.int64), positions.astype(np.int64),
                        probe["masked_lm_ids"].astype(np.int64), probe["masked_lm_weights"])
    leaked, predicted = leak_per_example(ids, batch, lengths.astype(np.int8))
    assert np.array_equal(leaked, predicted) and predicted.sum() == real.sum()
    # unmask undoes a masking: the batches the trainer's eval reads give back their true ids.
    masked = dict(probe, input_ids=probe["input_ids"])
    assert np.array_equal(objective.unmask(masked), ids)


def test_a_perfect_copier_reaches_the_copy_ceiling():
    """Logits that know every base but not k (the same score for each length's candidate): full-vocabulary
    accuracy is the ceiling max P(k) (ties go to the lowest id, the shortest k-mer), given k it is 1."""
    tokenizer = KmerTokenizer(3, 6)
    ids, bases = _examples(tokenizer, rows=200, seq_length=128, seed=1)
    probe = objective.copy_probe_batch(ids, tokenizer.kmer_lengths(), max_predictions=20)
    positions = probe["masked_lm_positions"]
    logits = np.zeros((*positions.shape, tokenizer.vocab_size), np.float32)
    for row, slot in zip(*np.nonzero(probe["masked_lm_weights"])):
        start = positions[row, slot] - 1  # the token at position p starts at base p - 1
        for k in range(tokenizer.k_min, tokenizer.k_max + 1):
            code = int("".join(str(b) for b in bases[row, start:start + k]), 4)
            logits[row, slot, tokenizer.kmer_offset(k) + code] = 5.0
    sums = jax.device_get(objective.eval_sums(logits, probe["masked_lm_ids"], probe["masked_lm_weights"],
                                              tokenizer.kmer_lengths(), "vocabulary"))
    weight = float(sums["weight"])
    assert float(sums["correct_given_k"]) == weight
    accuracy = float(sums["correct"]) / weight
    assert accuracy == pytest.approx(objective.copy_ceiling(tokenizer, "vocabulary").accuracy, abs=0.02)


def test_neighbour_figure_on_constructed_vectors():
    tokenizer = KmerTokenizer(3, 5)
    rng = np.random.default_rng(0)
    # Every k-mer of 4 or more bases sits at the vector of its first 4 bases (plus a little noise): the
    # nearest neighbours of a 5-mer are the 5-mers and the 4-mer of the same prefix, so all share it.
    vectors = rng.normal(size=(tokenizer.vocab_size, 300))
    prefix = np.eye(256)
    for k in (4, 5):
        codes = np.arange(4**k)
        vectors[tokenizer.kmer_offset(k) + codes, :256] = 10 * prefix[codes >> (2 * (k - 4))]
    figure = structure.neighbour_figure(vectors, tokenizer, k=5, top=3)
    assert figure.neighbours == 1.0 and figure.k == 5
    # The random share, counted by hand with strings.
    vocab = tokenizer.vocab
    kmers = vocab[NUM_SPECIAL:]
    fours = [{kmer[i:i + 4] for i in range(len(kmer) - 3)} for kmer in kmers]
    queries = [i for i, kmer in enumerate(kmers) if len(kmer) == 5]
    shared = sum(len(fours[q] & fours[c]) > 0 for q in queries for c in range(len(kmers)) if c != q)
    assert figure.random == pytest.approx(shared / (len(queries) * (len(kmers) - 1)), rel=1e-12)
    assert figure.ratio == pytest.approx(1.0 / figure.random)
    # Random vectors: neighbours share no more often than anything else.
    chance = structure.neighbour_figure(rng.normal(size=(tokenizer.vocab_size, 64)), tokenizer, k=5, top=10)
    assert 0.7 < chance.ratio < 1.3


def test_attention_figure_on_constructed_attention():
    tokenizer = KmerTokenizer(3, 3)  # every token covers 3 bases: its overlapping k-mers are j-2..j+2
    lengths = tokenizer.kmer_lengths()
    ids = np.full((1, 10), PAD_ID)
    ids[0, 0], ids[0, 1:8], ids[0, 8] = CLS_ID, NUM_SPECIAL, SEP_ID  # 7 k-mers at 1..7, 9 real keys
    mask = (ids != PAD_ID).astype(np.int32)
    neighbours = np.asarray(structure.overlap_neighbours(ids, mask, lengths))[0]
    for j in range(1, 8):
        expected = [key for key in range(1, 8) if key != j and abs(key - j) <= 2]
        assert np.flatnonzero(neighbours[j]).tolist() == expected
    assert not neighbours[[0, 8, 9]].any()
    queries = (lengths[ids] > 0).astype(np.float32)
    uniform_probs = np.where(mask[:, None, None, :] > 0, 1.0 / mask.sum(), 0.0) * np.ones((1, 1, 2, 10, 10))
    previous = np.zeros((1, 1, 2, 10, 10))
    previous[0, 0, :, np.arange(1, 10), np.arange(0, 9)] = 1.0  # every query on the token before it
    probs = np.concatenate([uniform_probs, previous], axis=2)  # one layer, 4 heads
    shares, uniform = jax.device_get(structure.overlap_attention_sums(probs, ids, mask, lengths, queries))
    # Overlapping keys per query: 2, 3, 4, 4, 4, 3, 2 of the 9 real keys.
    assert float(uniform) == pytest.approx(22 / 9, rel=1e-6)
    ratio = shares[0] / uniform
    assert ratio[:2] == pytest.approx([1.0, 1.0], rel=1e-6)
    # Previous-token heads: 6 of the 7 queries (all but the first k-mer, whose previous is [CLS]).
    assert ratio[2:] == pytest.approx([6 / (22 / 9)] * 2, rel=1e-6)


def test_validation_examples_are_the_held_out_examples_of_data_prep(tiny_dataset):
    from conftest import TINY_PREP

    from dnavec_jax.data import load_prepared
    from dnavec_jax.training import batches as input_batches

    settings = PrepSettings(**TINY_PREP)
    examples = structure.validation_examples(settings)
    dataset = load_prepared(tiny_dataset)
    batches = input_batches.tfrecord_eval_batches(dataset.files("validation"), 64, settings.seq_length,
                                                   settings.max_predictions, 0, 1, 10**6)
    stored = np.concatenate([objective.unmask(batch) for batch in itertools.islice(batches, 100)])
    stored = stored[stored[:, 0] == CLS_ID]
    assert len(examples) == dataset.num_examples("validation") == len(stored)
    def as_set(rows):
        return sorted(map(tuple, rows.tolist()))
    assert as_set(examples) == as_set(stored)


def test_report_of_a_fresh_model_is_near_chance():
    tokenizer = KmerTokenizer(3, 5)
    config = M.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_layers=2, num_heads=4,
                          intermediate_size=64, max_position_embeddings=64)
    params = jax.device_get(M.init_params(config, jax.random.key(0)))
    ids, _ = _examples(tokenizer, rows=40, seq_length=64, seed=2)
    report = structure.structure_report(config, params, tokenizer, ids, max_predictions=10, batch_size=16)
    summary = report.summary()
    assert summary["num_examples"] == 40 and summary["num_probes"] > 40 * 4
    assert summary["copy_accuracy_ceiling"] == pytest.approx(1 / 3)
    assert summary["copy_accuracy"] < 0.05 and summary["copy_accuracy_given_k"] < 0.05
    assert 0.5 < summary["neighbour_ratio"] < 1.5
    assert report.attention_ratio.shape == (2, 4)
    assert 0.8 < summary["attention_max_ratio"] < 1.3 and 0.8 < summary["mask_attention_max_ratio"] < 1.3
