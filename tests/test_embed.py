"""Sequence embeddings (`dnavec embed`, embed.embed_sequences) with the trained tiny model (62 tokens a window)."""

from __future__ import annotations

import dataclasses
import gzip
import json

import numpy as np
import pytest

from dnavec_jax import cli
from dnavec_jax.model import BertForMaskedLM
from dnavec_jax.tokenization import CLS_ID, SEP_ID
from dnavec_jax.tools import embed, loaded_model


@pytest.fixture(scope="module")
def chr22(chr22_fasta) -> str:
    lines = gzip.open(chr22_fasta, "rt").read().splitlines()
    return "".join(lines[1:])


@pytest.fixture(scope="module")
def records(chr22) -> dict[str, str]:
    """Real chr22 pieces: short, with N runs and an IUPAC letter, soft-masked (lower case), multi-window."""
    return {
        "short": chr22[1000:1100],
        "gapped": chr22[5000:5150] + "N" * 30 + chr22[6000:6090] + "R" + chr22[7000:7040],
        "soft": chr22[9000:9200].lower(),
        "long": chr22[20000:20500],  # 498 tokens -> 9 windows of 55-56
    }


@pytest.fixture(scope="module")
def run_model(trained_workdir):
    return loaded_model.load_model(trained_workdir)


def _write_fasta(path, records: dict[str, str], width: int = 60):
    with open(path, "w") as handle:
        for name, sequence in records.items():
            handle.write(f">{name} some description\n")
            for start in range(0, len(sequence), width):
                handle.write(sequence[start:start + width] + "\n")
    return path


def _embed_cli(model, fasta, output, *extra):
    return cli.main(["embed", "--model", str(model), "--fasta", str(fasta), "--output", str(output), *extra])


def test_record_vectors_do_not_depend_on_the_other_records(run_model, trained_workdir, records, tmp_path, capsys):
    together = _write_fasta(tmp_path / "all.fa", records)
    assert _embed_cli(trained_workdir, together, tmp_path / "all.npz", "--batch_size", "4") == 0
    assert "sequences/s" in capsys.readouterr().out
    everything = np.load(tmp_path / "all.npz", allow_pickle=False)
    assert list(everything["ids"]) == list(records)
    for name in ("gapped", "long"):
        alone = _write_fasta(tmp_path / f"{name}.fa", {f"renamed_{name}": records[name]})
        assert _embed_cli(trained_workdir, alone, tmp_path / f"{name}.npz", "--batch_size", "3") == 0
        single = np.load(tmp_path / f"{name}.npz")
        row = list(records).index(name)
        for key in ("cls", "mean"):
            np.testing.assert_allclose(single[key][0], everything[key][row], atol=1e-5)
    # The API on plain strings, in another order, gives the same vectors.
    names = list(records)[::-1]
    api = embed.embed_sequences(run_model, [records[name] for name in names], batch_size=16)
    for row, name in enumerate(names):
        np.testing.assert_allclose(api["mean"][row], everything["mean"][list(records).index(name)], atol=1e-5)
    # Contigs: 'gapped' has three (150, 90, 40 bases), each windowed on its own.
    gapped = list(records).index("gapped")
    assert everything["num_tokens"][gapped] == 148 + 88 + 38
    assert everything["num_windows"][gapped] == 3 + 2 + 1
    # Lower case embeds as upper case (same tokens, same seed).
    upper = embed.embed_sequences(run_model, [records["soft"].upper()])
    np.testing.assert_allclose(upper["cls"][0], everything["cls"][list(records).index("soft")], atol=1e-5)
    for k in ("random", 4):
        soft = [records["soft"], records["soft"].upper()]
        both = embed.embed_sequences(run_model, soft, k=k)
        np.testing.assert_allclose(both["mean"][0], both["mean"][1], atol=1e-5)


def _reference(loaded, sequence: str, seed: int, tokenization: int = 0, k: int | None = None):
    """Pooled vectors computed window by window, unpadded and unbatched, straight from the Flax model."""
    raw = np.frombuffer(sequence.encode(), np.uint8)
    windows = loaded_model.sequence_windows(loaded.tokenizer, sequence,
                                         embed.record_seed(seed, tokenization, raw), loaded.max_tokens, k=k)
    model = BertForMaskedLM(loaded.config)
    states = []
    for window in windows:
        ids = np.concatenate(([CLS_ID], window.ids, [SEP_ID])).astype(np.int32)[None]
        states.append(np.asarray(model.apply({"params": loaded.params}, ids, np.ones_like(ids),
                                             method=BertForMaskedLM.encode))[0])
    cls = np.mean([state[0] for state in states], axis=0)
    tokens = np.concatenate([state[1:-1] for state in states])
    return windows, cls, tokens


def test_a_long_record_is_windowed_and_pooled(run_model, records):
    sequence = records["long"]
    windows, cls, tokens = _reference(run_model, sequence, seed=7)
    assert len(windows) == 9 and max(len(w.ids) for w in windows) <= 62 and len(tokens) == 498
    result = embed.embed_sequences(run_model, [records["short"], sequence], seed=7, per_token=True,
                                       batch_size=4, k="random")
    assert result["num_windows"].tolist() == [2, 9] and result["num_tokens"].tolist() == [98, 498]
    np.testing.assert_allclose(result["cls"][1], cls, atol=1e-5)
    np.testing.assert_allclose(result["mean"][1], tokens.mean(axis=0), atol=1e-5)
    offsets = result["token_offsets"]
    assert offsets.tolist() == [0, 98, 596] and result["token_vectors"].shape == (596, 32)
    np.testing.assert_allclose(result["token_vectors"][98:], tokens, atol=1e-5)
    np.testing.assert_array_equal(result["token_ids"][98:], np.concatenate([w.ids for w in windows]))
    np.testing.assert_array_equal(result["token_starts"][98:], np.arange(498))
    # The per-record mean is the mean of its token vectors.
    np.testing.assert_allclose(result["mean"][0], result["token_vectors"][:98].mean(axis=0), atol=1e-5)


def test_default_is_the_middle_fixed_k(run_model, records):
    """k 3..4: the default is k=3 (middle, rounded down); every k-mer, no seed involved."""
    assert embed.default_k(run_model.tokenizer) == 3
    sequences = [records["short"], records["long"]]
    default = embed.embed_sequences(run_model, sequences, seed=0, per_token=True)
    windows, cls, tokens = _reference(run_model, records["long"], seed=0, k=3)
    np.testing.assert_allclose(default["mean"][1], tokens.mean(axis=0), atol=1e-5)
    np.testing.assert_allclose(default["cls"][1], cls, atol=1e-5)
    np.testing.assert_array_equal(default["token_ids"][98:], np.concatenate([w.ids for w in windows]))
    np.testing.assert_allclose(embed.embed_sequences(run_model, sequences, seed=5)["mean"], default["mean"],
                               atol=1e-5)
    four = embed.embed_sequences(run_model, sequences, k=4)
    assert four["num_tokens"].tolist() == [97, 497] and np.abs(four["mean"] - default["mean"]).max() > 1e-3


def test_seeds_and_several_tokenizations(run_model, records):
    sequences = [records["short"], records["long"]]
    base = embed.embed_sequences(run_model, sequences, seed=0, k="random")
    again = embed.embed_sequences(run_model, sequences, seed=0, batch_size=5, k="random")
    np.testing.assert_allclose(base["cls"], again["cls"], atol=1e-5)
    other = embed.embed_sequences(run_model, sequences, seed=1, k="random")
    assert np.abs(other["cls"] - base["cls"]).max() > 1e-3
    two = embed.embed_sequences(run_model, sequences, seed=0, num_tokenizations=2, per_token=True, k=None)
    assert two["num_tokens"].tolist() == [98, 498] and two["num_windows"].tolist() == [2, 9]
    _, cls1, tokens1 = _reference(run_model, records["long"], seed=0, tokenization=1)
    _, cls0, tokens0 = _reference(run_model, records["long"], seed=0, tokenization=0)
    np.testing.assert_allclose(two["cls"][1], (cls0 + cls1) / 2, atol=1e-5)
    np.testing.assert_allclose(two["mean"][1], np.concatenate([tokens0, tokens1]).mean(axis=0), atol=1e-5)
    start, end = two["token_offsets"][1:3]
    assert end - start == 2 * 498
    assert two["token_tokenization"][start:end].tolist() == [0] * 498 + [1] * 498
    assert not np.array_equal(two["token_ids"][start:start + 498], two["token_ids"][start + 498:end])


def test_embed_cli_end_to_end_run_and_export(trained_workdir, trained_export, records, tmp_path, capsys):
    fasta = _write_fasta(tmp_path / "in.fa", records)
    gz = tmp_path / "in.fa.gz"
    gz.write_bytes(gzip.compress(fasta.read_bytes()))
    assert _embed_cli(trained_workdir, fasta, tmp_path / "run.npz", "--per_token", "--seed", "3") == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("embedded 4 records (") and "tokens/s" in line and "sequences/s" in line
    assert _embed_cli(trained_export, gz, tmp_path / "export.npz", "--per_token", "--seed", "3") == 0
    run, export = np.load(tmp_path / "run.npz"), np.load(tmp_path / "export.npz")
    assert set(run.files) == {"ids", "lengths", "cls", "mean", "num_tokens", "num_windows", "token_vectors",
                              "token_ids", "token_starts", "token_tokenization", "token_offsets", "model", "k",
                              "seed", "num_tokenizations", "max_tokens"}
    assert int(run["k"]) == 3  # the default: the middle of k 3..4
    assert run["ids"].dtype.kind == "U" and list(run["ids"]) == ["short", "gapped", "soft", "long"]
    assert run["lengths"].tolist() == [len(s) for s in records.values()]
    assert run["cls"].shape == run["mean"].shape == (4, 32) and run["cls"].dtype == np.float32
    assert int(run["seed"]) == 3 and int(run["max_tokens"]) == 62 and str(run["model"]).startswith("run ")
    assert run["token_offsets"][-1] == len(run["token_vectors"]) == run["num_tokens"].sum()
    for key in ("cls", "mean", "token_vectors"):
        np.testing.assert_allclose(run[key], export[key], atol=1e-5)
    np.testing.assert_array_equal(run["token_ids"], export["token_ids"])
    # An existing output is kept unless --overwrite.
    assert _embed_cli(trained_export, fasta, tmp_path / "run.npz") == 2
    assert "exists (pass --overwrite" in capsys.readouterr().err
    assert _embed_cli(trained_export, fasta, tmp_path / "run.npz", "--overwrite") == 0
    assert "token_vectors" not in np.load(tmp_path / "run.npz").files
    assert sorted(path.name for path in tmp_path.iterdir()) == ["export.npz", "in.fa", "in.fa.gz", "run.npz"]


@pytest.mark.parametrize("case, message", [
    ("missing", "FASTA file not found"),
    ("empty", "empty file"),
    ("not_fasta", "not a FASTA file"),
    ("invalid", "record 'bad': invalid letter 'X' at position 12"),
    ("no_kmer", "record 'tiny': no k-mer to embed"),
    ("bad_output", "must end in .npz"),
    ("bad_setting", "--num_tokenizations must be at least 1"),
    ("fixed_k_draws", "--num_tokenizations 2 needs --k random"),
    ("bad_k", "--k must be 'default', 'random' or an integer, got 'six'"),
    ("k_range", "--k 9 is outside the model's k range 3..4"),
])
def test_embed_errors(trained_export, tmp_path, capsys, case, message):
    fasta, output, extra = tmp_path / "in.fa", tmp_path / "out.npz", []
    if case == "empty":
        fasta.write_text("")
    elif case == "not_fasta":
        fasta.write_text("ACGT\n")
    elif case == "invalid":
        _write_fasta(fasta, {"ok": "ACGTACGTACGT", "bad": "ACGTACGTACGTXACGT"})
    elif case == "no_kmer":
        _write_fasta(fasta, {"ok": "ACGTACGTACGT", "tiny": "ACNNNNGT"})
    else:
        _write_fasta(fasta, {"ok": "ACGTACGTACGT"})
    if case == "bad_output":
        output = tmp_path / "out.txt"
    extra = {"bad_setting": ["--num_tokenizations", "0"], "fixed_k_draws": ["--num_tokenizations", "2"],
             "bad_k": ["--k", "six"], "k_range": ["--k", "9"]}.get(case, [])
    assert _embed_cli(trained_export, fasta if case != "missing" else tmp_path / "absent.fa", output, *extra) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and message in error and error.count("\n") == 1, error
    assert not output.exists()


def _load_shards(directory):
    """docs/outputs.md's loader: numpy and json only."""
    index = json.loads((directory / "index.json").read_text())
    return index, {name: np.concatenate([np.load(directory / shard["files"][name], allow_pickle=False)
                                         for shard in index["shards"]]) for name in index["arrays"]}


def _shards_settings(model, fasta, output, **values):
    from dnavec_jax.tools.settings import EmbedSettings

    return EmbedSettings(model=str(model), fasta=str(fasta), output=str(output), format="shards", **values)


def test_shards_hold_the_npz_arrays_and_load_with_numpy(trained_workdir, records, tmp_path, capsys):
    many = {f"{name}_{copy}": sequence[copy:] for copy in range(3) for name, sequence in records.items()}
    fasta = _write_fasta(tmp_path / "in.fa", many)
    assert _embed_cli(trained_workdir, fasta, tmp_path / "one.npz", "--per_token", "--k", "random") == 0
    # Shards of about 40 kB: several records each, a dozen shards.
    settings = _shards_settings(trained_workdir, fasta, tmp_path / "out", per_token=True, k="random",
                                shard_bytes=40_000)
    assert embed.run_embed(settings) == 0
    assert "shards)" in capsys.readouterr().out
    index, arrays = _load_shards(tmp_path / "out")
    npz = np.load(tmp_path / "one.npz")
    assert len(index["shards"]) > 3 and index["records"] == len(many) and index["k"] == 0
    assert sorted(path.name for path in tmp_path.iterdir()) == ["in.fa", "one.npz", "out"]  # no partial left
    for name in index["arrays"]:
        if name == "token_offsets":  # per shard, each from 0
            continue
        np.testing.assert_array_equal(arrays[name], npz[name], err_msg=name)
    starts = np.cumsum([0] + [shard["token_rows"] for shard in index["shards"]])
    offsets = np.concatenate([np.load(tmp_path / "out" / shard["files"]["token_offsets"])[:-1] + start
                              for shard, start in zip(index["shards"], starts)] + [[starts[-1]]])
    np.testing.assert_array_equal(offsets, npz["token_offsets"])
    assert index["tokens"] == npz["num_tokens"].sum() and index["hidden_size"] == 32


class _Interrupt(Exception):
    pass


def test_an_interrupted_shard_run_resumes_where_it_stopped(trained_workdir, records, tmp_path, monkeypatch,
                                                           capsys):
    many = {f"{name}_{copy}": sequence[copy:] for copy in range(4) for name, sequence in records.items()}
    fasta = _write_fasta(tmp_path / "in.fa", many)
    output = tmp_path / "out"
    settings = _shards_settings(trained_workdir, fasta, output, shard_bytes=1_000)  # ~3 records a shard
    assert embed.run_embed(_shards_settings(trained_workdir, fasta, tmp_path / "whole", shard_bytes=1_000)) == 0
    _, whole = _load_shards(tmp_path / "whole")

    flush = embed._ShardWriter.flush
    calls = []

    def failing_flush(self):  # the third shard's first file is written, then the run dies
        calls.append(1)
        if len(calls) == 3:
            original = embed.files.write_atomic
            monkeypatch.setattr(embed.files, "write_atomic", lambda *a, **k: (original(*a, **k), _raise()))
        flush(self)

    def _raise():
        raise _Interrupt

    monkeypatch.setattr(embed._ShardWriter, "flush", failing_flush)
    with pytest.raises(_Interrupt):
        embed.run_embed(settings)
    monkeypatch.undo()
    partial = tmp_path / ".out.partial"
    assert not output.exists() and partial.is_dir() and not (partial / "index.json").exists()
    assert (partial / "ids-00002.npy").exists()  # the unfinished shard's first file
    finished = json.loads((partial / "progress.json").read_text())["shards"]
    done = sum(shard["records"] for shard in finished)
    assert len(finished) == 2 and 0 < done < 16
    # Without --resume the partial run is neither reused nor overwritten.
    assert _embed_cli(trained_workdir, fasta, output, "--format", "shards") == 2
    assert "an interrupted run left" in capsys.readouterr().err
    # Other settings cannot resume it.
    assert _embed_cli(trained_workdir, fasta, output, "--format", "shards", "--resume", "--k", "4") == 2
    assert "had other k" in capsys.readouterr().err

    seen = []
    original = embed.embedded_records
    monkeypatch.setattr(embed, "embedded_records", lambda loaded, records, **kw: original(
        loaded, (seen.append(name) or (name, raw) for name, raw in records), **kw))
    assert embed.run_embed(dataclasses.replace(settings, resume=True)) == 0
    captured = capsys.readouterr()
    assert f"resuming after {done} of 16 records (2 shards)" in captured.err
    assert f"embedded {16 - done} records after the {done} of the interrupted run (" in captured.out
    assert len(seen) == 16 - done  # the two finished shards' records were not embedded again
    index, resumed = _load_shards(output)
    assert not partial.exists() and index["records"] == 16
    listed = {name for shard in index["shards"] for name in shard["files"].values()}
    assert {path.name for path in output.iterdir()} == listed | {"index.json"}  # nothing stray
    for name in whole:
        np.testing.assert_array_equal(resumed[name], whole[name], err_msg=name)
