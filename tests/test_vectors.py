"""k-mer vectors (`dnavec vectors`) and nearest neighbours (`dnavec neighbors`) of the trained tiny model."""

from __future__ import annotations

import json

import numpy as np
import pytest
from gensim.models import KeyedVectors

from dnavec_jax import cli
from dnavec_jax.model import BertForMaskedLM
from dnavec_jax.tokenization import CLS_ID, SEP_ID, KmerTokenizer
from dnavec_jax.tools import loaded_model, vectors

VOCAB_SIZE = 5 + 4**3 + 4**4  # the tiny model: k 3..4
HIDDEN = 32


@pytest.fixture(scope="module")
def run_model(trained_workdir):
    return loaded_model.load_model(trained_workdir)


@pytest.fixture(scope="module")
def vectors_dir(trained_workdir, tmp_path_factory):
    output = tmp_path_factory.mktemp("vectors") / "out"
    assert cli.main(["vectors", "--model", str(trained_workdir), "--output_dir", str(output)]) == 0
    return output


def test_vectors_files_load_in_gensim(vectors_dir, run_model):
    tokenizer = run_model.tokenizer
    assert (vectors_dir / "vocab.txt").read_text().splitlines() == tokenizer.vocab
    info = json.loads((vectors_dir / "vectors.json").read_text())
    assert info["vocab_size"] == VOCAB_SIZE and info["hidden_size"] == HIDDEN and info["step"] == 40
    for kind in ("input", "contextual"):
        matrix = np.load(vectors_dir / vectors.NPY_FILES[kind])
        assert matrix.shape == (VOCAB_SIZE, HIDDEN) and matrix.dtype == np.float32
        keyed = KeyedVectors.load_word2vec_format(str(vectors_dir / vectors.W2V_FILES[kind]), binary=False)
        assert len(keyed) == VOCAB_SIZE and keyed.vector_size == HIDDEN
        assert keyed.index_to_key == tokenizer.vocab
        np.testing.assert_allclose(keyed.vectors, matrix, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(keyed["GATC"], matrix[tokenizer.token_to_id("GATC")], rtol=1e-6, atol=1e-7)
    table = run_model.params["embeddings"]["word_embeddings"]["embedding"]
    assert table.shape == (384, HIDDEN) and not table[VOCAB_SIZE:].any()  # the model's padding: trimmed, all 0
    np.testing.assert_array_equal(np.load(vectors_dir / "input_embeddings.npy"), table[:VOCAB_SIZE])
    # No staging directory is left next to the output.
    assert sorted(path.name for path in vectors_dir.parent.iterdir()) == ["out"]


def test_contextual_vector_is_the_lone_kmer_state(vectors_dir, run_model):
    contextual = np.load(vectors_dir / "contextual_vectors.npy")
    tokenizer = run_model.tokenizer
    model = BertForMaskedLM(run_model.config)
    for token in ("ACG", "TTT", "GATC", "CCCA", "[MASK]"):
        token_id = tokenizer.token_to_id(token)
        ids = np.array([[CLS_ID, token_id, SEP_ID]], np.int32)  # unpadded, unbatched
        hidden = model.apply({"params": run_model.params}, ids, np.ones_like(ids), method=BertForMaskedLM.encode)
        np.testing.assert_allclose(contextual[token_id], np.asarray(hidden)[0, 1], atol=1e-5)
    # Different k-mers get different vectors (the batch rows are not mixed up).
    assert np.unique(contextual.round(4), axis=0).shape[0] == VOCAB_SIZE


def test_run_and_export_give_the_same_vectors(run_model, trained_export):
    export_model = loaded_model.load_model(trained_export)
    np.testing.assert_allclose(vectors.contextual_vectors(export_model, batch_size=100),
                               vectors.contextual_vectors(run_model, batch_size=64), atol=1e-5)
    np.testing.assert_array_equal(vectors.input_embeddings(export_model), vectors.input_embeddings(run_model))


def test_vectors_refuses_a_non_empty_output_dir(trained_workdir, tmp_path, capsys):
    output = tmp_path / "out"
    output.mkdir()
    (output / "keep.txt").write_text("mine")
    argv = ["vectors", "--model", str(trained_workdir), "--output_dir", str(output), "--kind", "input"]
    assert cli.main(argv) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: --output_dir") and "--overwrite" in error and error.count("\n") == 1
    assert (output / "keep.txt").exists()
    assert cli.main(argv + ["--overwrite"]) == 0
    assert sorted(path.name for path in output.iterdir()) == [
        "input_embeddings.npy", "input_embeddings.w2v.txt", "vectors.json", "vocab.txt"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out"]


def test_nearest_on_known_vectors():
    tokenizer = KmerTokenizer(3, 3)
    vocab = tokenizer.vocab
    rng = np.random.default_rng(0)
    matrix = rng.normal(size=(len(vocab), 8)).astype(np.float32)
    query = tokenizer.token_to_id("GAT")
    matrix[tokenizer.token_to_id("TTT")] = 3 * matrix[query]  # same direction: cosine 1
    matrix[tokenizer.token_to_id("CCA")] = matrix[query] + 0.1 * rng.normal(size=8)
    matrix[2] = matrix[query]  # a special token is never a neighbour
    matrix[tokenizer.token_to_id("AAA")] = 0  # zero vector: cosine 0, no NaN
    found = vectors.nearest(matrix, vocab, "GAT", top=3)
    assert [token for token, _ in found][:2] == ["TTT", "CCA"]
    assert found[0][1] == pytest.approx(1.0, abs=1e-6) and found[1][1] > found[2][1]
    assert "GAT" not in [token for token, _ in vectors.nearest(matrix, vocab, "gat", top=len(vocab))]
    with_self = vectors.nearest(matrix, vocab, "GAT", top=2, include_self=True)
    assert [token for token, _ in with_self] == ["GAT", "TTT"]  # a tie at 1.0 goes to the lower id
    assert with_self[0][1] == pytest.approx(1.0, abs=1e-6)
    everything = vectors.nearest(matrix, vocab, "GAT", top=1000)
    assert len(everything) == 63 and all(np.isfinite(score) for _, score in everything)
    # Brute force agrees on the order.
    unit = matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-30)
    scores = unit[5:] @ unit[query]
    expected = [vocab[5 + i] for i in np.argsort(-scores, kind="stable") if 5 + i != query][:10]
    assert [token for token, _ in vectors.nearest(matrix, vocab, "GAT", top=10)] == expected


def _neighbour_lines(output: str) -> list[tuple[str, float]]:
    lines = output.strip().splitlines()
    assert lines[2].split() == ["rank", "kmer", "cosine"]
    return [(line.split()[1], float(line.split()[2])) for line in lines[3:]]


def test_neighbors_cli(trained_workdir, trained_export, vectors_dir, run_model, capsys):
    assert cli.main(["neighbors", "--model", str(trained_workdir), "--kmer", "GATC", "--top", "5"]) == 0
    printed = capsys.readouterr().out
    assert "nearest k-mers to GATC (k=4" in printed and "self-similarity 1.000000" in printed
    found = _neighbour_lines(printed)
    embeddings = vectors.input_embeddings(run_model)
    expected = vectors.nearest(embeddings, run_model.tokenizer.vocab, "GATC", top=5)
    assert [token for token, _ in found] == [token for token, _ in expected]
    np.testing.assert_allclose([score for _, score in found], [score for _, score in expected], atol=1e-6)
    assert "GATC" not in [token for token, _ in found]
    assert all(a >= b for (_, a), (_, b) in zip(found, found[1:]))

    # Contextual neighbours from the export and from the vectors directory agree.
    assert cli.main(["neighbors", "--model", str(trained_export), "--kmer", "acg", "--kind", "contextual"]) == 0
    from_export = _neighbour_lines(capsys.readouterr().out)
    assert cli.main(["neighbors", "--model", str(vectors_dir), "--kmer", "ACG", "--kind", "contextual"]) == 0
    from_dir = _neighbour_lines(capsys.readouterr().out)
    assert len(from_dir) == 10 and [t for t, _ in from_export] == [t for t, _ in from_dir]


@pytest.mark.parametrize("kmer", ["GATCCA", "AC", "ACGN", "[CLS]", ""])
def test_neighbors_unknown_kmer(trained_export, kmer, capsys):
    assert cli.main(["neighbors", "--model", str(trained_export), "--kmer", kmer]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: --kmer {kmer!r}: not a k-mer of this model") and "3..4" in error
    assert error.count("\n") == 1
