"""k-mer tf-idf: the formulas against scikit-learn, documents = data-prep examples, bounded memory, the CLI."""

from __future__ import annotations

import csv
import gzip
import json

import numpy as np
import pytest
from sklearn.feature_extraction.text import TfidfVectorizer

from dnavec_jax import cli
from dnavec_jax.data import fasta, pipeline
from dnavec_jax.data.settings import PrepSettings
from dnavec_jax.tokenization import CLS_ID, PAD_ID, SEP_ID, KmerTokenizer
from dnavec_jax.tools import tfidf


def _texts(docs: np.ndarray, tokenizer: KmerTokenizer) -> list[str]:
    vocab = tokenizer.vocab
    return [" ".join(vocab[i] for i in row if i >= 5) for row in docs]


def _sklearn(docs: np.ndarray, tokenizer: KmerTokenizer):
    """sklearn's normalised matrix (sparse, one column per k-mer present), its idf, and our ids of those columns."""
    vectorizer = TfidfVectorizer(lowercase=False, token_pattern=None, tokenizer=str.split, smooth_idf=True,
                                 norm="l2", sublinear_tf=False)
    matrix = vectorizer.fit_transform(_texts(docs, tokenizer)).tocsr()
    columns = np.array([tokenizer.token_to_id(term) for term in vectorizer.get_feature_names_out()])
    return matrix, vectorizer.idf_, columns


def _synthetic_docs(tokenizer: KmerTokenizer, rows=60, width=40, seed=0) -> np.ndarray:
    """Documents of varying length with many repeats, padded with [PAD] and wrapped in [CLS] ... [SEP]."""
    rng = np.random.default_rng(seed)
    docs = np.full((rows, width + 2), PAD_ID, np.int64)
    for row in range(rows):
        length = int(rng.integers(1, width + 1))
        pool = rng.integers(5, tokenizer.vocab_size, size=int(rng.integers(1, 12)))  # few distinct terms
        docs[row, 0] = CLS_ID
        docs[row, 1 : 1 + length] = rng.choice(pool, size=length)
        docs[row, 1 + length] = SEP_ID
    return docs


@pytest.fixture(scope="module")
def chr22_docs(chr22_fasta, tmp_path_factory):
    """Real documents: the first 200 kb chunk of the chr22 corpus, k 3..8, 128-token examples."""
    settings = PrepSettings(k_min=3, k_max=8, seq_length=130, max_predictions=19, chunk_bases=200_000,
                            shard_bases=200_000)
    sources = [fasta.open_source(str(chr22_fasta), tmp_path_factory.mktemp("work"), 0)]
    records, _ = fasta.select_records(sources, settings.chromosomes)
    docs, bases = next(tfidf.genome_documents(settings, sources, records))
    return settings, sources, records, docs


def test_doc_term_counts_are_the_documents_bag_of_kmers():
    docs = np.array([[2, 7, 9, 7, 3, 0, 0], [2, 9, 9, 9, 9, 9, 3], [0, 0, 0, 0, 0, 0, 0], [5, 6, 5, 6, 5, 0, 4]])
    counts = tfidf.doc_term_counts(docs)
    assert list(zip(counts.doc, counts.term, counts.count)) == [(0, 7, 2), (0, 9, 1), (1, 9, 5), (3, 5, 3),
                                                                (3, 6, 2)]
    assert counts.lengths.tolist() == [3, 5, 0, 5]


@pytest.mark.parametrize("source", ["synthetic", "chr22"])
def test_normalised_tfidf_and_idf_match_scikit_learn(source, chr22_docs):
    if source == "synthetic":
        tokenizer = KmerTokenizer(3, 4)
        docs = _synthetic_docs(tokenizer)
    else:
        settings, _, _, docs = chr22_docs
        tokenizer = settings.tokenizer()
    expected, expected_idf, columns = _sklearn(docs, tokenizer)
    accumulator = tfidf.CorpusTfidf(tokenizer.vocab_size)
    accumulator.add_frequencies(docs)
    np.testing.assert_allclose(accumulator.idf[columns], expected_idf, rtol=0, atol=1e-9)
    assert (accumulator.df > 0).sum() == len(columns)
    # Our tf is count / length, sklearn's the raw count: after L2 normalisation the vectors agree.
    ours = tfidf.tfidf_matrix(docs, accumulator.idf)
    assert ours.shape == (len(docs), tokenizer.vocab_size) and ours.nnz == expected.nnz
    assert abs(ours[:, columns] - expected).max() < 1e-9
    np.testing.assert_allclose(np.sqrt(ours.multiply(ours).sum(axis=1)), 1.0, atol=1e-12)


def test_corpus_scores_match_the_mean_of_the_scikit_learn_matrix_in_any_batching():
    tokenizer = KmerTokenizer(3, 4)
    docs = _synthetic_docs(tokenizer, rows=90, seed=1)
    matrix, _, columns = _sklearn(docs, tokenizer)
    expected = np.zeros(tokenizer.vocab_size)
    expected[columns] = np.asarray(matrix.mean(axis=0)).ravel()
    one_batch = tfidf.CorpusTfidf(tokenizer.vocab_size)
    one_batch.add_frequencies(docs)
    one_batch.add_scores(docs)
    batched = tfidf.CorpusTfidf(tokenizer.vocab_size)
    edges = [0, 7, 8, 40, 90]
    for lo, hi in zip(edges[:-1], edges[1:]):
        batched.add_frequencies(docs[lo:hi])
    for lo, hi in reversed(list(zip(edges[:-1], edges[1:]))):  # pass 2 in another order and another width
        batched.add_scores(np.pad(docs[lo:hi], ((0, 0), (0, 5))))
    for accumulator in (one_batch, batched):
        assert accumulator.num_documents == 90
        np.testing.assert_allclose(accumulator.score, expected, rtol=0, atol=1e-12)
    ids = tfidf.top_kmers(batched.score, 5)
    assert list(ids) == list(np.argsort(-expected, kind="stable")[:5])


def test_documents_are_the_data_prep_examples(chr22_docs):
    """The tf-idf documents are the unmasked k-mer content of data prep's examples of the same chunk."""
    settings, sources, records, docs = chr22_docs
    worker = pipeline.GenomeWorker(settings, sources, records, out_dir=".")
    true_ids = worker.chunk_examples(records[0], 0, dupe=0).true_ids
    worker.reader.close()
    expected = true_ids[:, 1 : settings.seq_length - 1].copy()
    expected[expected == SEP_ID] = PAD_ID
    np.testing.assert_array_equal(docs, expected)
    assert docs.shape[1] == settings.seq_length - 2 and (docs[:, 0] >= 5).all()


def test_memory_does_not_grow_with_the_number_of_documents():
    tokenizer = KmerTokenizer(3, 4)
    docs = _synthetic_docs(tokenizer, rows=20)
    small, large = tfidf.CorpusTfidf(tokenizer.vocab_size), tfidf.CorpusTfidf(tokenizer.vocab_size)
    small.add_frequencies(docs)
    for _ in range(50):
        large.add_frequencies(docs)
    small.add_scores(docs)
    for _ in range(50):
        large.add_scores(docs)
    assert large.num_documents == 50 * small.num_documents
    assert large.nbytes == small.nbytes == 4 * 8 * tokenizer.vocab_size
    reference = tfidf.CorpusTfidf(tokenizer.vocab_size)
    reference.add_frequencies(np.tile(docs, (50, 1)))
    reference.add_scores(np.tile(docs, (50, 1)))
    np.testing.assert_allclose(large.score, reference.score, rtol=0, atol=1e-12)


def test_genome_documents_stream_one_chunk_at_a_time(chr22_docs):
    settings, sources, records, _ = chr22_docs
    shapes = [(docs.shape, bases) for docs, bases in tfidf.genome_documents(settings, sources, records)]
    assert len(shapes) == -(-records[0].length // settings.chunk_length)
    assert sum(bases for _, bases in shapes) == records[0].length
    chunk_rows = settings.chunk_length // settings.tokens_per_example + 10  # + pieces cut at contig ends
    assert all(rows <= chunk_rows for (rows, _), _ in shapes)


def _run(capsys, *argv):
    status = cli.main(["tfidf", *map(str, argv)])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_cli_writes_csv_scores_word_cloud_and_summary(chr22_fasta, tmp_path, capsys):
    from PIL import Image

    out = tmp_path / "tfidf"
    status, stdout, stderr = _run(capsys, "--fasta", chr22_fasta, "--output_dir", out, "--top", 30)
    assert status == 0, stderr
    assert "throughput: 1,000,000 bases" in stdout and "M bases/s" in stdout
    with open(out / tfidf.TOP_CSV, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == list(tfidf.CSV_COLUMNS) and len(rows) == 30
    scores = np.load(out / tfidf.SCORES_NPY)
    tokenizer = KmerTokenizer(3, 8)
    assert scores.shape == (tokenizer.vocab_size,) and scores.dtype == np.float64 and (scores[:5] == 0).all()
    assert [int(row["rank"]) for row in rows] == list(range(1, 31))
    listed = [float(row["score"]) for row in rows]
    assert listed == sorted(listed, reverse=True)
    for row in rows:
        token_id = tokenizer.token_to_id(row["kmer"])
        assert float(row["score"]) == pytest.approx(scores[token_id], rel=1e-8)
        assert int(row["k"]) == len(row["kmer"]) and 1 <= int(row["df"]) <= int(row["total_count"])
    assert float(rows[-1]["score"]) >= np.sort(scores)[-30]
    summary = json.loads((out / tfidf.SUMMARY_JSON).read_text())
    assert summary["bases"] == 1_000_000 and summary["num_documents"] > 1_700
    with Image.open(out / tfidf.WORDCLOUD_PNG) as image:
        assert image.format == "PNG" and image.size == (1600, 800)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left

    status, _, stderr = _run(capsys, "--fasta", chr22_fasta, "--output_dir", out)
    assert status == 2 and stderr.startswith("error: ") and "--overwrite" in stderr and stderr.count("\n") == 1
    status, _, stderr = _run(capsys, "--fasta", chr22_fasta, "--output_dir", out, "--overwrite", "--top", 5,
                             "--k_max", 4, "--seq_length", 66)
    assert status == 0, stderr
    assert len(list(csv.DictReader(open(out / tfidf.TOP_CSV)))) == 5
    assert np.load(out / tfidf.SCORES_NPY).shape == (KmerTokenizer(3, 4).vocab_size,)


def test_cli_errors_are_one_line(tmp_path, capsys):
    empty = tmp_path / "empty.fa"
    empty.write_bytes(b"")
    only_n = tmp_path / "gaps.fa.gz"
    with gzip.open(only_n, "wb") as handle:
        handle.write(b">chr1\n" + b"N" * 500 + b"\n>chr2\nACGTNACGT\n")
    good = tmp_path / "good.fa"
    good.write_text(">chr1\n" + "ACGT" * 100 + "\n")
    cases = [
        (["--fasta", tmp_path / "missing.fa"], "missing.fa: FASTA file not found"),
        (["--fasta", empty], "empty.fa: empty file"),
        (["--fasta", only_n], "no contig of at least min_contig_length=64"),
        (["--fasta", good, "--chromosomes", "chrX"], "no record matches the chromosome selection"),
        (["--fasta", good, "--k_min", 5, "--k_max", 4], "invalid k settings"),
        (["--fasta", good, "--seq_length", 2], "seq_length must be at least 3"),
        (["--fasta", good, "--top", 0], "--top must be at least 1"),
    ]
    for index, (argv, message) in enumerate(cases):
        status, _, stderr = _run(capsys, *argv, "--output_dir", tmp_path / f"out{index}")
        assert status == 2, (argv, stderr)
        assert stderr.startswith("error: ") and stderr.count("\n") == 1 and message in stderr, stderr
