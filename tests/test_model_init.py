"""The optional initial tables (model.position_init, model.word_init): what they hold, and that they are checked."""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest

from dnavec_jax import model as M
from dnavec_jax.tokenization import KmerTokenizer, k_range_of_vocab_size
from dnavec_jax.tools import structure


@functools.cache
def _tables(position_init: str = "normal", word_init: str = "normal"):
    config = M.BertConfig(vocab_size=5 + 4**3 + 4**4, hidden_size=64, num_layers=1, num_heads=2,
                          intermediate_size=32, max_position_embeddings=40, position_init=position_init,
                          word_init=word_init)
    ids = np.zeros((1, 4), np.int32)
    embeddings = jax.device_get(M.BertEmbeddings(config).init(jax.random.key(0), ids, ids, True)["params"])
    words = np.asarray(embeddings["word_embeddings"]["embedding"])
    assert words.shape[0] == config.padded_vocab_size and not words[config.vocab_size:].any()  # padding rows: 0
    return words[: config.vocab_size], np.asarray(embeddings["position_embeddings"]["embedding"])


def test_sinusoidal_positions_make_an_offset_the_same_everywhere():
    _, positions = _tables(position_init="sinusoidal")
    gram = positions @ positions.T
    for offset in (1, 2, 5):
        diagonal = np.diagonal(gram, offset)
        assert np.allclose(diagonal, diagonal[0], rtol=1e-4, atol=1e-7)  # depends on the offset only
    assert np.sqrt((positions**2).mean()) == pytest.approx(0.02, rel=1e-3)
    _, normal = _tables()
    assert np.diagonal(normal @ normal.T, 1).std() > 10 * np.diagonal(gram, 1).std()


def test_base_composed_words_start_close_when_they_share_bases():
    words, _ = _tables(word_init="bases")
    tokenizer = KmerTokenizer(3, 4)
    assert words.shape == (tokenizer.vocab_size, 64)
    assert structure.neighbour_figure(words, tokenizer, k=4, top=5, width=3).ratio > 5
    normal, _ = _tables()
    assert structure.neighbour_figure(normal, tokenizer, k=4, top=5, width=3).ratio < 2
    # Two 4-mers that differ in their last base only differ by B[3, b] - B[3, b'] (over sqrt 4) and noise;
    # every pair that differs there in the same way differs by the same vector, up to the noise.
    a, c, g = (tokenizer.token_to_id(kmer) for kmer in ("ACGA", "ACGC", "TTTA"))
    t = tokenizer.token_to_id("TTTC")
    def cosine(x, y):
        return float(x @ y / np.linalg.norm(x) / np.linalg.norm(y))
    assert cosine(words[c] - words[a], words[t] - words[g]) > 0.4
    assert abs(cosine(normal[c] - normal[a], normal[t] - normal[g])) < 0.3


def test_init_settings_are_checked():
    assert k_range_of_vocab_size(87_365) == (3, 8) and k_range_of_vocab_size(5_445) == (3, 6)
    assert k_range_of_vocab_size(5_446) is None
    with pytest.raises(ValueError, match="model.word_init 'bases' needs a k-mer vocabulary"):
        M.BertConfig(vocab_size=1000, word_init="bases")
    with pytest.raises(ValueError, match="model.position_init must be one of normal, sinusoidal"):
        M.BertConfig(position_init="rotary")
    with pytest.raises(ValueError, match="model.word_init must be one of normal, bases"):
        M.BertConfig(word_init="onehot")
