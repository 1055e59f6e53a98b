import numpy as np
import pytest

from dnavec_jax.tokenization import CLS_ID, MASK_ID, PAD_ID, SEP_ID, UNK_ID, KmerTokenizer, acgt_runs, sequence_to_codes


def test_vocabulary_size_and_order():
    tok = KmerTokenizer(3, 8)
    assert tok.vocab_size == 87_365 == 5 + sum(4**k for k in range(3, 9))
    assert tok.vocab[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert (PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID) == (0, 1, 2, 3, 4)
    assert tok.vocab[5:8] == ["AAA", "AAC", "AAG"]
    assert tok.vocab[5 + 64 - 1] == "TTT" and tok.vocab[5 + 64] == "AAAA"
    assert tok.vocab[-1] == "TTTTTTTT"
    # Within each k, lexicographic order; k ascending overall.
    kmers = tok.vocab[5:]
    assert kmers == sorted(kmers, key=lambda s: (len(s), s))
    assert len(set(kmers)) == len(kmers)


def test_token_id_round_trip():
    tok = KmerTokenizer(3, 8)
    rng = np.random.default_rng(0)
    for token_id in rng.integers(0, tok.vocab_size, 2000):
        assert tok.token_to_id(tok.id_to_token(token_id)) == token_id
        assert tok.vocab[token_id] == tok.id_to_token(token_id)
    with pytest.raises(ValueError, match="unknown token"):
        tok.token_to_id("ACGTN")
    with pytest.raises(ValueError, match="unknown token"):
        tok.token_to_id("AC")


def test_paper_example_and_tokens_match_sequence():
    tok = KmerTokenizer(3, 8)
    seq = "GATCCCAC"
    ks = np.array([4, 5, 6, 3, 3, 3])
    ids = tok.encode_contig_codes(sequence_to_codes(seq), ks)
    assert tok.decode_ids(ids)[:3] == ["GATC", "ATCCC", "TCCCAC"]
    rng = np.random.default_rng(1)
    seq = "".join(rng.choice(list("ACGT"), 1000))
    tokens = tok.tokenize(seq, seed=3)
    assert len(tokens) == len(seq) - 3 + 1
    for i, token in enumerate(tokens):
        assert 3 <= len(token) <= 8 and seq[i : i + len(token)] == token
    assert tok.tokenize(seq, seed=3) == tokens and tok.tokenize(seq, seed=4) != tokens


def test_k_distribution_and_fixed_k():
    tok = KmerTokenizer(3, 8, k_weights=[0, 0, 1, 0, 0, 1])
    lengths = tok.ids_to_kmer_lengths(tok.encode("ACGT" * 500, seed=0)[:-8])
    assert set(np.unique(lengths)) == {5, 8}
    assert tok.tokenize("GATCCCAC", k=4) == ["GATC", "ATCC", "TCCC", "CCCA", "CCAC"]
    assert " ".join(tok.tokenize("GATCCCAC", k=4)) == tok.kmer_text("GATCCCAC", k=4)


def test_invalid_input():
    with pytest.raises(ValueError, match="k_min"):
        KmerTokenizer(8, 3)
    with pytest.raises(ValueError, match="1..12"):
        KmerTokenizer(3, 13)
    with pytest.raises(ValueError, match="invalid letter 'N' at position 4"):
        KmerTokenizer().encode("ACGTNACGT")
    assert acgt_runs(sequence_to_codes("NNACGTRYAC")).tolist() == [[2, 6], [8, 10]]
