"""Attention shares: the token sets on a hand-built example, the explicit attention path, the CLI end to end."""

from __future__ import annotations

import csv
import gzip
import json
import sys

import jax
import numpy as np
import pytest

from dnavec_jax import cli
from dnavec_jax import model as M
from dnavec_jax.tokenization import CLS_ID, PAD_ID, SEP_ID, KmerTokenizer
from dnavec_jax.tools import attention, loaded_model, tfidf

CATEGORIES = ("cls", "sep", "kmer_3", "kmer_longer", "top_tfidf", "self", "overlap")


# ---- shares on a hand-built example ----------------------------------------------------
def _example():
    """[CLS] AAA AACC ACG TTTT [SEP] [PAD] with explicit starts; AACC and TTTT are 'top tf-idf'.

    Bases covered: AAA [0,3), AACC [1,5), ACG [2,5), TTTT [7,11): the first three overlap each
    other, TTTT overlaps nothing but itself.
    """
    tokenizer = KmerTokenizer(3, 4)
    kmers = ["AAA", "AACC", "ACG", "TTTT"]
    ids = np.array([[CLS_ID, *map(tokenizer.token_to_id, kmers), SEP_ID, PAD_ID]])
    mask = np.array([[1, 1, 1, 1, 1, 1, 0]])
    starts = np.array([[0, 0, 1, 2, 7, 0, 0]])
    top = np.zeros(tokenizer.vocab_size, bool)
    top[[tokenizer.token_to_id("AACC"), tokenizer.token_to_id("TTTT")]] = True
    # One head; rows = queries, columns = keys (padding key gets 0). Rows 0, 5, 6 ([CLS], [SEP], [PAD]) must not count.
    probs = np.array([
        [0.9, 0.1, 0.0, 0.0, 0.0, 0.0, 0.0],
        [0.1, 0.2, 0.3, 0.1, 0.2, 0.1, 0.0],  # AAA
        [0.0, 0.5, 0.1, 0.2, 0.0, 0.2, 0.0],  # AACC
        [0.3, 0.0, 0.0, 0.4, 0.3, 0.0, 0.0],  # ACG
        [0.05, 0.05, 0.1, 0.2, 0.5, 0.1, 0.0],  # TTTT
        [0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0],
        [0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0],
    ])
    # Per counted query: cls, sep, 3-mers (AAA, ACG), longer (AACC, TTTT), top (AACC, TTTT), self, overlap.
    expected = np.array([
        [0.1, 0.1, 0.2 + 0.1, 0.3 + 0.2, 0.3 + 0.2, 0.2, 0.2 + 0.3 + 0.1],  # AAA: overlaps AAA AACC ACG
        [0.0, 0.2, 0.5 + 0.2, 0.1 + 0.0, 0.1 + 0.0, 0.1, 0.5 + 0.1 + 0.2],  # AACC: AAA AACC ACG
        [0.3, 0.0, 0.0 + 0.4, 0.0 + 0.3, 0.0 + 0.3, 0.4, 0.0 + 0.0 + 0.4],  # ACG: AAA AACC ACG
        [0.05, 0.1, 0.05 + 0.2, 0.1 + 0.5, 0.1 + 0.5, 0.5, 0.5],  # TTTT: itself only
    ])
    # Uniform over the 6 real keys: per query, the category's fraction of them.
    uniform = np.array([[1, 1, 2, 2, 2, 1, 3], [1, 1, 2, 2, 2, 1, 3], [1, 1, 2, 2, 2, 1, 3],
                        [1, 1, 2, 2, 2, 1, 1]]) / 6
    return tokenizer, ids, mask, starts, top, probs, expected, uniform


def test_shares_on_a_hand_built_example():
    tokenizer, ids, mask, starts, top, probs, expected, uniform = _example()
    assert attention.categories(3) == CATEGORIES
    masks = attention.category_masks(ids, mask, tokenizer.kmer_lengths(), top, 3, starts=starts)
    weights = attention.query_weights(ids, mask, tokenizer.kmer_lengths())
    np.testing.assert_array_equal(weights, [[0, 1, 1, 1, 1, 0, 0]])
    per_query = np.einsum("qk,cqk->qc", probs, np.asarray(masks[0]))[1:5]
    np.testing.assert_allclose(per_query, expected, atol=1e-7)
    # [CLS] + [SEP] + 3-mers + longer k-mers is everything a query attends to.
    np.testing.assert_allclose(per_query[:, :4].sum(axis=1), 1.0, atol=1e-7)
    sums = attention.share_sums(probs[None, None, None], masks, weights)  # (layers, heads, categories)
    np.testing.assert_allclose(np.asarray(sums)[0, 0] / 4, expected.mean(axis=0), atol=1e-7)
    np.testing.assert_allclose(np.asarray(attention.uniform_sums(masks, mask, weights)) / 4, uniform.mean(axis=0),
                               atol=1e-7)
    # No category ever holds the padding key or a special query's row.
    assert not np.asarray(masks)[0, :, :, 6].any() and not np.asarray(masks)[0, 5:, [0, 5, 6]].any()


def test_default_starts_are_one_token_per_base():
    tokenizer = KmerTokenizer(3, 4)
    ids = tokenizer.encode("ACGTTGCAAGT", seed=3)
    input_ids, mask = loaded_model.pack_windows([ids], 16)
    lengths = tokenizer.kmer_lengths()
    top = np.zeros(tokenizer.vocab_size, bool)
    implicit = attention.category_masks(input_ids, mask, lengths, top, 3)
    starts = np.arange(16)[None] - 1
    np.testing.assert_array_equal(implicit, attention.category_masks(input_ids, mask, lengths, top, 3, starts=starts))
    k = lengths[input_ids[0]]
    overlap = np.asarray(implicit)[0, 6]
    for q in range(1, len(ids) + 1):
        for key in range(1, len(ids) + 1):  # token j covers bases [j - 1, j - 1 + k_j)
            assert overlap[q, key] == (max(q, key) - 1 < min(q - 1 + k[q], key - 1 + k[key]))


# ---- the explicit attention path ----------------------------------------------------------
CFG = M.BertConfig(vocab_size=69, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
                   max_position_embeddings=32)


def test_explicit_attention_reproduces_the_model():
    params = jax.jit(lambda: M.init_params(CFG, jax.random.key(0)))()
    rng = np.random.default_rng(0)
    ids = rng.integers(5, 69, size=(3, 20))
    mask = np.ones_like(ids)
    mask[1, 12:] = 0
    mask[2, 4:] = 0
    reference = jax.jit(lambda p, i, m: M.BertForMaskedLM(CFG).apply({"params": p}, i, m))(params, ids, mask)
    outputs, probs = jax.jit(lambda p, i, m: M.apply_with_attention(CFG, p, i, m))(params, ids, mask)
    assert probs.shape == (2, 3, 4, 20, 20) and probs.dtype == np.float32
    np.testing.assert_allclose(outputs["hidden_states"], reference["hidden_states"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(outputs["pooled"], reference["pooled"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.asarray(probs).sum(-1), 1.0, atol=1e-6)
    assert float(probs[:, 1, :, :, 12:].max()) == 0.0 and float(probs[:, 2, :, :, 4:].max()) == 0.0
    # Opt-in only: the default path neither creates nor needs an attention collection, and params are unchanged.
    positions = np.zeros((3, 2), np.int32)
    variables = jax.eval_shape(lambda: M.BertForMaskedLM(CFG).init(jax.random.key(0), ids, mask, None, positions))
    assert set(variables) == {"params"}
    assert jax.tree.structure(variables["params"]) == jax.tree.structure(params)


def test_explicit_attention_matches_transformers(trained_export):
    loaded = loaded_model.load_model(trained_export)
    ids = loaded.tokenizer.encode("GATCCCACGTTAGCAGGTACCAGTTTGACCATTGACGGA", seed=1)
    input_ids, mask = loaded_model.pack_windows([ids], len(ids) + 2)
    _, probs = M.apply_with_attention(loaded.config, loaded.params, input_ids, mask)
    expected = attention.hf_attentions(trained_export, input_ids[0])
    np.testing.assert_allclose(np.asarray(probs)[:, 0], expected, atol=1e-5, rtol=0)


# ---- the command line ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def chr22_slice(chr22_fasta, tmp_path_factory):
    """The first 40 kb of the chr22 corpus (all A/C/G/T) as a second record after a short one."""
    with gzip.open(chr22_fasta, "rt") as handle:
        sequence = "".join(line.strip() for line in handle if not line.startswith(">"))[:40_000]
    path = tmp_path_factory.mktemp("fasta") / "slice.fa"
    lines = "\n".join(sequence[i : i + 60] for i in range(0, len(sequence), 60))
    path.write_text(f">short\n{sequence[:500]}\n>chr22_slice\n{lines}\n")
    return path


def _run(capsys, *argv):
    status = cli.main(["attention", *map(str, argv)])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_cli_writes_shares_heat_maps_and_html(trained_workdir, chr22_slice, tmp_path, capsys):
    from PIL import Image

    out = tmp_path / "attention"
    status, stdout, stderr = _run(capsys, "--model", trained_workdir, "--fasta", chr22_slice, "--output_dir", out,
                                  "--num_sequences", 12, "--batch_size", 8, "--top_tfidf", 20,
                                  "--html_record", "chr22_slice", "--html_tokens", 24)
    assert status == 0, stderr
    assert "over 12 windows" in stdout
    with open(out / attention.SHARES_CSV, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == list(attention.CSV_COLUMNS) and len(rows) == 2 * 4 * len(CATEGORIES)
    share = {(int(r["layer"]), int(r["head"]), r["category"]): float(r["share"]) for r in rows}
    uniform = {r["category"]: float(r["uniform_share"]) for r in rows}
    for layer in range(2):
        for head in range(4):
            total = sum(share[layer, head, c] for c in ("cls", "sep", "kmer_3", "kmer_longer"))
            assert total == pytest.approx(1.0, abs=1e-5)
            assert share[layer, head, "self"] <= share[layer, head, "overlap"] <= 1.0
    assert sum(uniform[c] for c in ("cls", "sep", "kmer_3", "kmer_longer")) == pytest.approx(1.0, abs=1e-6)
    # 62-token windows: [CLS] and [SEP] are 2 of 64 keys; a token overlaps up to 2 * k_max - 1 = 7 tokens.
    assert uniform["cls"] == pytest.approx(1 / 64, rel=0.05) and 5 / 64 < uniform["overlap"] < 7 / 64
    for category in CATEGORIES:
        with Image.open(out / attention.heatmap_name(category)) as image:
            assert image.format == "PNG"
    for name in (attention.HEAD_VIEW_HTML, attention.MODEL_VIEW_HTML):
        html = (out / name).read_text()
        assert html.startswith("<!DOCTYPE html>") and "[CLS]" in html and "chr22_slice" in html
    summary = json.loads((out / attention.SUMMARY_JSON).read_text())
    assert summary["num_sequences"] == 12 and summary["top_tfidf"]["n"] == 20
    assert len(summary["html_tokens"]) == 26 and summary["html_tokens"][0] == "[CLS]"
    assert "computed on --fasta" in summary["top_tfidf"]["source"]

    # The same with the top k-mers from a `dnavec tfidf` CSV; an existing output needs --overwrite.
    tfidf_dir = tmp_path / "tfidf"
    assert cli.main(["tfidf", "--fasta", str(chr22_slice), "--output_dir", str(tfidf_dir), "--chromosomes", "all",
                     "--k_max", "4", "--seq_length", "64", "--top", "20"]) == 0
    capsys.readouterr()
    argv = ["--model", trained_workdir, "--fasta", chr22_slice, "--output_dir", out, "--num_sequences", 12,
            "--top_tfidf", 20, "--tfidf_csv", tfidf_dir / tfidf.TOP_CSV]
    status, _, stderr = _run(capsys, *argv)
    assert status == 2 and "--overwrite" in stderr and stderr.count("\n") == 1
    status, _, stderr = _run(capsys, *argv, "--overwrite")
    assert status == 0, stderr
    again = {(int(r["layer"]), int(r["head"]), r["category"]): float(r["share"])
             for r in csv.DictReader(open(out / attention.SHARES_CSV))}
    # Same seed, same windows, same top-20 k-mers (the CSV was computed with the same documents): same shares.
    assert again == pytest.approx(share, abs=1e-6)


def test_cli_errors_are_one_line(trained_workdir, chr22_slice, tmp_path, capsys, monkeypatch):
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("rank,kmer\n1,AAAAAAAA\n")
    not_csv = tmp_path / "other.csv"
    not_csv.write_text("a,b\n1,2\n")
    cases = [
        (["--model", tmp_path / "nope"], "no such file or directory"),
        (["--model", trained_workdir, "--fasta", tmp_path / "missing.fa"], "FASTA file not found"),
        (["--model", trained_workdir, "--num_sequences", 0], "--num_sequences must be at least 1"),
        (["--model", trained_workdir, "--tfidf_csv", bad_csv], "'AAAAAAAA' is not in the model's vocabulary"),
        (["--model", trained_workdir, "--tfidf_csv", not_csv], "not a tf-idf CSV"),
        (["--model", trained_workdir, "--tfidf_csv", tmp_path / "none.csv"], "tf-idf CSV not found"),
        (["--model", trained_workdir, "--html_record", "chr9"], "no record matches the chromosome selection"),
    ]
    for index, (argv, message) in enumerate(cases):
        if "--fasta" not in argv:
            argv = [*argv, "--fasta", chr22_slice]
        if "--num_sequences" not in argv:
            argv = [*argv, "--num_sequences", 2]
        status, _, stderr = _run(capsys, *argv, "--output_dir", tmp_path / f"out{index}")
        assert status == 2, (argv, stderr)
        assert stderr.startswith("error: ") and stderr.count("\n") == 1 and message in stderr, stderr
    monkeypatch.setitem(sys.modules, "bertviz", None)  # as if it were not installed
    status, _, stderr = _run(capsys, "--model", trained_workdir, "--fasta", chr22_slice, "--output_dir",
                             tmp_path / "viz", "--html_record", "chr22_slice")
    assert status == 2 and stderr.count("\n") == 1 and 'needs bertviz' in stderr and 'pip install -e ".[viz]"' in stderr


def test_share_counter_over_every_device_equals_one_device(trained_workdir):
    """5 windows on the 4 simulated devices (padded to 8 rows that count for nothing) give one device's sums."""
    loaded = loaded_model.load_model(trained_workdir)
    rng = np.random.default_rng(3)
    rows = [rng.integers(5, loaded.tokenizer.vocab_size, size=n) for n in (62, 10, 33, 62, 5)]
    input_ids, input_mask = loaded_model.pack_windows(rows, loaded.window_length)
    counters = [attention.ShareCounter(loaded.config, loaded.params, loaded.tokenizer, [7, 8, 9], devices=devices)
                for devices in (jax.devices()[:1], None)]
    for counter in counters:
        counter.add(input_ids, input_mask)
    one, every = (counter.result() for counter in counters)
    assert counters[1].parallel.num_devices == 4 and every.num_sequences == one.num_sequences == 5
    assert every.num_queries == one.num_queries == sum(map(len, rows))
    np.testing.assert_allclose(every.share, one.share, atol=1e-6)
    np.testing.assert_allclose(every.uniform, one.uniform, atol=1e-7)
